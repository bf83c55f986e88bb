"""When a job is due: interval and cron schedules, and what happens to missed ticks.

A schedule is a pure function of time. An interval counts whole steps from the
Unix epoch, so two scheduler replicas, or one restarted, agree on every tick to
the microsecond; a tick's time is part of the id of the message it sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from croniter import croniter

from workers.errors import ScheduleError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Schedule(Protocol):
    """The ticks of a job: instants in UTC."""

    def latest(self, moment: datetime) -> datetime:
        """The last tick at or before `moment`."""
        ...

    def before(self, tick: datetime) -> datetime:
        """The tick just before `tick`."""
        ...

    def after(self, moment: datetime) -> datetime:
        """The first tick strictly after `moment`."""
        ...


@dataclass(frozen=True)
class Every:
    """A tick every `interval`, on whole multiples of it since the epoch."""

    interval: timedelta

    def __post_init__(self) -> None:
        if self.interval < timedelta(seconds=1):
            raise ScheduleError(f"interval {self.interval} is under one second")

    def latest(self, moment: datetime) -> datetime:
        return EPOCH + ((moment - EPOCH) // self.interval) * self.interval

    def before(self, tick: datetime) -> datetime:
        return self.latest(tick - timedelta(microseconds=1))

    def after(self, moment: datetime) -> datetime:
        return self.latest(moment) + self.interval


@dataclass(frozen=True)
class Cron:
    """Ticks of a five-field cron expression, read in UTC."""

    expression: str

    def __post_init__(self) -> None:
        if not croniter.is_valid(self.expression):
            raise ScheduleError(f"{self.expression!r} is not a cron expression")

    def latest(self, moment: datetime) -> datetime:
        if croniter.match(self.expression, moment) and moment.second == 0:
            return moment.replace(microsecond=0)
        return self.before(moment)

    def before(self, tick: datetime) -> datetime:
        found: datetime = croniter(self.expression, tick).get_prev(datetime)
        return found.astimezone(UTC).replace(fold=0)

    def after(self, moment: datetime) -> datetime:
        found: datetime = croniter(self.expression, moment).get_next(datetime)
        return found.astimezone(UTC).replace(fold=0)


@dataclass(frozen=True)
class Missed:
    """What happens to ticks that passed while no scheduler was running.

    A tick is on time when it is at most `grace` old; on-time ticks always fire.
    Of the older (missed) ticks, the `catch_up` most recent fire, oldest first;
    the rest are skipped. ``Missed()`` skips every missed tick.
    """

    catch_up: int = 0
    grace: timedelta = timedelta(minutes=1)

    def __post_init__(self) -> None:
        if not 0 <= self.catch_up <= 1000:
            raise ScheduleError(f"catch_up {self.catch_up} is outside 0..1000")

    def due(
        self, schedule: Schedule, last: datetime | None, now: datetime
    ) -> list[datetime]:
        """The ticks to fire now, oldest first, given the last tick that fired.

        A job that never fired starts now: only an on-time tick can fire, the
        ticks before it existed are not "missed".
        """
        tick = schedule.latest(now)
        if last is None:
            return [tick] if now - tick <= self.grace else []
        due: list[datetime] = []
        missed = 0
        while tick > last:
            if now - tick <= self.grace:
                due.append(tick)
            elif missed < self.catch_up:
                due.append(tick)
                missed += 1
            else:
                break
            tick = schedule.before(tick)
        return due[::-1]


SKIP = Missed()


def catch_up(limit: int, grace: timedelta = timedelta(minutes=1)) -> Missed:
    """Fire up to `limit` of the most recent missed ticks after downtime."""
    return Missed(catch_up=limit, grace=grace)
