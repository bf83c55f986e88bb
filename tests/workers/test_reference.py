"""The reference system end to end over the real broker.

edge (the test's sender) -> core -> request to users -> event -> notifications,
and scheduler -> core for a user's standing refresh: the user stays the same at
every hop and the notification records the chain of services that acted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from contracts import (
    PLAN_CANCEL_REFRESH,
    PLAN_CHANGED,
    PLAN_CREATE,
    PLAN_GET,
    PLAN_PRUNE,
    PLAN_SCHEDULE_REFRESH,
    PROFILE_GET,
    PROFILE_UPDATE_INTENT,
    PlanCancelRefresh,
    PlanChanged,
    PlanCreate,
    PlanGet,
    PlanPrune,
    PlanScheduleRefresh,
    PlanView,
    ProfileGet,
    ProfileUpdateIntent,
    ProfileView,
)
from messaging import headers as h
from messaging.errors import RemoteError
from messaging.identity import Origin, Principal
from messaging.settings import BrokerSettings
from tests.conftest import Broker
from tests.workers.conftest import (
    Sender,
    StartWorker,
    Tap,
    eventually,
    settled,
    user,
)
from workers.scheduler import Scheduler
from workers.services.core import PlanStore
from workers.services.notifications import NotificationStore
from workers.settings import WorkerSettings
from workers.system import Part, build, build_scheduler
from workers.worker import Worker

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class System:
    """The three reference services, running, and what they store."""

    def __init__(self, parts: dict[str, Part], workers: dict[str, Worker]) -> None:
        self.parts = parts
        self.workers = workers

    @property
    def plans(self) -> PlanStore:
        store = self.parts["core"].store
        assert isinstance(store, PlanStore)
        return store

    @property
    def notifications(self) -> NotificationStore:
        store = self.parts["notifications"].store
        assert isinstance(store, NotificationStore)
        return store


@pytest.fixture
def worker_settings(tmp_path: Path) -> WorkerSettings:
    return WorkerSettings(state_dir=tmp_path / "state")


@pytest_asyncio.fixture
async def system(
    run: StartWorker, worker_settings: WorkerSettings
) -> AsyncIterator[System]:
    parts = {
        name: build(name, worker_settings)
        for name in ("users", "core", "notifications")
    }
    try:
        workers = {name: await run(part.service) for name, part in parts.items()}
        yield System(parts, workers)
    finally:
        for part in parts.values():
            part.close()


@pytest_asyncio.fixture
async def scheduler(
    run: StartWorker, worker_settings: WorkerSettings
) -> AsyncIterator[Scheduler]:
    """The scheduler's service, running; the test fires its ticks itself."""
    made = build_scheduler(worker_settings)
    try:
        worker = await run(made.service)
        made.bind(worker.consumer.publisher, worker.consumer.topology)
        yield made
    finally:
        made.store.close()


ALICE = user("alice", "planner")


async def _create_plan(sender: Sender, system: System, who: Principal = ALICE) -> str:
    await sender.command(
        PROFILE_UPDATE_INTENT, ProfileUpdateIntent(intent="run a marathon"), who
    )
    plan_id = await sender.command(
        PLAN_CREATE, PlanCreate(goal="10k", horizon_days=30), who
    )
    await eventually(
        lambda: system.notifications.for_subject(who.subject), what="the notification"
    )
    return plan_id


async def test_a_plan_created_at_the_edge_keeps_the_user_at_every_hop(
    system: System, sender: Sender, broker: Broker
) -> None:
    asked = await Tap.on(broker, broker.topology.commands, PROFILE_GET.name)

    plan_id = await _create_plan(sender, system)

    [at_users] = await asked.principals()
    assert (at_users.subject, at_users.roles) == ("alice", frozenset({"planner"}))
    assert at_users.actors == ("edge", "core")
    assert at_users.origin is Origin.REQUEST and at_users.internal

    plan = await system.plans.plan(plan_id)
    assert plan is not None
    assert (plan.owner, plan.intent, plan.version) == ("alice", "run a marathon", 1)
    [note] = await system.notifications.for_subject("alice")
    assert (note.plan_id, note.change, note.version) == (plan_id, "created", 1)
    assert note.actors == ("edge", "core")
    read = await sender.request(PLAN_GET, PlanGet(plan_id=plan_id), ALICE, PlanView)
    assert read.owner == "alice" and read.goal == "10k"


