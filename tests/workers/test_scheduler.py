"""The scheduler against the real broker: declared principals, each tick once."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from contracts import Contract
from contracts.catalogue import Strict
from messaging.identity import Origin, Principal, PrincipalKind
from messaging.settings import BrokerSettings
from tests.conftest import Broker
from tests.workers.conftest import Sender, StartWorker, eventually
from workers.context import ServiceContext
from workers.errors import ScheduleError
from workers.inbox import SqliteStore
from workers.schedule import Every, catch_up
from workers.scheduler import Job, Scheduler, SchedulerStore
from workers.service import Service
from workers.settings import WorkerSettings
from workers.system import build_scheduler

NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MINUTE = Every(timedelta(minutes=1))


class Sweep(Strict):
    scope: str


SWEEP = Contract("t.sweep", Sweep, roles=frozenset({"maintenance"}))


class ManualClock:
    """Time that moves only when the scheduler sleeps: ticks without waiting."""

    def __init__(self, start: datetime) -> None:
        self.time = start
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += timedelta(seconds=seconds)
        await asyncio.sleep(0.01)


class Target:
    """A service that sweeps once per message id, recording who asked."""

    def __init__(self, store: SqliteStore) -> None:
        self.service = Service("janitor")
        self.deliveries: list[tuple[str, Principal]] = []

        @self.service.handles(SWEEP, kinds=[PrincipalKind.SERVICE, PrincipalKind.USER])
        async def sweep(ctx: ServiceContext, cmd: Sweep) -> None:
            self.deliveries.append((ctx.message_id, ctx.principal))
            async with ctx.once(store) as tx:
                tx.execute("INSERT INTO sweeps VALUES (?)", (ctx.message_id,))


@pytest.fixture
def sweeps(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "janitor.sqlite3", "CREATE TABLE sweeps (id TEXT);")
    yield store
    store.close()


@pytest_asyncio.fixture
async def target(run: StartWorker, sweeps: SqliteStore) -> Target:
    janitor = Target(sweeps)
    await run(janitor.service)
    return janitor


@pytest_asyncio.fixture
async def schedulers(
    settings: BrokerSettings, broker: Broker, tmp_path: Path
) -> AsyncIterator[list[Scheduler]]:
    """Schedulers a test builds; each is stopped and its store closed."""
    made: list[Scheduler] = []
    yield made
    for scheduler in made:
        await scheduler.stop()
        scheduler.store.close()


def _scheduler(
    made: list[Scheduler], path: Path, *, clock: ManualClock | None = None
) -> Scheduler:
    scheduler = Scheduler(SchedulerStore(path), clock=clock, poll=30)
    scheduler.add(
        Job(
            "sweep-tmp",
            MINUTE,
            scheduler.as_itself(["maintenance"]),
            SWEEP,
            Sweep(scope="tmp"),
            missed=catch_up(2),
        )
    )
    made.append(scheduler)
    return scheduler


async def _sweeps(store: SqliteStore) -> int:
    rows = await store.query("SELECT count(*) AS n FROM sweeps")
    return int(rows[0]["n"])


@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_job_runs_as_the_scheduler_with_its_declared_roles(
    target: Target,
    schedulers: list[Scheduler],
    sender: Sender,
    tmp_path: Path,
    settings: BrokerSettings,
) -> None:
    scheduler = _scheduler(schedulers, tmp_path / "a.sqlite3")
    scheduler.bind(sender.publisher, settings.topology())

    fired = await scheduler.fire_due(NOON + timedelta(seconds=5))

    assert [(f.job, f.tick) for f in fired] == [("sweep-tmp", NOON)]
    await eventually(lambda: target.deliveries, what="the sweep")
    message_id, principal = target.deliveries[0]
    assert message_id == fired[0].message_id
    assert principal.kind is PrincipalKind.SERVICE
    assert (principal.subject, principal.actors) == ("scheduler", ("scheduler",))
    assert principal.roles == frozenset({"maintenance"})
    assert principal.origin is Origin.SCHEDULE and principal.internal


@pytest.mark.asyncio
@pytest.mark.broker
async def test_two_replicas_firing_the_same_tick_have_one_side_effect(
    target: Target,
    schedulers: list[Scheduler],
    sender: Sender,
    sweeps: SqliteStore,
    tmp_path: Path,
    settings: BrokerSettings,
) -> None:
    first = _scheduler(schedulers, tmp_path / "replica-1.sqlite3")
    second = _scheduler(schedulers, tmp_path / "replica-2.sqlite3")
    for replica in (first, second):
        replica.bind(sender.publisher, settings.topology())

    fired = await asyncio.gather(
        first.fire_due(NOON + timedelta(seconds=1)),
        second.fire_due(NOON + timedelta(seconds=2)),
    )

    assert fired[0][0].message_id == fired[1][0].message_id
    await eventually(lambda: len(target.deliveries) == 2, what="both copies")
    assert await _sweeps(sweeps) == 1


@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_restarted_scheduler_neither_repeats_a_tick_nor_exceeds_catch_up(
    target: Target,
    schedulers: list[Scheduler],
    sender: Sender,
    sweeps: SqliteStore,
    tmp_path: Path,
    settings: BrokerSettings,
) -> None:
    state = tmp_path / "scheduler.sqlite3"
    before = _scheduler(schedulers, state)
    before.bind(sender.publisher, settings.topology())
    assert len(await before.fire_due(NOON + timedelta(seconds=10))) == 1
    before.store.close()
    schedulers.remove(before)

    after = _scheduler(schedulers, state)
    after.bind(sender.publisher, settings.topology())
    again = await after.fire_due(NOON + timedelta(seconds=20))
    back = await after.fire_due(NOON + timedelta(minutes=10, seconds=3))

    assert again == []
    assert [f.tick for f in back] == [
        NOON + timedelta(minutes=8),
        NOON + timedelta(minutes=9),
        NOON + timedelta(minutes=10),
    ]
    await eventually(lambda: len(target.deliveries) == 4, what="four sweeps")
    assert await _sweeps(sweeps) == 4


@pytest.mark.asyncio
@pytest.mark.broker
async def test_the_running_loop_fires_ticks_by_the_injected_clock(
    target: Target,
    schedulers: list[Scheduler],
    broker: Broker,
    tmp_path: Path,
    settings: BrokerSettings,
) -> None:
    clock = ManualClock(NOON + timedelta(seconds=30))
    scheduler = _scheduler(schedulers, tmp_path / "loop.sqlite3", clock=clock)
    broker.track(scheduler.name)

    async def last_ticks() -> list[datetime]:
        rows = await scheduler.store.query("SELECT last_tick FROM fired")
        return [datetime.fromisoformat(row["last_tick"]) for row in rows]

    async def third_tick_recorded() -> bool:
        # A tick is recorded once its publish is confirmed, which may be after
        # the target already has the message.
        ticks = await last_ticks()
        return bool(ticks) and ticks[0] >= NOON + timedelta(minutes=2)

    await scheduler.start(settings)
    await eventually(lambda: len(target.deliveries) >= 3, what="three ticks")
    await eventually(third_tick_recorded, what="the third tick recorded")
    await scheduler.stop()

    assert len(await last_ticks()) == 1
    assert len({message_id for message_id, _ in target.deliveries}) == len(
        target.deliveries
    )
    assert clock.sleeps[0] == 30.0


def test_a_job_cannot_run_as_another_service_or_without_the_schedule_origin(
    tmp_path: Path,
) -> None:
    scheduler = Scheduler(SchedulerStore(tmp_path / "s.sqlite3"))
    try:
        imposter = Principal.service("core", ["maintenance"], origin=Origin.SCHEDULE)
        with pytest.raises(ScheduleError, match="acts only as itself"):
            scheduler.add(Job("x", MINUTE, imposter, SWEEP, Sweep(scope="a")))

        from_http = Principal.user("alice", entered_by="scheduler")
        with pytest.raises(ScheduleError, match="origin schedule"):
            scheduler.add(Job("y", MINUTE, from_http, SWEEP, Sweep(scope="a")))

        elsewhere = Principal.user("alice", entered_by="edge", origin=Origin.SCHEDULE)
        with pytest.raises(ScheduleError, match="must enter through"):
            scheduler.add(Job("z", MINUTE, elsewhere, SWEEP, Sweep(scope="a")))
    finally:
        scheduler.store.close()


def test_tick_ids_differ_by_tick_and_by_user_and_repeat_for_the_same_tick(
    tmp_path: Path,
) -> None:
    scheduler = Scheduler(SchedulerStore(tmp_path / "s.sqlite3"))
    try:
        alice = scheduler.for_user("alice", ["planner"])
        bob = scheduler.for_user("bob", ["planner"])
        job_a = Job("j", MINUTE, alice, SWEEP, Sweep(scope="a"))
        job_b = Job("j", MINUTE, bob, SWEEP, Sweep(scope="a"))
        later = NOON + timedelta(minutes=1)

        assert job_a.message_id(NOON) == job_a.message_id(NOON)
        assert job_a.message_id(NOON) != job_a.message_id(later)
        assert job_a.message_id(NOON) != job_b.message_id(NOON)
    finally:
        scheduler.store.close()


class Flaky:
    """A job source that fails like a locked database `failures` times, then works."""

    def __init__(self, jobs: list[Job], failures: int) -> None:
        self.jobs = jobs
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> list[Job]:
        self.calls += 1
        if self.calls <= self.failures:
            raise sqlite3.OperationalError("database is locked")
        return self.jobs


def _for_alice(scheduler: Scheduler, name: str = "sweep-alice") -> Job:
    return Job(
        name,
        MINUTE,
        scheduler.for_user("alice", ["maintenance"]),
        SWEEP,
        Sweep(scope="alice"),
    )


@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_failing_job_source_is_logged_and_the_loop_keeps_firing(
    target: Target,
    schedulers: list[Scheduler],
    broker: Broker,
    tmp_path: Path,
    settings: BrokerSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(NOON + timedelta(seconds=30))
    scheduler = _scheduler(schedulers, tmp_path / "loop.sqlite3", clock=clock)
    source = Flaky([_for_alice(scheduler)], failures=3)
    scheduler.add_source(source)
    broker.track(scheduler.name)

    await scheduler.start(settings)
    await eventually(
        lambda: any(p.subject == "alice" for _, p in target.deliveries),
        what="the source's job, once the source works again",
    )

    assert not any(task.done() for task in scheduler.essential_tasks)
    assert any(p.subject == "scheduler" for _, p in target.deliveries)
    failed = [r for r in caplog.records if "a job source failed" in r.getMessage()]
    assert failed and all(r.levelno == logging.ERROR and r.exc_info for r in failed)


@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_bad_job_from_a_source_is_skipped_and_the_others_fire(
    target: Target,
    schedulers: list[Scheduler],
    sender: Sender,
    tmp_path: Path,
    settings: BrokerSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    scheduler = _scheduler(schedulers, tmp_path / "s.sqlite3")
    imposter = Principal.service("core", ["maintenance"], origin=Origin.SCHEDULE)
    bad = Job("as-core", MINUTE, imposter, SWEEP, Sweep(scope="all"))
    good = _for_alice(scheduler)

    async def source() -> list[Job]:
        return [bad, good]

    scheduler.add_source(source)
    scheduler.bind(sender.publisher, settings.topology())

    fired = await scheduler.fire_due(NOON + timedelta(seconds=5))

    assert sorted(f.job for f in fired) == ["sweep-alice", "sweep-tmp"]
    await eventually(lambda: len(target.deliveries) == 2, what="both sweeps")
    assert "core" not in {p.subject for _, p in target.deliveries}
    [skipped] = [r for r in caplog.records if "skipped job 'as-core'" in r.message]
    assert skipped.levelno == logging.ERROR
    assert "acts only as itself" in skipped.message


@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_job_whose_send_fails_does_not_hold_back_the_others(
    target: Target,
    schedulers: list[Scheduler],
    sender: Sender,
    tmp_path: Path,
    settings: BrokerSettings,
) -> None:
    scheduler = _scheduler(schedulers, tmp_path / "s.sqlite3")
    undeclared = Contract("t.undeclared", Sweep)
    broken = Job(
        "broken",
        MINUTE,
        scheduler.as_itself(["maintenance"]),
        undeclared,
        Sweep(scope="x"),
    )

    async def source() -> list[Job]:
        return [broken, _for_alice(scheduler)]

    scheduler.add_source(source)
    scheduler.bind(sender.publisher, settings.topology())

    fired = await scheduler.fire_due(NOON + timedelta(seconds=5))

    assert sorted(f.job for f in fired) == ["sweep-alice", "sweep-tmp"]
    assert await scheduler.store.last_fired("broken") is None


class BrokenFor:
    """A schedule that cannot say its next tick for the first `failures` asks."""

    def __init__(self, inner: Every, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def latest(self, moment: datetime) -> datetime:
        return self.inner.latest(moment)

    def before(self, tick: datetime) -> datetime:
        return self.inner.before(tick)

    def after(self, moment: datetime) -> datetime:
        if self.failures > 0:
            self.failures -= 1
            raise ArithmeticError("no next tick")
        return self.inner.after(moment)


@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_failed_round_backs_off_and_the_loop_carries_on(
    target: Target,
    schedulers: list[Scheduler],
    broker: Broker,
    tmp_path: Path,
    settings: BrokerSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(NOON + timedelta(seconds=30))
    scheduler = Scheduler(SchedulerStore(tmp_path / "s.sqlite3"), clock=clock, poll=5)
    schedulers.append(scheduler)
    scheduler.add(
        Job(
            "sweep-tmp",
            BrokenFor(MINUTE, failures=4),
            scheduler.as_itself(["maintenance"]),
            SWEEP,
            Sweep(scope="tmp"),
        )
    )
    broker.track(scheduler.name)

    await scheduler.start(settings)
    await eventually(lambda: len(clock.sleeps) >= 6, what="the loop to go on")

    assert clock.sleeps[:4] == [1.0, 2.0, 4.0, 5.0]
    assert not any(task.done() for task in scheduler.essential_tasks)
    failed = [r for r in caplog.records if "round failed" in r.getMessage()]
    assert len(failed) == 4 and all(r.exc_info for r in failed)
    await eventually(lambda: target.deliveries, what="the first sweep")


@pytest.mark.asyncio
async def test_a_standing_refresh_row_that_makes_no_job_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = build_scheduler(WorkerSettings(state_dir=tmp_path))
    try:
        async with scheduler.store.write() as db:
            db.executemany(
                "INSERT INTO standing_refresh VALUES (?, ?, ?, NULL, ?, '')",
                [
                    ("alice", "p-zero", '["planner"]', 0),
                    ("bob", "p-roles", "not json", 5),
                    ("carol", "p-good", '["planner"]', 5),
                ],
            )

        names = [job.name for job in await scheduler.jobs()]
    finally:
        scheduler.store.close()

    assert sorted(names) == ["prune-stale-plans", "refresh/carol/p-good"]
    skipped = [r for r in caplog.records if "skipped the standing refresh" in r.message]
    assert {r.levelno for r in skipped} == {logging.ERROR} and len(skipped) == 2
