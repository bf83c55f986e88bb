"""Schedules and missed-tick policies: pure functions of time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from workers.errors import ScheduleError
from workers.schedule import SKIP, Cron, Every, catch_up

NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FIVE_MINUTES = Every(timedelta(minutes=5))


def at(minutes: float) -> datetime:
    return NOON + timedelta(minutes=minutes)


def test_an_interval_ticks_on_whole_multiples_so_replicas_agree() -> None:
    assert FIVE_MINUTES.latest(at(7.5)) == at(5)
    assert FIVE_MINUTES.latest(at(5)) == at(5)
    assert FIVE_MINUTES.before(at(5)) == at(0)
    assert FIVE_MINUTES.after(at(5)) == at(10)


def test_a_cron_expression_ticks_in_utc() -> None:
    quarter = Cron("*/15 * * * *")
    assert quarter.latest(at(20)) == at(15)
    assert quarter.latest(at(30)) == at(30)
    assert quarter.before(at(30)) == at(15)
    assert quarter.after(at(30)) == at(45)


@pytest.mark.parametrize("bad", ["* * *", "61 * * * *", "every day"])
def test_an_invalid_cron_expression_is_refused(bad: str) -> None:
    with pytest.raises(ScheduleError, match="not a cron expression"):
        Cron(bad)


def test_an_interval_under_a_second_is_refused() -> None:
    with pytest.raises(ScheduleError):
        Every(timedelta(milliseconds=10))


def test_a_new_job_fires_only_an_on_time_tick() -> None:
    assert SKIP.due(FIVE_MINUTES, None, at(5.5)) == [at(5)]
    assert SKIP.due(FIVE_MINUTES, None, at(7.5)) == []
    assert catch_up(5).due(FIVE_MINUTES, None, at(7.5)) == []


def test_skip_drops_the_ticks_missed_during_downtime() -> None:
    assert SKIP.due(FIVE_MINUTES, at(0), at(60.5)) == [at(60)]
    assert SKIP.due(FIVE_MINUTES, at(0), at(62)) == []


def test_catch_up_fires_the_most_recent_missed_ticks_within_its_bound() -> None:
    policy = catch_up(3)

    assert policy.due(FIVE_MINUTES, at(0), at(60.5)) == [at(45), at(50), at(55), at(60)]
    assert policy.due(FIVE_MINUTES, at(50), at(62)) == [at(55), at(60)]


def test_a_tick_that_already_fired_is_not_due_again() -> None:
    assert catch_up(5).due(FIVE_MINUTES, at(60), at(64)) == []


def test_catch_up_has_a_bound() -> None:
    with pytest.raises(ScheduleError):
        catch_up(-1)
