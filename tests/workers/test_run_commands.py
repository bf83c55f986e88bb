"""``baton worker``, ``baton scheduler`` and ``baton run`` as real processes."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from baton.run_commands import SchedulerPart, ServicePart, run_parts
from contracts import (
    PLAN_CREATE,
    PLAN_REFRESH,
    PLAN_SCHEDULE_REFRESH,
    PROFILE_GET,
    PROFILE_UPDATE_INTENT,
    PlanCreate,
    PlanScheduleRefresh,
    ProfileUpdateIntent,
)
from messaging.identity import Origin, PrincipalKind
from messaging.settings import BrokerSettings
from tests.conftest import Broker
from tests.workers.conftest import Sender, StartWorker, Tap, eventually, user
from tests.workers.processes import (
    Process,
    baton_env,
    baton_output,
    free_port,
    leftovers,
    spawn_baton,
)
from workers.services.notifications import Notification, NotificationStore
from workers.settings import WorkerSettings
from workers.system import SERVICES, Part, build, build_scheduler

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]


@pytest_asyncio.fixture
async def baton(
    settings: BrokerSettings, tmp_path: Path, broker: Broker
) -> AsyncIterator[object]:
    """Start ``baton <args>`` in `tmp_path`; every child still running is killed."""
    started: list[Process] = []
    env = baton_env(settings, tmp_path / "state")
    for name in (*SERVICES, "scheduler"):
        broker.track(name)

    async def start(*args: str, **extra_env: str) -> Process:
        errors = tmp_path / f"stderr-{len(started)}.txt"
        process = await spawn_baton(args, {**env, **extra_env}, errors, cwd=tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.child.returncode is None:
            process.child.kill()
            await process.child.wait()
    await broker.cleanup()
    assert leftovers(settings.amqp_url.get_secret_value(), settings.prefix) in (
        [],
        None,
    )


async def test_a_worker_runs_one_service_and_stops_cleanly_on_sigterm(
    baton, sender: Sender, tmp_path: Path
) -> None:
    users = await baton("worker", "users")
    await users.wait_for_line("baton: running")

    await sender.command(
        PROFILE_UPDATE_INTENT, ProfileUpdateIntent(intent="climb"), user("alice")
    )
    database = tmp_path / "state" / "users.sqlite3"
    await eventually(lambda: _intent(database, "alice") == "climb", what="the write")
    code = await users.stop(signal.SIGTERM)

    assert code == 0
    assert any(line.startswith("users: consuming") for line in users.lines)
    assert users.lines[-1].strip() == "baton: stopped"


def _intent(database: Path, subject: str) -> str | None:
    if not database.exists():
        return None
    with sqlite3.connect(database) as db:
        row = db.execute(
            "SELECT intent FROM profiles WHERE subject = ?", (subject,)
        ).fetchone()
    return None if row is None else str(row[0])


async def test_run_starts_every_service_and_the_scheduler_and_stops_on_ctrl_c(
    baton,
) -> None:
    system = await baton("run", "--no-edge")
    await system.wait_for_line("baton: running")

    code = await system.stop(signal.SIGINT)

    assert code == 0
    said = "".join(system.lines)
    for part in (*SERVICES, "scheduler"):
        assert f"{part}: consuming" in said
    assert "baton: stopped" in said


async def test_the_scheduler_runs_alone(baton) -> None:
    scheduler = await baton("scheduler")
    await scheduler.wait_for_line("baton: running")

    assert await scheduler.stop() == 0
    assert any("scheduler: consuming" in line for line in scheduler.lines)


async def test_run_without_edge_settings_trusts_the_dev_key_and_serves_its_tokens(
    baton, settings: BrokerSettings, tmp_path: Path
) -> None:
    port = free_port()
    system = await baton("run", BATON_EDGE_PORT=str(port))
    await system.wait_for_line("baton: running", timeout=60)
    env = baton_env(settings, tmp_path / "state")
    token = await baton_output(
        ["token", "--sub", "alice", "--roles", "planner"], env, cwd=tmp_path
    )
    alice = {"Authorization": f"Bearer {token.strip()}"}

    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=10
    ) as http:
        await eventually(
            lambda: _ready(http), timeout=30, what="the edge to reach the broker"
        )
        stated = await http.post(
            "/v1/commands/profile.update_intent",
            json={"intent": "a marathon"},
            headers=alice,
        )
        database = tmp_path / "state" / "users.sqlite3"
        await eventually(
            lambda: _intent(database, "alice") == "a marathon", what="the write"
        )
        profile = await http.post("/v1/commands/profile.get", json={}, headers=alice)
    code = await system.stop(signal.SIGINT)

    assert stated.status_code == 202
    assert profile.status_code == 200
    assert (profile.json()["subject"], profile.json()["intent"]) == (
        "alice",
        "a marathon",
    )
    assert code == 0
    said = "".join(system.lines)
    assert f"edge: trusting the development key {Path('.baton')}" in said
    assert f"edge: http://127.0.0.1:{port}" in said
    for part in (*SERVICES, "scheduler"):
        assert f"{part}: consuming" in said
    assert (tmp_path / ".baton" / "edge-dev.pub.pem").exists()


async def _ready(http: httpx.AsyncClient) -> bool:
    return (await http.get("/health/ready")).status_code == 200


async def test_run_with_invalid_edge_settings_says_what_to_fix(baton) -> None:
    system = await baton("run", BATON_EDGE_LEEWAY="3600")

    code = await system.finish()

    assert code != 0
    complaint = system.errors.read_text()
    assert "the edge settings are invalid" in complaint
    assert "--no-edge" in complaint


async def test_a_worker_that_cannot_reach_the_broker_exits_with_the_reason(
    baton,
) -> None:
    users = await baton("worker", "users", AMQP_URL="amqp://guest:guest@127.0.0.1:1/")

    async with asyncio.timeout(60):
        code = await users.child.wait()

    assert code == 1
    assert "users: cannot reach the broker" in users.errors.read_text()


async def test_a_worker_whose_trust_settings_contradict_refuses_to_start(
    baton,
) -> None:
    users = await baton("worker", "users", BATON_REQUIRE_SIGNATURES="true")

    async with asyncio.timeout(60):
        code = await users.child.wait()

    assert code == 1
    complaint = users.errors.read_text()
    assert "users refuses to start" in complaint
    assert "trust_publishers is off" in complaint


async def test_a_process_whose_scheduler_loop_died_exits_non_zero(
    settings: BrokerSettings,
    broker: Broker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker_settings = WorkerSettings(state_dir=tmp_path / "state")
    scheduler = build_scheduler(worker_settings)
    users = ServicePart(build("users", worker_settings), settings)
    for name in ("users", scheduler.name):
        broker.track(name)
    running = asyncio.create_task(
        run_parts([users, SchedulerPart(scheduler, settings)])
    )
    await eventually(
        lambda: len(scheduler.essential_tasks) == 2 and users.worker is not None,
        what="every part to start",
    )

    ticks = scheduler.essential_tasks[-1]
    ticks.cancel()
    async with asyncio.timeout(30):
        code = await running

    assert code == 1
    assert any(
        r.levelno == logging.ERROR and "scheduler:ticks ended on its own" in r.message
        for r in caplog.records
    )
    assert users.worker is not None and not users.worker.essential_tasks


@pytest_asyncio.fixture
async def reference(run: StartWorker, tmp_path: Path) -> AsyncIterator[dict[str, Part]]:
    """users, core and notifications in this process, over their own state."""
    worker_settings = WorkerSettings(state_dir=tmp_path / "services")
    parts = {name: build(name, worker_settings) for name in SERVICES}
    try:
        for part in parts.values():
            await run(part.service)
        yield parts
    finally:
        for part in parts.values():
            part.close()


async def test_a_scheduler_process_fires_a_standing_refresh_that_core_handles(
    baton, reference: dict[str, Part], sender: Sender, broker: Broker
) -> None:
    scheduler = await baton("scheduler", BATON_SCHEDULER_POLL="0.5")
    await scheduler.wait_for_line("baton: running")
    alice = user("alice", "planner")
    await sender.command(
        PROFILE_UPDATE_INTENT, ProfileUpdateIntent(intent="a triathlon"), alice
    )
    plan_id = await sender.command(
        PLAN_CREATE, PlanCreate(goal="sprint", horizon_days=20), alice
    )
    notes = reference["notifications"].store
    assert isinstance(notes, NotificationStore)
    await eventually(lambda: notes.for_subject("alice"), what="the plan")
    fired = await Tap.on(broker, broker.topology.commands, PLAN_REFRESH.name)
    asked = await Tap.on(broker, broker.topology.commands, PROFILE_GET.name)

    await sender.command(
        PLAN_SCHEDULE_REFRESH,
        PlanScheduleRefresh(plan_id=plan_id, every_minutes=1),
        alice,
    )

    await eventually(
        lambda: _changes(notes, "alice", "refreshed"),
        timeout=30,
        what="the scheduled refresh's notification",
    )
    [tick] = await fired.principals()
    assert (tick.subject, tick.kind, tick.roles) == (
        "alice",
        PrincipalKind.USER,
        frozenset({"planner"}),
    )
    assert (tick.actors, tick.origin) == (("scheduler",), Origin.SCHEDULE)
    assert tick.internal
    [at_users] = await asked.principals()
    assert at_users.actors == ("scheduler", "core")
    [note] = await _changes(notes, "alice", "refreshed")
    assert (note.plan_id, note.actors) == (plan_id, ("scheduler", "core"))
    assert await scheduler.stop() == 0


async def _changes(
    store: NotificationStore, subject: str, change: str
) -> list[Notification]:
    return [n for n in await store.for_subject(subject) if n.change == change]