async def test_a_standing_refresh_runs_for_the_user_through_core_and_users(
    system: System, sender: Sender, scheduler: Scheduler, broker: Broker
) -> None:
    plan_id = await _standing_refresh(sender, system, scheduler)
    assert len(await _standing(scheduler)) == 1

    asked = await Tap.on(broker, broker.topology.commands, PROFILE_GET.name)

    fired = await scheduler.fire_due(NOON + timedelta(seconds=3))

    assert [f.job for f in fired] == [f"refresh/alice/{plan_id}"]
    await eventually(
        lambda: _notified(system, "alice", 2),
        what="the refresh's notification",
    )
    [at_users] = await asked.principals()
    assert at_users.actors == ("scheduler", "core")
    assert (at_users.subject, at_users.origin) == ("alice", Origin.REQUEST)
    refreshed = (await system.notifications.for_subject("alice"))[1]
    assert (refreshed.change, refreshed.version) == ("refreshed", 2)
    assert refreshed.actors == ("scheduler", "core")
    plan = await system.plans.plan(plan_id)
    assert plan is not None and plan.intent == "run a marathon"


async def _standing_refresh(
    sender: Sender, system: System, scheduler: Scheduler
) -> str:
    """Alice's new plan, with a standing refresh the scheduler holds."""
    plan_id = await _create_plan(sender, system)
    await sender.command(
        PLAN_SCHEDULE_REFRESH,
        PlanScheduleRefresh(plan_id=plan_id, every_minutes=5),
        ALICE,
    )
    await eventually(lambda: _standing(scheduler), what="the standing job")
    return plan_id


async def _standing(scheduler: Scheduler) -> list[str]:
    return [
        job.name for job in await scheduler.jobs() if job.name != "prune-stale-plans"
    ]


async def _notified(system: System, subject: str, expected: int) -> bool:
    return len(await system.notifications.for_subject(subject)) == expected


async def test_a_request_for_another_users_profile_is_refused_and_quarantined(
    system: System, sender: Sender, broker: Broker
) -> None:
    with pytest.raises(RemoteError) as refused:
        await sender.request(PROFILE_GET, ProfileGet(subject="bob"), ALICE, ProfileView)

    assert refused.value.error_type == "Forbidden"
    [parked] = await broker.drain(broker.topology.quarantine_queue("users"), expect=1)
    assert parked.headers[h.FAILURE_CODE] == "Forbidden"
    assert "'bob'" in str(parked.headers[h.FAILURE_REASON])
    own = await sender.request(
        PROFILE_GET, ProfileGet(subject="alice"), ALICE, ProfileView
    )
    assert own.subject == "alice"


async def test_reading_another_users_plan_is_refused(
    system: System, sender: Sender, broker: Broker
) -> None:
    plan_id = await _create_plan(sender, system)
    bob = user("bob", "planner")

    with pytest.raises(RemoteError) as refused:
        await sender.request(PLAN_GET, PlanGet(plan_id=plan_id), bob, PlanView)

    assert refused.value.error_type == "Forbidden"
    [parked] = await broker.drain(broker.topology.quarantine_queue("core"), expect=1)
    assert parked.headers[h.FAILURE_CODE] == "Forbidden"


async def test_prune_from_a_user_is_quarantined_even_with_the_maintenance_role(
    system: System, sender: Sender, broker: Broker
) -> None:
    admin = user("alice", "planner", "maintenance")

    await sender.command(PLAN_PRUNE, PlanPrune(older_than_days=1), admin)

    [parked] = await broker.drain(broker.topology.quarantine_queue("core"), expect=1)
    assert parked.headers[h.FAILURE_CODE] == "Forbidden"


