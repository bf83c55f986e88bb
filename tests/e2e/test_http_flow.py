"""HTTP -> edge -> core -> users -> notifications, all started by ``baton run``.

A client with a signed token creates a plan over HTTP; the core service asks the
users service for that user's intent on the user's behalf, stores the plan and
announces it; the notifications service records a notification for the same
user with the chain of services that acted. Nothing here is in-process: the
test talks HTTP to the edge and reads the services' databases.
"""

from __future__ import annotations

import secrets
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest
import pytest_asyncio

from messaging.identity import Origin
from messaging.settings import BrokerSettings
from tests.conftest import Broker
from tests.workers.conftest import Tap, eventually
from tests.workers.processes import (
    Process,
    baton_env,
    free_port,
    leftovers,
    spawn_baton,
)
from workers.system import SERVICES

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

SECRET = secrets.token_hex(32)


def _token(subject: str, *roles: str) -> str:
    now = int(time.time())
    claims = {
        "sub": subject,
        "iss": "baton-dev",
        "aud": "baton",
        "iat": now,
        "exp": now + 300,
        "roles": list(roles),
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest_asyncio.fixture
async def system(
    settings: BrokerSettings, broker: Broker, tmp_path: Path
) -> AsyncIterator[tuple[Process, str]]:
    """``baton run`` with the edge on a free port; yields it and the base URL."""
    for name in (*SERVICES, "scheduler"):
        broker.track(name)
    port = free_port()
    env = baton_env(
        settings,
        tmp_path / "state",
        BATON_EDGE_HS256_SECRET=SECRET,
        BATON_EDGE_ALGORITHMS='["HS256"]',
        BATON_EDGE_PORT=str(port),
    )
    process = await spawn_baton(["run"], env, tmp_path / "stderr.txt", cwd=tmp_path)
    try:
        await process.wait_for_line("baton: running")
        yield process, f"http://127.0.0.1:{port}"
        assert await process.stop(signal.SIGINT) == 0
    finally:
        if process.child.returncode is None:
            process.child.kill()
            await process.child.wait()
    await broker.cleanup()
    assert leftovers(settings.amqp_url.get_secret_value(), settings.prefix) in (
        [],
        None,
    )


async def test_a_plan_created_over_http_reaches_the_notification_with_the_chain(
    system: tuple[Process, str], tmp_path: Path, broker: Broker
) -> None:
    process, base = system
    asked = await Tap.on(broker, broker.topology.commands, "profile.get")
    alice = {"Authorization": f"Bearer {_token('alice', 'planner')}"}
    bob = {"Authorization": f"Bearer {_token('bob', 'planner')}"}

    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        intent = await http.post(
            "/v1/commands/profile.update_intent",
            json={"intent": "a marathon"},
            headers=alice,
        )
        assert intent.status_code == 202
        created = await http.post(
            "/v1/commands/plan.create",
            json={"goal": "10k", "horizon_days": 30},
            headers=alice,
        )
        assert created.status_code == 202
        plan_id = created.json()["command_id"]

        notifications = tmp_path / "state" / "notifications.sqlite3"
        await eventually(
            lambda: _notifications(notifications, "alice"), what="the notification"
        )
        read = await http.post(
            "/v1/commands/plan.get", json={"plan_id": plan_id}, headers=alice
        )
        someone_else = await http.post(
            "/v1/commands/plan.get", json={"plan_id": plan_id}, headers=bob
        )

    assert read.status_code == 200
    plan = read.json()
    assert (plan["owner"], plan["intent"], plan["version"]) == (
        "alice",
        "a marathon",
        1,
    )
    assert _notifications(notifications, "alice") == [
        (plan_id, "created", "edge > core")
    ]
    [at_users] = await asked.principals()
    assert (at_users.subject, at_users.actors) == ("alice", ("edge", "core"))
    assert at_users.origin is Origin.REQUEST
    assert someone_else.status_code == 403
    assert "edge: http://127.0.0.1" in "".join(process.lines)


def _notifications(database: Path, subject: str) -> list[tuple[str, str, str]]:
    if not database.exists():
        return []
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT plan_id, change, actors FROM notifications WHERE subject = ?",
            (subject,),
        ).fetchall()
    return [(str(p), str(c), str(a)) for p, c, a in rows]


async def test_a_standing_refresh_is_scheduled_and_cancelled_over_http(
    system: tuple[Process, str], tmp_path: Path
) -> None:
    _, base = system
    alice = {"Authorization": f"Bearer {_token('alice', 'planner')}"}
    bob = {"Authorization": f"Bearer {_token('bob')}"}
    standing = tmp_path / "state" / "scheduler.sqlite3"

    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        created = await http.post(
            "/v1/commands/plan.create",
            json={"goal": "5k", "horizon_days": 10},
            headers=alice,
        )
        plan_id = created.json()["command_id"]
        notifications = tmp_path / "state" / "notifications.sqlite3"
        await eventually(
            lambda: _notifications(notifications, "alice"), what="the plan"
        )
        scheduled = await http.post(
            "/v1/commands/plan.schedule_refresh",
            json={"plan_id": plan_id, "every_minutes": 60},
            headers=alice,
        )
        await eventually(lambda: _standing(standing), what="the standing refresh")
        not_hers = await http.post(
            "/v1/commands/plan.cancel_refresh", json={"plan_id": plan_id}, headers=bob
        )
        cancelled = await http.post(
            "/v1/commands/plan.cancel_refresh",
            json={"plan_id": plan_id},
            headers=alice,
        )
        await eventually(lambda: not _standing(standing), what="the cancellation")

    assert (scheduled.status_code, not_hers.status_code) == (202, 202)
    assert cancelled.status_code == 202


def _standing(database: Path) -> list[tuple[str, str]]:
    if not database.exists():
        return []
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT subject, plan_id FROM standing_refresh").fetchall()
    return [(str(subject), str(plan)) for subject, plan in rows]
