"""A broker connection that goes silent: every answer is quick, none is a 500.

A stopped broker closes its sockets and the edge notices at once. A silent one
(a frozen host, a dropped route) keeps them open and answers nothing, so only
deadlines and heartbeats can tell. The edge reaches the broker here through a
:class:`~tests.edge.proxy.FreezableProxy` owned by the test; the worker talks
to the broker directly and stays healthy throughout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit

import httpx
import pytest
import pytest_asyncio

from contracts import PlanGet
from edge_api.settings import EdgeSettings
from messaging.handlers import HandlerSpec
from messaging.settings import BrokerSettings
from tests.edge.conftest import (
    IdentityProvider,
    RunningEdge,
    Spy,
    StartConsumer,
    bearer,
    run_edge,
)
from tests.edge.proxy import FreezableProxy
from tests.edge.test_commands import _answer

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

CALLS = {
    "command": ("/v1/commands/plan.create", {"goal": "run", "horizon_days": 9}),
    "request": ("/v1/commands/plan.get", {"plan_id": "p-1"}),
}
ANSWERED = {"command": 202, "request": 200}
# Generous on a shared machine, and far below the three minutes that RabbitMQ's
# default heartbeat takes to give up on a silent connection.
ANSWER_WITHIN = 10.0
NOTICED_WITHIN = 20.0


@pytest_asyncio.fixture
async def proxy(settings: BrokerSettings) -> AsyncIterator[FreezableProxy]:
    running = FreezableProxy(settings.amqp_url.get_secret_value())
    await running.start()
    try:
        yield running
    finally:
        await running.close()


@pytest_asyncio.fixture
async def planner(start_consumer: StartConsumer, spy: Spy) -> None:
    """A healthy worker answering plan.get; the spy takes plan.create."""
    await start_consumer("planner", [HandlerSpec("plan.get", PlanGet, _answer)])


async def edge_via(
    proxy: FreezableProxy,
    edge_settings: EdgeSettings,
    settings: BrokerSettings,
    **limits: float,
) -> AsyncIterator[RunningEdge]:
    through = settings.model_copy(update={"amqp_url": proxy.url})
    quick = edge_settings.model_copy(
        update={"publish_timeout": 1, "reply_timeout": 1, "heartbeat": 1, **limits}
    )
    async for running in run_edge(quick, through):
        assert running.app.state.edge.gateway.is_ready
        yield running


async def close_from_the_broker(settings: BrokerSettings, peer_port: int) -> None:
    """Have the broker close the connection from `peer_port` (management API)."""
    parts = urlsplit(settings.amqp_url.get_secret_value())
    async with httpx.AsyncClient(
        base_url=f"http://{parts.hostname}:15672",
        auth=(parts.username or "guest", parts.password or "guest"),
        timeout=10,
    ) as management:
        try:
            await management.get("/api/overview")
        except httpx.TransportError as exc:
            pytest.skip(f"the management API is not reachable: {exc}")
        async with asyncio.timeout(NOTICED_WITHIN):
            while True:
                listed = (await management.get("/api/connections")).json()
                mine = [c["name"] for c in listed if c.get("peer_port") == peer_port]
                if mine:
                    break
                await asyncio.sleep(0.2)
        path = "/api/connections/" + quote(mine[0], safe="")
        closed = await management.delete(path, headers={"X-Reason": "test"})
        assert closed.status_code == 204, closed.text


async def call(edge: RunningEdge, idp: IdentityProvider, mode: str) -> httpx.Response:
    """One call of `mode`, which must be answered within ANSWER_WITHIN seconds."""
    path, body = CALLS[mode]
    async with asyncio.timeout(ANSWER_WITHIN):
        return await edge.client.post(path, json=body, headers=bearer(idp.token()))


async def until_status(
    edge: RunningEdge, idp: IdentityProvider, mode: str, expected: int
) -> list[int]:
    """Call until the answer is `expected`; every status seen on the way."""
    seen: list[int] = []
    async with asyncio.timeout(NOTICED_WITHIN):
        while not seen or seen[-1] != expected:
            seen.append((await call(edge, idp, mode)).status_code)
            await asyncio.sleep(0.1)
    return seen


async def until_ready_is(edge: RunningEdge, expected: int) -> None:
    async with asyncio.timeout(NOTICED_WITHIN):
        while True:
            if (await edge.client.get("/health/ready")).status_code == expected:
                return
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("mode", ["command", "request"])
@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
@pytest.mark.usefixtures("planner")
async def test_a_silent_broker_is_503_or_504_quickly_then_the_edge_recovers(
    proxy: FreezableProxy,
    edge_settings: EdgeSettings,
    settings: BrokerSettings,
    idp: IdentityProvider,
    mode: str,
    warm: bool,
) -> None:
    async for edge in edge_via(proxy, edge_settings, settings):
        if warm:  # channels already open: the confirm or the reply is what hangs
            assert (await call(edge, idp, mode)).status_code == ANSWERED[mode]
        proxy.freeze()

        frozen = [(await call(edge, idp, mode)).status_code for _ in range(3)]
        await until_ready_is(edge, 503)
        proxy.thaw()
        recovering = await until_status(edge, idp, mode, ANSWERED[mode])
        await until_ready_is(edge, 200)

    assert set(frozen) <= {503, 504}, frozen
    assert set(recovering) <= {503, 504, ANSWERED[mode]}, recovering


@pytest.mark.parametrize("mode", ["command", "request"])
@pytest.mark.usefixtures("planner")
async def test_a_connection_that_dies_under_a_call_is_503_not_500(
    proxy: FreezableProxy,
    edge_settings: EdgeSettings,
    settings: BrokerSettings,
    idp: IdentityProvider,
    mode: str,
) -> None:
    # A confirm deadline longer than the heartbeat's grace (about 6 s at 1 s):
    # the heartbeat closes the connection while the call still waits, and
    # aiormq fails the call's futures with CancelledError.
    patient = {"publish_timeout": 9.0, "reply_timeout": 9.0}
    async for edge in edge_via(proxy, edge_settings, settings, **patient):
        assert (await call(edge, idp, mode)).status_code == ANSWERED[mode]
        proxy.freeze()

        path, body = CALLS[mode]
        async with asyncio.timeout(ANSWER_WITHIN):
            response = await edge.client.post(
                path, json=body, headers=bearer(idp.token())
            )
        ready = await edge.client.get("/health/ready")
        proxy.thaw()

    assert response.status_code == 503
    assert response.json() == {"detail": "the message broker is unavailable"}
    assert "retry-after" in response.headers
    assert ready.status_code == 503


@pytest.mark.usefixtures("broker")  # it deletes the exchanges the edge declares
async def test_readiness_turns_503_when_the_broker_goes_silent(
    proxy: FreezableProxy,
    edge_settings: EdgeSettings,
    settings: BrokerSettings,
) -> None:
    async for edge in edge_via(proxy, edge_settings, settings):
        proxy.freeze()
        loop = asyncio.get_running_loop()
        frozen_at = loop.time()
        await until_ready_is(edge, 503)
        noticed_after = loop.time() - frozen_at
        proxy.thaw()
        await until_ready_is(edge, 200)

    # With a 1 s heartbeat the client gives up after about (1 + 1) * 3 s.
    assert noticed_after < NOTICED_WITHIN


async def test_a_late_confirm_is_503_and_a_retry_with_its_key_is_the_same_message(
    proxy: FreezableProxy,
    edge_settings: EdgeSettings,
    settings: BrokerSettings,
    idp: IdentityProvider,
    spy: Spy,
) -> None:
    path, body = CALLS["command"]
    headers = {**bearer(idp.token()), "Idempotency-Key": "checkout-42"}
    async for edge in edge_via(proxy, edge_settings, settings):
        assert (await call(edge, idp, "command")).status_code == 202
        # The command reaches the broker; its confirm never comes back.
        proxy.freeze(to_broker=False, to_client=True)
        async with asyncio.timeout(ANSWER_WITHIN):
            late = await edge.client.post(path, json=body, headers=headers)
        proxy.thaw()
        async with asyncio.timeout(NOTICED_WITHIN):
            retried = await edge.client.post(path, json=body, headers=headers)
            while retried.status_code != 202:
                await asyncio.sleep(0.1)
                retried = await edge.client.post(path, json=body, headers=headers)
        [_warm_up, taken, copy] = await spy.take(3)

    assert late.status_code == 503
    assert "retry-after" in late.headers
    assert "may or may not have been taken" in late.json()["detail"]
    # The broker did take it; the retry is the same message, for the inboxes
    # to drop, not a second command.
    assert taken.message_id == copy.message_id == retried.json()["command_id"]


async def test_the_broker_closing_the_edges_connection_is_503_then_recovered(
    proxy: FreezableProxy,
    edge_settings: EdgeSettings,
    settings: BrokerSettings,
    idp: IdentityProvider,
    spy: Spy,
) -> None:
    # The proxy only forwards here; it tells which connection is the edge's.
    async for edge in edge_via(proxy, edge_settings, settings):
        before = await call(edge, idp, "command")
        await close_from_the_broker(settings, proxy.broker_side_ports[-1])
        right_after = await call(edge, idp, "command")
        recovering = await until_status(edge, idp, "command", 202)
        await until_ready_is(edge, 200)
        last = await call(edge, idp, "command")
        taken = await spy.take(3)

    assert before.status_code == 202
    assert right_after.status_code == 503
    assert "retry-after" in right_after.headers
    assert set(recovering) <= {503, 202}, recovering
    assert len(proxy.broker_side_ports) == 2, "the edge should have reconnected once"
    ids = [message.message_id for message in taken]
    assert ids[0] == before.json()["command_id"]
    assert ids[2] == last.json()["command_id"]
