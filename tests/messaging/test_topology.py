"""The broker layout, checked on the broker itself rather than on our own objects."""

from __future__ import annotations

import asyncio

import aiormq
import pytest
from pamqp.common import FieldTable

from messaging.topology import Topology, supports_quorum
from tests.conftest import Broker
from tests.messaging.conftest import send, service_name, unattended_queue, wait_depth

pytestmark = pytest.mark.broker


def test_names_are_derived_from_prefix_and_service() -> None:
    topology = Topology(prefix="acme", retry_delays=(0.5, 2.0))

    assert topology.commands == "acme.commands"
    assert topology.events == "acme.events"
    assert topology.service_queue("core") == "acme.core"
    assert topology.retry_queue("core", 0.5) == "acme.core.retry.500ms"
    assert topology.dead_queue("core") == "acme.core.dead"
    assert topology.quarantine_queue("core") == "acme.core.quarantine"
    assert topology.service_queues("core") == [
        "acme.core",
        "acme.core.retry.500ms",
        "acme.core.retry.2000ms",
        "acme.core.dead",
        "acme.core.quarantine",
    ]


def test_retry_delays_grow_and_run_out() -> None:
    topology = Topology(retry_delays=(1.0, 5.0, 30.0))

    delays = [topology.retry_delay(attempt) for attempt in range(1, 5)]

    assert delays == [1.0, 5.0, 30.0, None]


@pytest.mark.parametrize(
    ("version", "expected"),
    [(b"3.10.8", True), ("3.8.0", True), (b"3.7.28", False), (b"garbage", False)],
)
def test_quorum_support_is_read_from_the_server_version(
    version: bytes | str, expected: bool
) -> None:
    assert supports_quorum({"version": version}) is expected


async def _redeclare_fails(broker: Broker, name: str, arguments: FieldTable) -> bool:
    """Whether re-declaring `name` with `arguments` is refused as inequivalent."""
    channel = await broker.connection.channel()
    try:
        await channel.declare_queue(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed:
        return True
    await channel.close()
    return False


@pytest.mark.asyncio
async def test_every_queue_of_a_service_exists_on_the_broker(broker: Broker) -> None:
    service = service_name()
    await unattended_queue(broker, service)

    channel = await broker.connection.channel()
    try:
        for name in broker.topology.service_queues(service):
            declared = await channel.declare_queue(name, passive=True)
            assert declared.declaration_result.message_count == 0
        for name in [
            *broker.topology.exchanges(),
            *broker.topology.service_exchanges(service),
        ]:
            await channel.get_exchange(name, ensure=True)
    finally:
        await channel.close()


@pytest.mark.asyncio
async def test_work_queue_is_quorum_with_the_configured_delivery_limit(
    broker: Broker,
) -> None:
    service = service_name()
    queue = await unattended_queue(broker, service)
    topology = broker.topology
    declared: FieldTable = {
        "x-queue-type": "quorum",
        "x-delivery-limit": topology.delivery_limit,
        "x-dead-letter-exchange": topology.quarantine_exchange(service),
        "x-dead-letter-routing-key": service,
    }

    # The broker accepts a re-declaration only when the arguments are equal,
    # so this reads the arguments it actually holds.
    assert not await _redeclare_fails(broker, queue.name, declared)
    assert await _redeclare_fails(
        broker,
        queue.name,
        {**declared, "x-delivery-limit": topology.delivery_limit + 1},
    )
    assert await _redeclare_fails(
        broker, queue.name, {**declared, "x-queue-type": "classic"}
    )
    without_limit = {k: v for k, v in declared.items() if k != "x-delivery-limit"}
    assert await _redeclare_fails(broker, queue.name, without_limit)


@pytest.mark.asyncio
async def test_commands_reach_the_service_queue_by_message_type(broker: Broker) -> None:
    service = service_name()
    queue = await unattended_queue(broker, service)

    await send(broker)
    await send(broker, message_type="other.type")

    assert await wait_depth(broker, queue.name, 1) == 1


@pytest.mark.asyncio
async def test_a_retry_queue_sends_the_message_back_after_its_delay(
    broker: Broker,
) -> None:
    service = service_name()
    queue = await unattended_queue(broker, service)
    topology = broker.topology
    retry_queue = topology.retry_queue(service, topology.retry_delays[0])

    message_id = await send(
        broker, exchange=topology.retry_exchange(service), routing_key=retry_queue
    )

    assert await wait_depth(broker, queue.name, 1) == 1
    assert await broker.depth(retry_queue) == 0
    [back] = await broker.drain(queue.name, expect=1)
    assert back.message_id == message_id


@pytest.mark.asyncio
async def test_work_queue_gives_up_after_the_delivery_limit_into_quarantine(
    broker: Broker,
) -> None:
    service = service_name()
    topology = Topology(prefix=broker.topology.prefix, delivery_limit=2)
    broker.topology = topology
    queue = await unattended_queue(broker, service)
    message_id = await send(broker)

    channel = await broker.connection.channel()
    try:
        work = await channel.get_queue(queue.name)
        for _ in range(topology.delivery_limit + 1):
            delivered = None
            while delivered is None:
                delivered = await work.get(fail=False)
                if delivered is None:
                    await asyncio.sleep(0.02)
            await delivered.nack(requeue=True)
    finally:
        await channel.close()

    quarantine = topology.quarantine_queue(service)
    [parked] = await broker.drain(quarantine, expect=1)
    assert parked.message_id == message_id
    assert await broker.depth(queue.name) == 0


def test_each_service_owns_its_retry_path_parking_and_reply_exchanges() -> None:
    topology = Topology(prefix="acme")

    assert list(topology.exchanges()) == ["acme.commands", "acme.events"]
    assert list(topology.service_exchanges("core")) == [
        "acme.core.retry",
        "acme.core.redeliver",
        "acme.core.dead",
        "acme.core.quarantine",
    ]
    assert topology.reply_exchange("edge") == "acme.edge.replies"


@pytest.mark.parametrize(
    ("reply_to", "owner"),
    [
        ("acme.edge.replies.0123456789ab", "edge"),
        ("acme.core-2.replies.0123456789ab", "core-2"),
        ("other.edge.replies.0123456789ab", None),
        ("acme.edge.replies.0123456789ab.x", None),
        ("acme.edge.replies.", None),
        ("acme.Edge.replies.0123456789ab", None),
        ("acme.a.b.replies.0123456789ab", None),
        ("acme.edge.dead", None),
        ("", None),
    ],
)
def test_a_reply_goes_to_the_exchange_of_the_service_named_in_reply_to(
    reply_to: str, owner: str | None
) -> None:
    topology = Topology(prefix="acme")

    assert topology.reply_owner(reply_to) == owner
    expected = None if owner is None else f"acme.{owner}.replies"
    assert topology.reply_exchange_for(reply_to) == expected
