"""Publishing: every property on the wire, and every way the broker can say no."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from pamqp.common import FieldTable

from messaging import headers as h
from messaging.connection import Link
from messaging.errors import (
    BrokerUnavailable,
    ConfirmTimeout,
    MessageReturned,
    PublishNacked,
)
from messaging.identity import decode_principal
from messaging.publisher import Publisher
from messaging.settings import BrokerSettings
from tests.conftest import Broker
from tests.messaging.conftest import Say, alice, service_name

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]


@pytest_asyncio.fixture
async def link(settings: BrokerSettings) -> AsyncIterator[Link]:
    link = Link(settings.amqp_url, name="baton:test-publisher")
    await link.start()
    await link.wait_ready(10)
    yield link
    await link.stop()


@pytest_asyncio.fixture
async def publisher(link: Link, settings: BrokerSettings) -> AsyncIterator[Publisher]:
    publisher = Publisher(link, confirm_timeout=settings.confirm_timeout)
    yield publisher
    await publisher.close()


async def _bound_queue(
    broker: Broker, routing_key: str, arguments: FieldTable | None = None
) -> str:
    """A queue bound to the commands exchange under `routing_key`; cleaned up."""
    name = f"{broker.topology.prefix}.probe.{service_name()}"
    broker.extra_queues.add(name)
    channel = await broker.connection.channel()
    try:
        await broker.topology.declare_exchanges(channel)
        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        await queue.bind(broker.topology.commands, routing_key=routing_key)
    finally:
        await channel.close()
    return name


async def test_a_published_message_carries_every_property(
    broker: Broker, publisher: Publisher
) -> None:
    queue = await _bound_queue(broker, "plan.create")
    principal = alice("planner")

    message_id = await publisher.publish(
        broker.topology.commands,
        "plan.create",
        message_type="plan.create",
        body=Say(text="hi"),
        principal=principal,
        headers={h.SUBJECT: "mallory", "trace": "t-1"},
    )

    [received] = await broker.drain(queue, expect=1)
    assert received.message_id == message_id
    assert received.correlation_id == message_id
    assert received.delivery_mode == 2
    assert received.user_id == publisher.broker_user == "guest"
    assert received.content_type == "application/json"
    assert received.type == "plan.create"
    assert received.timestamp is not None
    assert received.body == b'{"text":"hi"}'
    # Caller headers pass through, but never overwrite the identity.
    assert received.headers["trace"] == "t-1"
    assert decode_principal(received.headers) == principal


async def test_a_given_correlation_id_is_kept(
    broker: Broker, publisher: Publisher
) -> None:
    queue = await _bound_queue(broker, "plan.create")

    await publisher.publish(
        broker.topology.commands,
        "plan.create",
        message_type="plan.create",
        body=b"{}",
        principal=alice(),
        correlation_id="flow-42",
    )

    [received] = await broker.drain(queue, expect=1)
    assert received.correlation_id == "flow-42"
    assert received.message_id != "flow-42"


async def test_an_unroutable_message_is_returned_not_dropped(
    broker: Broker, publisher: Publisher
) -> None:
    await _bound_queue(broker, "plan.create")

    with pytest.raises(MessageReturned) as caught:
        await publisher.publish(
            broker.topology.commands,
            "nobody.listens",
            message_type="nobody.listens",
            body=b"{}",
            principal=alice(),
        )

    assert caught.value.routing_key == "nobody.listens"
    assert caught.value.exchange == broker.topology.commands


async def test_a_message_the_broker_refuses_raises_nacked(
    broker: Broker, publisher: Publisher
) -> None:
    full: FieldTable = {"x-max-length": 0, "x-overflow": "reject-publish"}
    queue = await _bound_queue(broker, "plan.full", full)

    with pytest.raises(PublishNacked):
        await publisher.publish(
            broker.topology.commands,
            "plan.full",
            message_type="plan.full",
            body=b"{}",
            principal=alice(),
        )

    assert await broker.depth(queue) == 0


async def test_the_publisher_keeps_working_after_a_refusal(
    broker: Broker, publisher: Publisher
) -> None:
    await _bound_queue(
        broker, "plan.full", {"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    queue = await _bound_queue(broker, "plan.create")
    commands = broker.topology.commands

    for routing_key, error in (
        ("plan.full", PublishNacked),
        ("nobody.listens", MessageReturned),
    ):
        with pytest.raises(error):
            await publisher.publish(
                commands,
                routing_key,
                message_type=routing_key,
                body=b"{}",
                principal=None,
            )
    await publisher.publish(
        commands, "plan.create", message_type="plan.create", body=b"{}", principal=None
    )

    assert len(await broker.drain(queue, expect=1)) == 1


async def test_a_missing_confirm_raises_confirm_timeout(
    broker: Broker, link: Link
) -> None:
    # No broker confirms a publish within a microsecond: the deadline passes
    # while the confirm is still on its way.
    queue = await _bound_queue(broker, "plan.create")
    hasty = Publisher(link, confirm_timeout=1e-6)
    patient = Publisher(link, confirm_timeout=5)
    try:
        with pytest.raises(ConfirmTimeout):
            await _publish_create(hasty, broker.topology.commands)
        await _publish_create(patient, broker.topology.commands)
    finally:
        await hasty.close()
        await patient.close()

    # The timed-out message may or may not have arrived; the confirmed one has.
    assert len(await broker.drain(queue, expect=2, timeout=1)) >= 1


async def _publish_create(publisher: Publisher, exchange: str) -> str:
    return await publisher.publish(
        exchange,
        "plan.create",
        message_type="plan.create",
        body=b"{}",
        principal=None,
    )


async def test_an_unreachable_broker_raises_broker_unavailable_without_hanging() -> (
    None
):
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    link = Link("amqp://guest:guest@127.0.0.1:1/", name="baton:nowhere")
    publisher = Publisher(link, confirm_timeout=1)
    await link.start(wait=0.2)
    try:
        async with asyncio.timeout(10):
            with pytest.raises(BrokerUnavailable):
                await link.wait_ready(0.5)
            with pytest.raises(BrokerUnavailable):
                await _publish_create(publisher, "baton.commands")
    finally:
        await publisher.close()
        await link.stop()

    assert not link.is_ready