async def test_the_scheduled_prune_runs_as_the_scheduler_and_removes_stale_plans(
    system: System, sender: Sender, scheduler: Scheduler
) -> None:
    stale_id = await _create_plan(sender, system)
    fresh_id = await _create_plan(sender, system, user("bob", "planner"))
    long_ago = (datetime.now(UTC) - timedelta(days=400)).isoformat()
    async with system.plans.write() as db:
        db.execute(
            "UPDATE plans SET updated_at = ? WHERE plan_id = ?", (long_ago, stale_id)
        )

    fired = await scheduler.fire_due(datetime(2026, 3, 1, 3, 17, 30, tzinfo=UTC))

    assert [f.job for f in fired] == ["prune-stale-plans"]
    await eventually(
        lambda: _missing(system.plans, stale_id), what="the stale plan to go"
    )
    assert await system.plans.plan(fresh_id) is not None


async def _missing(store: PlanStore, plan_id: str) -> bool:
    return await store.plan(plan_id) is None


async def test_an_event_announcing_another_users_plan_is_quarantined(
    system: System, sender: Sender, broker: Broker
) -> None:
    forged = PlanChanged(plan_id="p1", owner="alice", version=9, change="refreshed")

    await sender.command(PLAN_CHANGED, forged, user("mallory"))

    [parked] = await broker.drain(
        broker.topology.quarantine_queue("notifications"), expect=1
    )
    assert parked.headers[h.FAILURE_CODE] == "Forbidden"
    assert await system.notifications.for_subject("alice") == []


async def test_a_duplicated_create_makes_one_plan_and_one_notification(
    system: System, sender: Sender, broker: Broker
) -> None:
    await sender.command(
        PROFILE_UPDATE_INTENT, ProfileUpdateIntent(intent="swim"), ALICE
    )
    create = PlanCreate(goal="1k", horizon_days=7)
    for _ in range(3):
        await sender.command(PLAN_CREATE, create, ALICE, message_id="create-once")

    await eventually(
        lambda: system.plans.handled("core", "create-once"), what="the create"
    )
    await settled(system.workers["core"], broker)
    await settled(system.workers["notifications"], broker)

    # The copies were skipped as duplicates and acked, not failed on the plan's
    # primary key and dead-lettered.
    assert await broker.depth(broker.topology.dead_queue("core")) == 0
    assert await broker.depth(broker.topology.quarantine_queue("core")) == 0
    rows = await system.plans.query("SELECT plan_id FROM plans")
    assert [row["plan_id"] for row in rows] == ["create-once"]
    notes = await system.notifications.for_subject("alice")
    assert [(n.plan_id, n.version) for n in notes] == [("create-once", 1)]


async def test_a_stopped_service_handles_everything_published_meanwhile_after_restart(
    system: System,
    sender: Sender,
    settings: BrokerSettings,
    worker_settings: WorkerSettings,
) -> None:
    await system.workers["notifications"].stop()
    system.parts["notifications"].close()

    await sender.command(
        PROFILE_UPDATE_INTENT, ProfileUpdateIntent(intent="row"), ALICE
    )
    created = [
        await sender.command(
            PLAN_CREATE, PlanCreate(goal=f"g{n}", horizon_days=3), ALICE
        )
        for n in range(3)
    ]
    await eventually(
        lambda: _all_handled(system.plans, created), what="core to create every plan"
    )

    restarted = build("notifications", worker_settings)
    system.parts["notifications"] = restarted
    worker = Worker(restarted.service, settings)
    await worker.start()
    try:
        await eventually(
            lambda: _notified(system, "alice", 3),
            what="every notification after the restart",
        )
        notes = await system.notifications.for_subject("alice")
        assert sorted(n.plan_id for n in notes) == sorted(created)
    finally:
        await worker.stop()


async def _all_handled(store: PlanStore, message_ids: list[str]) -> bool:
    return all([await store.handled("core", m) for m in message_ids])


async def test_a_standing_refresh_of_another_users_plan_is_refused(
    system: System, sender: Sender, scheduler: Scheduler, broker: Broker
) -> None:
    plan_id = await _create_plan(sender, system, user("bob", "planner"))

    await sender.command(
        PLAN_SCHEDULE_REFRESH,
        PlanScheduleRefresh(plan_id=plan_id, every_minutes=5),
        ALICE,
    )

    [parked] = await broker.drain(
        broker.topology.quarantine_queue("scheduler"), expect=1
    )
    assert parked.headers[h.FAILURE_CODE] == "Forbidden"
    reason = str(parked.headers[h.FAILURE_REASON])
    assert reason.startswith("Forbidden: 'alice' does not own plan")
    [asked] = await broker.drain(broker.topology.quarantine_queue("core"), expect=1)
    assert asked.type == "plan.get"
    assert await broker.depth(broker.topology.quarantine_queue("core")) == 0
    assert await _standing(scheduler) == []


