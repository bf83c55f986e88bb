"""The README's "First minute", step by step, as a new user would run it.

Real processes: ``baton run``, which ``./scripts/run`` starts (the reference
services, the scheduler and the edge trusting the development key), and
``baton token`` to mint alice's token with that key. The calls are the README's:
state an intent (202) and read it back (a request, 200), create a plan (202), read the
command's status, then read the plan by the command id: 404 until core has
handled the command, then alice's plan with her intent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from messaging.settings import BrokerSettings
from tests.conftest import Broker
from tests.edge.conftest import wait_ready
from tests.workers.conftest import eventually
from tests.workers.processes import Process, spawn_baton
from workers.system import SERVICES

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

JSON = {"Content-Type": "application/json"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _environment(settings: BrokerSettings, tmp_path: Path, port: int) -> dict[str, str]:
    """A shell as the README sets it up: AMQP_URL, and no edge key configured."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return {
        **clean,
        "AMQP_URL": settings.amqp_url.get_secret_value(),
        "BATON_PREFIX": settings.prefix,
        # Names the test's clean-up knows (tests/conftest.py Broker.cleanup).
        "BATON_RETRY_DELAYS": "[0.1, 0.2]",
        # One delivery at a time, in order: once a later command is handled,
        # every earlier copy has been settled, so "nothing was dead-lettered"
        # can be checked exactly.
        "BATON_PREFETCH": "1",
        "BATON_STATE_DIR": str(tmp_path / "state"),
        "BATON_EDGE_DEV_KEY_DIR": str(tmp_path / "dev-key"),
        "BATON_EDGE_PORT": str(port),
    }


async def _baton_token(env: dict[str, str], subject: str, roles: str) -> str:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from baton.cli import main; sys.exit(main())",
        "token",
        "--sub",
        subject,
        "--roles",
        roles,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await child.communicate()
    assert child.returncode == 0, err.decode()
    return out.decode().strip()


async def _stopped(process: Process) -> int:
    if process.child.returncode is not None:
        return process.child.returncode
    try:
        return await process.stop(signal.SIGINT)
    finally:
        if process.child.returncode is None:
            process.child.kill()
            await process.child.wait()


@pytest_asyncio.fixture
async def first_minute(
    settings: BrokerSettings, broker: Broker, tmp_path: Path
) -> AsyncIterator[tuple[str, dict[str, str], Process]]:
    """The system the README starts; yields the edge's URL, the env and the edge."""
    for name in (*SERVICES, "scheduler"):
        broker.track(name)
    port = _free_port()
    env = _environment(settings, tmp_path, port)
    system = await spawn_baton(["run"], env, tmp_path / "run.err")
    try:
        await system.wait_for_line("baton: running")
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            await wait_ready(http, timeout=30)
        yield base, env, system
    finally:
        code = await _stopped(system)
    assert code == 0, (tmp_path / "run.err").read_text()


async def test_the_first_minute_works_as_the_readme_shows_it(
    first_minute: tuple[str, dict[str, str], Process],
) -> None:
    base, env, edge = first_minute
    alice = {"Authorization": f"Bearer {await _baton_token(env, 'alice', 'planner')}"}
    bob = {"Authorization": f"Bearer {await _baton_token(env, 'bob', 'planner')}"}

    async with httpx.AsyncClient(base_url=base, timeout=15) as http:
        intent = await http.post(
            "/v1/commands/profile.update_intent",
            json={"intent": "finish a marathon"},
            headers={**alice, **JSON},
        )
        profile = await _until(http, "profile.get", {}, alice, _stated)
        created = await http.post(
            "/v1/commands/plan.create",
            json={"goal": "run a marathon", "horizon_days": 90},
            headers={**alice, **JSON},
        )
        command_id = created.json()["command_id"]
        status = await http.get(f"/v1/commands/{command_id}", headers=alice)
        not_bobs = await http.get(f"/v1/commands/{command_id}", headers=bob)
        by_id = {"plan_id": command_id}
        plan = await _until(http, "plan.get", by_id, alice, _not_missing)
        bob_reads = await http.post("/v1/commands/plan.get", json=by_id, headers=bob)

    assert intent.status_code == 202
    assert profile.json()["subject"] == "alice"
    assert created.status_code == 202
    assert created.headers["location"] == f"/v1/commands/{command_id}"
    assert status.status_code == 200 and status.json()["status"] == "accepted"
    assert not_bobs.status_code == 404
    assert plan.status_code == 200
    assert plan.json()["plan_id"] == command_id
    assert plan.json()["owner"] == "alice"
    assert plan.json()["goal"] == "run a marathon"
    assert plan.json()["intent"] == "finish a marathon"
    assert plan.json()["version"] == 1
    assert bob_reads.status_code == 403
    assert "edge: trusting the development key" in "".join(edge.lines)


def _stated(response: httpx.Response) -> bool:
    return response.status_code == 200 and bool(response.json()["intent"])


def _not_missing(response: httpx.Response) -> bool:
    return response.status_code != 404  # core answers NotFound until it has it


async def _until(
    http: httpx.AsyncClient,
    request: str,
    body: dict[str, str],
    headers: dict[str, str],
    done: Callable[[httpx.Response], bool],
) -> httpx.Response:
    """Send the request `request` until its answer is `done`, as a user retries."""
    async with asyncio.timeout(20):
        while True:
            response = await http.post(
                f"/v1/commands/{request}", json=body, headers=headers
            )
            if done(response):
                return response
            await asyncio.sleep(0.1)


async def test_a_plan_created_twice_under_one_idempotency_key_is_made_once(
    first_minute: tuple[str, dict[str, str], Process],
    broker: Broker,
    tmp_path: Path,
) -> None:
    base, env, _edge = first_minute
    token = await _baton_token(env, "alice", "planner")
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "plan-1", **JSON}
    goal = {"goal": "run a marathon", "horizon_days": 90}

    async with httpx.AsyncClient(base_url=base, timeout=15) as http:
        sent = [
            await http.post("/v1/commands/plan.create", json=goal, headers=headers)
            for _ in range(3)
        ]
        plan_id = sent[0].json()["command_id"]
        plan = await _until(http, "plan.get", {"plan_id": plan_id}, headers, _found)
        # One more copy after the first was handled: the inbox has seen it.
        late = await http.post("/v1/commands/plan.create", json=goal, headers=headers)
        marker = await http.post(
            "/v1/commands/plan.create",
            json=goal,
            headers={**headers, "Idempotency-Key": "plan-2"},
        )
        by_marker = {"plan_id": marker.json()["command_id"]}
        await _until(http, "plan.get", by_marker, headers, _found)
    notifications = tmp_path / "state" / "notifications.sqlite3"
    await eventually(
        lambda: by_marker["plan_id"] in _notified_plans(notifications, "alice"),
        what="the marker plan's notification",
    )

    assert [r.status_code for r in (*sent, late)] == [202] * 4
    assert {r.json()["command_id"] for r in (*sent, late)} == {plan_id}
    assert plan.json()["version"] == 1
    assert _notified_plans(notifications, "alice") == [plan_id, by_marker["plan_id"]]
    for parked in (broker.topology.dead_queue, broker.topology.quarantine_queue):
        assert await broker.depth(parked("core")) == 0


def _found(response: httpx.Response) -> bool:
    return response.status_code == 200


def _notified_plans(database: Path, subject: str) -> list[str]:
    if not database.exists():
        return []
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT plan_id FROM notifications WHERE subject = ?", (subject,)
        ).fetchall()
    return [str(plan_id) for (plan_id,) in rows]
