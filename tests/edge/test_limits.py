"""Limits and backpressure: oversized bodies, and a broker that cannot take work.

Every refusal is quick and explicit (413, or 503 with Retry-After); none hangs.
The shared broker is never stopped: an unreachable broker is a closed port.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from edge_api.settings import EdgeSettings
from messaging.settings import BrokerSettings
from tests.conftest import Broker
from tests.edge.conftest import IdentityProvider, RunningEdge, Spy, bearer, run_edge

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

GOAL = {"goal": "run a marathon", "horizon_days": 90}
CREATE = "/v1/commands/plan.create"
UNREACHABLE = "amqp://guest:guest@127.0.0.1:1/"


def padded_goal(size: int) -> bytes:
    """A JSON body of exactly `size` bytes (whitespace padding is valid JSON)."""
    body = json.dumps(GOAL).encode()
    return body + b" " * (size - len(body))


async def chunks(body: bytes, size: int = 100) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
async def test_a_body_over_the_cap_is_refused_before_it_is_parsed(
    edge_settings: EdgeSettings,
    settings: BrokerSettings,
    idp: IdentityProvider,
    spy: Spy,
    chunked: bool,
) -> None:
    def body(size: int) -> bytes | AsyncIterator[bytes]:
        return chunks(padded_goal(size)) if chunked else padded_goal(size)

    small = edge_settings.model_copy(update={"max_body_bytes": 1024})
    async for running in run_edge(small, settings):
        over = await running.client.post(CREATE, content=body(5000), headers=_json(idp))
        at_cap = await running.client.post(
            CREATE, content=body(1024), headers=_json(idp)
        )

    # A chunked body has no length to check up front: the bytes are counted.
    assert ("content-length" in over.request.headers) is not chunked
    assert over.status_code == 413
    assert over.json() == {"detail": "the request body is over 1024 bytes"}
    assert at_cap.status_code == 202
    [message] = await spy.take(1)
    assert message.message_id == at_cap.json()["command_id"]


async def test_an_unreachable_broker_is_503_with_retry_after_and_not_ready(
    edge_settings: EdgeSettings, prefix: str, idp: IdentityProvider
) -> None:
    down = BrokerSettings(amqp_url=UNREACHABLE, prefix=prefix)
    quick = edge_settings.model_copy(update={"startup_wait": 0.2})
    async for running in run_edge(quick, down):
        command = await running.client.post(
            CREATE, json=GOAL, headers=bearer(idp.token())
        )
        request = await running.client.post(
            "/v1/commands/plan.get", json={"plan_id": "p"}, headers=bearer(idp.token())
        )
        ready = await running.client.get("/health/ready")
        live = await running.client.get("/health/live")

    assert command.status_code == 503
    assert command.headers["retry-after"] == str(edge_settings.retry_after)
    assert command.json() == {"detail": "the message broker is unavailable"}
    assert request.status_code == 503
    assert ready.status_code == 503
    assert live.status_code == 200


async def test_readiness_reflects_a_live_broker(edge: RunningEdge) -> None:
    ready = await edge.client.get("/health/ready")

    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


async def test_a_command_no_service_is_bound_for_is_503(
    edge: RunningEdge, idp: IdentityProvider
) -> None:
    response = await edge.client.post(CREATE, json=GOAL, headers=bearer(idp.token()))

    assert response.status_code == 503
    assert response.json() == {"detail": "no service takes plan.create right now"}
    assert "retry-after" in response.headers


async def test_a_full_queue_is_503_and_its_contents_are_kept(
    edge: RunningEdge, idp: IdentityProvider, broker: Broker, prefix: str
) -> None:
    name = f"{prefix}.full"
    broker.extra_queues.add(name)
    channel = await broker.connection.channel()
    try:
        queue = await channel.declare_queue(
            name, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
        )
        await queue.bind(broker.topology.commands, routing_key="plan.create")
    finally:
        await channel.close()

    first = await edge.client.post(CREATE, json=GOAL, headers=bearer(idp.token()))
    second = await edge.client.post(CREATE, json=GOAL, headers=bearer(idp.token()))

    assert first.status_code == 202
    assert second.status_code == 503
    assert "refused" in second.json()["detail"]
    assert "retry-after" in second.headers
    [kept] = await broker.drain(name, expect=1)
    assert kept.message_id == first.json()["command_id"]


def _json(idp: IdentityProvider) -> dict[str, str]:
    return {**bearer(idp.token()), "Content-Type": "application/json"}


async def test_the_edge_comes_back_after_losing_its_broker_connection(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy
) -> None:
    before = await edge.client.post(CREATE, json=GOAL, headers=bearer(idp.token()))
    await edge.app.state.edge.gateway.link.connection.close()

    statuses: list[int] = []
    async with asyncio.timeout(20):
        while not statuses or statuses[-1] != 202:
            response = await edge.client.post(
                CREATE, json=GOAL, headers=bearer(idp.token())
            )
            statuses.append(response.status_code)
            if response.status_code != 202:
                await asyncio.sleep(0.05)
    ready = await edge.client.get("/health/ready")

    assert before.status_code == 202
    assert set(statuses) <= {202, 503}
    assert ready.status_code == 200
    taken = await spy.take(2)
    assert taken[0].message_id == before.json()["command_id"]
    assert taken[1].message_id == response.json()["command_id"]
