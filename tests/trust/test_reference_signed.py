"""The reference system under its provisioned accounts with signatures required.

Every reference service runs as its own least-privilege account made by
``baton provision`` (the default declarations), signs what it publishes and
verifies what it consumes: the scenario still works end to end, and the user is
the same at every hop. This is the check that the generated rights are enough.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import BaseModel

from contracts import (
    PLAN_CREATE,
    PLAN_GET,
    PLAN_REFRESH,
    PLAN_SCHEDULE_REFRESH,
    PROFILE_UPDATE_INTENT,
    Contract,
    PlanCreate,
    PlanGet,
    PlanRefresh,
    PlanScheduleRefresh,
    PlanView,
    ProfileUpdateIntent,
)
from messaging.connection import Link
from messaging.consumer import Consumer
from messaging.handlers import HandlerSpec
from messaging.identity import Principal
from messaging.publisher import Publisher
from messaging.rpc import Requester
from messaging.selfcheck import verify_startup
from tests.trust.conftest import Deployment, parked
from tests.workers.conftest import eventually, user
from workers.scheduler import Scheduler
from workers.services.core import PlanStore
from workers.services.notifications import NotificationStore
from workers.settings import WorkerSettings
from workers.system import Part, build, build_scheduler

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

ALICE = user("alice", "planner")
NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Edge:
    """What the edge does on the broker: signed commands and requests."""

    publisher: Publisher
    requester: Requester
    commands: str

    async def command(
        self, contract: Contract, payload: BaseModel, who: Principal
    ) -> str:
        return await self.publisher.publish(
            self.commands,
            contract.name,
            message_type=contract.name,
            body=payload,
            principal=who,
        )


@dataclass
class Running:
    """The reference services, each as its own account, and what they store."""

    parts: dict[str, Part]
    scheduler: Scheduler
    edge: Edge
    scheduler_publisher: Publisher

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


async def run_as(
    deployment: Deployment, name: str, handlers: tuple[HandlerSpec[Any], ...]
) -> Consumer:
    """Start `name`'s consumer as its own account, after its self-check."""
    settings = deployment.settings(name)
    policy, signer = verify_startup(
        settings, name, deployment.declared, vhost=deployment.vhost
    )
    consumer = Consumer(name, handlers, settings, trust=policy, signer=signer)
    deployment.consumers.append(consumer)
    await consumer.start()
    return consumer


async def edge_of(deployment: Deployment) -> Edge:
    settings = deployment.settings("edge")
    _policy, signer = verify_startup(
        settings, "edge", deployment.declared, vhost=deployment.vhost
    )
    link = Link(settings.amqp_url, name="test:edge")
    deployment.links.append(link)
    await link.start()
    await link.wait_ready(10)
    topology = settings.topology()
    publisher = Publisher(link, signer=signer)
    requester = Requester(link, publisher, topology, owner="edge")
    return Edge(publisher, requester, topology.commands)


@pytest_asyncio.fixture
async def running(
    reference_deployment: Deployment, tmp_path: Path
) -> AsyncIterator[Running]:
    deployment = reference_deployment
    worker_settings = WorkerSettings(state_dir=tmp_path / "state")
    names = ("users", "core", "notifications")
    parts = {name: build(name, worker_settings) for name in names}
    scheduler = build_scheduler(worker_settings)
    try:
        for name, part in parts.items():
            await run_as(deployment, name, part.service.declaration().handlers)
        consumer = await run_as(
            deployment, "scheduler", scheduler.service.declaration().handlers
        )
        scheduler.bind(consumer.publisher, consumer.topology)
        edge = await edge_of(deployment)
        yield Running(parts, scheduler, edge, consumer.publisher)
        await edge.requester.close()
    finally:
        for part in parts.values():
            part.close()
        scheduler.store.close()


async def test_a_plan_created_at_the_edge_reaches_every_hop_signed(
    running: Running, reference_deployment: Deployment
) -> None:
    edge = running.edge
    await edge.command(
        PROFILE_UPDATE_INTENT, ProfileUpdateIntent(intent="run a marathon"), ALICE
    )
    plan_id = await edge.command(
        PLAN_CREATE, PlanCreate(goal="10k", horizon_days=30), ALICE
    )
    await eventually(
        lambda: running.notifications.for_subject("alice"), what="the notification"
    )

    [note] = await running.notifications.for_subject("alice")
    assert (note.plan_id, note.change) == (plan_id, "created")
    assert note.actors == ("edge", "core")
    plan = await running.plans.plan(plan_id)
    assert plan is not None and plan.intent == "run a marathon"
    read = await edge.requester.request(
        PLAN_GET.name,
        PlanGet(plan_id=plan_id),
        principal=ALICE,
        reply_model=PlanView,
        timeout=5.0,
    )
    assert read.owner == "alice"
    for service in ("users", "core", "notifications"):
        assert await parked(reference_deployment, service, 0) == []


async def test_the_scheduler_introduces_the_user_of_a_standing_refresh(
    running: Running, reference_deployment: Deployment
) -> None:
    edge = running.edge
    await edge.command(PROFILE_UPDATE_INTENT, ProfileUpdateIntent(intent="swim"), ALICE)
    plan_id = await edge.command(
        PLAN_CREATE, PlanCreate(goal="1k", horizon_days=7), ALICE
    )
    # The scheduler asks core whether alice may read the plan: it must exist.
    await eventually(
        lambda: running.notifications.for_subject("alice"), what="the plan"
    )
    await edge.command(
        PLAN_SCHEDULE_REFRESH,
        PlanScheduleRefresh(plan_id=plan_id, every_minutes=5),
        ALICE,
    )

    async def standing() -> bool:
        jobs = await running.scheduler.jobs()
        return any(job.name.startswith("refresh/alice/") for job in jobs)

    await eventually(standing, what="the standing job")
    await running.scheduler.fire_due(NOON + timedelta(seconds=3))

    async def refreshed() -> bool:
        return len(await running.notifications.for_subject("alice")) == 2

    await eventually(refreshed, what="the refresh's notification")
    second = (await running.notifications.for_subject("alice"))[1]
    assert (second.change, second.actors) == ("refreshed", ("scheduler", "core"))
    assert await parked(reference_deployment, "core", 0) == []


async def test_one_publisher_cannot_use_up_the_message_id_of_another(
    running: Running, reference_deployment: Deployment
) -> None:
    # The scheduler's message ids are predictable; core's inbox keys by
    # publisher, so a command the edge sent first under the same id does not
    # make core drop the scheduler's.
    edge = running.edge
    await edge.command(PROFILE_UPDATE_INTENT, ProfileUpdateIntent(intent="row"), ALICE)
    taken = await edge.command(
        PLAN_CREATE, PlanCreate(goal="2k", horizon_days=7), ALICE
    )
    await eventually(lambda: running.plans.plan(taken), what="the plan")

    await running.scheduler_publisher.publish(
        f"{reference_deployment.prefix}.commands",
        PLAN_REFRESH.name,
        message_type=PLAN_REFRESH.name,
        body=PlanRefresh(plan_id=taken),
        principal=running.scheduler.for_user("alice", ["planner"]),
        message_id=taken,
    )

    async def refreshed() -> bool:
        plan = await running.plans.plan(taken)
        return plan is not None and plan.version == 2

    await eventually(refreshed, what="the refresh under the same message id")
    for kind in ("quarantine", "dead"):
        assert await parked(reference_deployment, "core", 0, kind=kind) == []