async def test_a_standing_refresh_of_a_missing_plan_is_dead_lettered_at_once(
    system: System, sender: Sender, scheduler: Scheduler, broker: Broker
) -> None:
    await sender.command(
        PLAN_SCHEDULE_REFRESH,
        PlanScheduleRefresh(plan_id="no-such-plan", every_minutes=5),
        ALICE,
    )

    [dead] = await broker.drain(broker.topology.dead_queue("scheduler"), expect=1)
    assert dead.headers[h.FAILURE_CODE] == "RemoteNotFound"
    assert h.ATTEMPT not in dead.headers
    assert "no plan 'no-such-plan'" in str(dead.headers[h.FAILURE_REASON])
    assert await _standing(scheduler) == []


async def test_a_user_cancels_their_standing_refresh_and_it_stops_firing(
    system: System, sender: Sender, scheduler: Scheduler
) -> None:
    plan_id = await _standing_refresh(sender, system, scheduler)

    await sender.command(
        PLAN_CANCEL_REFRESH, PlanCancelRefresh(plan_id=plan_id), user("alice")
    )

    await eventually(lambda: _no_standing(scheduler), what="the cancellation")
    fired = await scheduler.fire_due(NOON + timedelta(seconds=3))
    assert f"refresh/alice/{plan_id}" not in [f.job for f in fired]


async def _no_standing(scheduler: Scheduler) -> bool:
    return await _standing(scheduler) == []


async def test_another_user_cannot_cancel_a_standing_refresh(
    system: System, sender: Sender, scheduler: Scheduler, broker: Broker
) -> None:
    plan_id = await _standing_refresh(sender, system, scheduler)

    await sender.command(
        PLAN_CANCEL_REFRESH, PlanCancelRefresh(plan_id=plan_id), user("mallory")
    )

    [parked] = await broker.drain(
        broker.topology.quarantine_queue("scheduler"), expect=1
    )
    assert parked.headers[h.FAILURE_CODE] == "Forbidden"
    assert "'mallory' may not cancel" in str(parked.headers[h.FAILURE_REASON])
    assert await _standing(scheduler) == [f"refresh/alice/{plan_id}"]


async def test_cancelling_a_refresh_nobody_set_up_is_dead_lettered_as_not_found(
    system: System, sender: Sender, scheduler: Scheduler, broker: Broker
) -> None:
    await sender.command(
        PLAN_CANCEL_REFRESH, PlanCancelRefresh(plan_id="never-scheduled"), ALICE
    )

    [dead] = await broker.drain(broker.topology.dead_queue("scheduler"), expect=1)
    assert dead.headers[h.FAILURE_CODE] == "NotFound"
    assert "no standing refresh of plan 'never-scheduled'" in str(
        dead.headers[h.FAILURE_REASON]
    )


async def test_scheduler_replicas_sharing_a_state_dir_refresh_once_per_tick(
    system: System,
    sender: Sender,
    scheduler: Scheduler,
    run: StartWorker,
    broker: Broker,
    worker_settings: WorkerSettings,
) -> None:
    replica = build_scheduler(worker_settings)
    try:
        worker = await run(replica.service)
        replica.bind(worker.consumer.publisher, worker.consumer.topology)
        plan_id = await _standing_refresh(sender, system, scheduler)

        # Whichever replica took the registration, both read the same database.
        assert await _standing(replica) == [f"refresh/alice/{plan_id}"]
        tick = NOON + timedelta(seconds=3)
        fired = await asyncio.gather(scheduler.fire_due(tick), replica.fire_due(tick))
        await eventually(lambda: _notified(system, "alice", 2), what="the refresh")
        await settled(system.workers["core"], broker)
    finally:
        replica.store.close()

    job = f"refresh/alice/{plan_id}"
    assert [[f.job for f in round_] for round_ in fired] == [[job], [job]]
    assert fired[0][0].message_id == fired[1][0].message_id
    plan = await system.plans.plan(plan_id)
    assert plan is not None and plan.version == 2
