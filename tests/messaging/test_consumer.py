"""Where each delivery ends, seen on the broker: acked, retried, dead, quarantined."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest
from pydantic import SecretStr

from messaging import headers as h
from messaging.consumer import Consumer
from messaging.errors import BrokerUnavailable, Forbidden, Reject
from messaging.handlers import Context
from messaging.identity import Origin, Principal, PrincipalKind, encode_principal
from messaging.settings import BrokerSettings
from messaging.topology import Topology
from tests.conftest import Broker
from tests.messaging.conftest import (
    ECHO,
    Calls,
    Say,
    StartConsumer,
    alice,
    last_death,
    send,
    service_name,
    spec,
    unattended_queue,
    wait_depth,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]


NOTHING_LEFT = {"work": 0, "dead": 0, "quarantine": 0}


async def _settled(broker: Broker, topology: Topology, service: str) -> dict[str, int]:
    """Ready messages in each of the service's queues."""
    return {
        "work": await broker.depth(topology.service_queue(service)),
        "dead": await broker.depth(topology.dead_queue(service)),
        "quarantine": await broker.depth(topology.quarantine_queue(service)),
    }


async def test_a_handled_message_is_acked_once(
    broker: Broker, start_consumer: StartConsumer, settings: BrokerSettings
) -> None:
    calls = Calls()
    handle = calls.handler()

    service = service_name()
    consumer = await start_consumer(service, [spec(handle)])
    message_id = await send(broker)
    await calls.wait_for(lambda: calls.count(message_id) == 1)
    await consumer.stop()

    # Stopping returns anything unacked to the queue: an empty queue means acked.
    topology = settings.topology()
    assert await _settled(broker, topology, service) == NOTHING_LEFT
    assert calls.count(message_id) == 1
    assert calls.seen[0][2] == Say(text="hello")
    assert calls.principals == [alice()]


async def test_a_failed_handler_is_retried_through_each_delay_queue_then_succeeds(
    broker: Broker, start_consumer: StartConsumer, settings: BrokerSettings
) -> None:
    growing = settings.model_copy(update={"retry_delays": (0.5, 1.5)})
    topology = growing.topology()
    service = service_name()
    broker.extra_queues.update(topology.retry_queue(service, d) for d in (0.5, 1.5))
    returned = await _tap_returns_from_retry(broker, topology, service)
    calls = Calls()
    called_at: list[float] = []

    async def flaky(context: Context, payload: Say) -> None:
        called_at.append(asyncio.get_running_loop().time())
        calls.record(context, payload)
        if context.attempt < 2:
            raise RuntimeError("database blinked")

    consumer = await start_consumer(service, [spec(flaky)], settings_=growing)
    message_id = await send(broker)
    await calls.wait_for(lambda: calls.count(message_id) == 3)
    await consumer.stop()

    assert calls.attempts(message_id) == [0, 1, 2]
    # The broker's own record of each trip back: the copy for attempt n left
    # the retry queue of delay n because its TTL expired there.
    trips = await broker.drain(returned, expect=2)
    assert [trip.headers[h.ATTEMPT] for trip in trips] == [1, 2]
    assert [last_death(trip) for trip in trips] == [
        (topology.retry_queue(service, 0.5), "expired"),
        (topology.retry_queue(service, 1.5), "expired"),
    ]
    assert {trip.message_id for trip in trips} == {message_id}
    # No sooner than each delay (lower bounds only: a loaded machine is slow).
    waits = [later - earlier for earlier, later in itertools.pairwise(called_at)]
    assert waits[0] >= 0.5 * 0.9
    assert waits[1] >= 1.5 * 0.9
    assert await _settled(broker, topology, service) == NOTHING_LEFT


async def _tap_returns_from_retry(
    broker: Broker, topology: Topology, service: str
) -> str:
    """A queue that gets a copy of every message a retry queue sends back."""
    name = f"{topology.prefix}.tap.{service}"
    broker.extra_queues.add(name)
    channel = await broker.connection.channel()
    try:
        await topology.declare_exchanges(channel)
        # The service's own exchange, before its consumer declares it.
        redeliver = await channel.declare_exchange(
            topology.redeliver_exchange(service),
            aio_pika.ExchangeType.DIRECT,
            durable=True,
        )
        tap = await channel.declare_queue(name, durable=True)
        await tap.bind(redeliver, routing_key=service)
    finally:
        await channel.close()
    return name


async def test_exhausted_retries_dead_letter_the_message_with_the_error(
    broker: Broker, start_consumer: StartConsumer, settings: BrokerSettings
) -> None:
    calls = Calls()
    broken = calls.handler(ValueError("row 7 is corrupt"))

    service = service_name()
    await start_consumer(service, [spec(broken)])
    message_id = await send(broker)

    topology = settings.topology()
    [dead] = await broker.drain(topology.dead_queue(service), expect=1)
    assert dead.message_id == message_id
    assert calls.attempts(message_id) == [0, 1, 2]  # first try + one per delay
    assert dead.headers[h.FAILURE_CODE] == "ValueError"
    assert "row 7 is corrupt" in str(dead.headers[h.FAILURE_REASON])
    assert dead.headers[h.FAILED_BY] == service
    assert dead.headers[h.ORIGINAL_EXCHANGE] == settings.topology().commands
    assert dead.headers[h.ORIGINAL_ROUTING_KEY] == ECHO
    assert dead.body == json.dumps({"text": "hello"}).encode()
    assert await broker.depth(topology.quarantine_queue(service)) == 0


async def test_reject_dead_letters_at_once(
    broker: Broker, start_consumer: StartConsumer, settings: BrokerSettings
) -> None:
    calls = Calls()
    refuse = calls.handler(Reject("plan 9 does not exist"))

    service = service_name()
    await start_consumer(service, [spec(refuse)])
    message_id = await send(broker)

    [dead] = await broker.drain(settings.topology().dead_queue(service), expect=1)
    assert dead.message_id == message_id
    assert dead.headers[h.FAILURE_CODE] == "Reject"
    assert dead.headers[h.FAILURE_REASON] == "plan 9 does not exist"
    assert calls.attempts(message_id) == [0]


async def test_a_handler_past_its_deadline_is_retried_and_the_consumer_goes_on(
    broker: Broker, start_consumer: StartConsumer, settings: BrokerSettings
) -> None:
    calls = Calls()
    hasty = settings.model_copy(update={"handler_timeout": 0.3})

    async def slow(context: Context, payload: Say) -> None:
        calls.record(context, payload)
        if payload.text == "slow":
            await asyncio.sleep(30)

    service = service_name()
    await start_consumer(service, [spec(slow)], settings_=hasty)
    slow_id = await send(broker, body=b'{"text": "slow"}')
    [dead] = await broker.drain(hasty.topology().dead_queue(service), expect=1)
    quick_id = await send(broker)
    await calls.wait_for(lambda: calls.count(quick_id) == 1)

    assert dead.message_id == slow_id
    assert dead.headers[h.FAILURE_CODE] == "TimeoutError"
    assert "deadline" in str(dead.headers[h.FAILURE_REASON])
    assert calls.attempts(slow_id) == [0, 1, 2]


async def test_a_timeout_inside_the_handler_is_reported_as_its_own(
    broker: Broker, start_consumer: StartConsumer, settings: BrokerSettings
) -> None:
    calls = Calls()
    service = service_name()
    await start_consumer(
        service, [spec(calls.handler(TimeoutError("the tariff API timed out")))]
    )
    message_id = await send(broker)

    [dead] = await broker.drain(settings.topology().dead_queue(service), expect=1)
    assert dead.message_id == message_id
    assert "the tariff API timed out" in str(dead.headers[h.FAILURE_REASON])
    assert "deadline" not in str(dead.headers[h.FAILURE_REASON])


def _deep_chain() -> Principal:
    return Principal(
        subject="alice",
        kind=PrincipalKind.USER,
        roles=frozenset(),
        origin=Origin.EVENT,
        internal=True,
        actors=tuple(f"hop{i}" for i in range(10)),
    )


def _identity(**changes: object) -> dict[str, object]:
    table: dict[str, object] = encode_principal(alice())
    table.update(changes)
    return {key: value for key, value in table.items() if value is not None}


# Each bad input, as keyword arguments of `send`, and the code it must end with.
MALFORMED: dict[str, tuple[dict[str, Any], str]] = {
    "invalid json": ({"body": b'{"text": '}, "SchemaError"),
    "wrong content type": ({"content_type": "text/plain"}, "SchemaError"),
    "no content type": ({"content_type": None}, "SchemaError"),
    "oversized body": ({"body": b'{"text": "' + b"x" * 300_000 + b'"}'}, "SchemaError"),
    "unknown message type": ({"type": "echo.unknown"}, "UnknownMessageType"),
    "missing type": ({"type": None}, "UnknownMessageType"),
    "internal flag as a string": (
        {"headers": _identity(**{h.INTERNAL: "true"})},
        "HeaderTypeError",
    ),
    "subject as bytes": (
        {"headers": _identity(**{h.SUBJECT: bytearray(b"alice")})},
        "HeaderTypeError",
    ),
    "version as a boolean": (
        {"headers": _identity(**{h.VERSION: True})},
        "HeaderTypeError",
    ),
    "no identity at all": ({"headers": {}}, "MissingHeader"),
    "identity without a subject": (
        {"headers": _identity(**{h.SUBJECT: None})},
        "MissingHeader",
    ),
    "unknown baton header": (
        {"headers": _identity(**{"baton-admin": True})},
        "UnknownHeader",
    ),
    "payload off schema": ({"body": b'{"text": 5}'}, "SchemaError"),
    "identity smuggled into the payload": (
        {"body": b'{"text": "hi", "user_id": "root"}'},
        "SchemaError",
    ),
    "actor chain too deep": (
        {"headers": encode_principal(_deep_chain())},
        "ChainTooDeep",
    ),
    "attempt as a string": (
        {"headers": _identity(**{h.ATTEMPT: "1"})},
        "HeaderTypeError",
    ),
    "attempt out of range": (
        {"headers": _identity(**{h.ATTEMPT: 1_000_000})},
        "HeaderValueError",
    ),
    "attempt one over its limit": (
        {"headers": _identity(**{h.ATTEMPT: 101})},
        "HeaderValueError",
    ),
    "attempt negative": (
        {"headers": _identity(**{h.ATTEMPT: -1})},
        "HeaderValueError",
    ),
    "attempt as a boolean": (
        {"headers": _identity(**{h.ATTEMPT: True})},
        "HeaderTypeError",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_input_is_quarantined_and_the_consumer_goes_on(
    case: str,
    broker: Broker,
    start_consumer: StartConsumer,
    settings: BrokerSettings,
) -> None:
    overrides, code = MALFORMED[case]
    calls = Calls()
    handle = calls.handler()

    service = service_name()
    consumer = await start_consumer(service, [spec(handle)])
    # The type is the routing key too; a bad `type` must still reach the queue.
    bad_id = await send(broker, routing_key=ECHO, **overrides)
    good_id = await send(broker)
    await calls.wait_for(lambda: calls.count(good_id) == 1)

    topology = settings.topology()
    [parked] = await broker.drain(topology.quarantine_queue(service), expect=1)
    await consumer.stop()
    assert parked.message_id == bad_id
    assert parked.headers[h.FAILURE_CODE] == code
    assert parked.headers[h.FAILED_BY] == service
    assert parked.headers[h.FAILURE_REASON]
    assert calls.count(bad_id) == 0
    assert await _settled(broker, topology, service) == NOTHING_LEFT


async def test_an_attempt_at_its_limit_is_still_handled(
    broker: Broker, start_consumer: StartConsumer
) -> None:
    calls = Calls()
    service = service_name()
    await start_consumer(service, [spec(calls.handler())])

    message_id = await send(broker, headers=_identity(**{h.ATTEMPT: 100}))

    await calls.wait_for(lambda: calls.count(message_id) == 1)
    assert calls.attempts(message_id) == [100]


async def test_retry_counts_a_publisher_can_forge_decide_nothing(
    broker: Broker, start_consumer: StartConsumer, settings: BrokerSettings
) -> None:
    calls = Calls()

    async def flaky(context: Context, payload: Say) -> None:
        calls.record(context, payload)
        if context.attempt == 0:
            raise RuntimeError("database blinked")

    service = service_name()
    topology = settings.topology()
    await start_consumer(service, [spec(flaky)])
    # Counts that would mean "retries exhausted" to a consumer that read them.
    forged = {
        "x-delivery-count": 99,
        "x-death": [
            {
                "count": 99,
                "reason": "expired",
                "queue": topology.retry_queue(service, topology.retry_delays[-1]),
                "exchange": topology.retry_exchange(service),
                "routing-keys": [service],
            }
        ],
    }
    message_id = await send(broker, headers=_identity(**forged))

    await calls.wait_for(lambda: calls.count(message_id) == 2)
    assert calls.attempts(message_id) == [0, 1]
    assert await _settled(broker, topology, service) == NOTHING_LEFT


async def test_a_request_with_forged_identity_is_quarantined_without_an_answer(
    broker: Broker, start_consumer: StartConsumer, settings: BrokerSettings
) -> None:
    # The requester may be the forger: it learns nothing of why. A request
    # refused for another reason is answered, which shows the answers arrive.
    topology = settings.topology()
    service = service_name()
    await start_consumer(service, [spec(Calls().handler())])
    # A reply queue of the deployment's naming, outliving the test's channel;
    # its reply exchange goes with it (auto-delete).
    answers = topology.reply_queue("tester", "0123456789ab")
    broker.extra_queues.add(answers)
    channel = await broker.connection.channel()
    try:
        replies = await channel.declare_exchange(
            topology.reply_exchange("tester"),
            aio_pika.ExchangeType.DIRECT,
            durable=True,
            auto_delete=True,
        )
        queue = await channel.declare_queue(answers, durable=True)
        await queue.bind(replies, routing_key=answers)
    finally:
        await channel.close()

    forged_id = await send(
        broker, headers=_identity(**{h.INTERNAL: "true"}), reply_to=answers
    )
    off_schema_id = await send(broker, body=b'{"text": 5}', reply_to=answers)

    parked = await broker.drain(topology.quarantine_queue(service), expect=2)
    assert {m.message_id for m in parked} == {forged_id, off_schema_id}
    # The answer to a refusal is confirmed before the copy to quarantine.
    [answer] = await broker.drain(answers, expect=1)
    assert answer.correlation_id == off_schema_id
    assert await broker.depth(answers) == 0


async def test_a_principal_without_the_required_role_is_quarantined(
    broker: Broker, start_consumer: StartConsumer, settings: BrokerSettings
) -> None:
    calls = Calls()
    handle = calls.handler()

    service = service_name()
    await start_consumer(service, [spec(handle, required_roles=frozenset({"admin"}))])
    denied_id = await send(broker, principal=alice("planner"))
    allowed_id = await send(broker, principal=alice("admin"))
    await calls.wait_for(lambda: calls.count(allowed_id) == 1)

    [parked] = await broker.drain(
        settings.topology().quarantine_queue(service), expect=1
    )
    assert parked.message_id == denied_id
    assert parked.headers[h.FAILURE_CODE] == "Forbidden"
    assert "admin" in str(parked.headers[h.FAILURE_REASON])
    assert calls.count(denied_id) == 0


async def test_a_service_principal_is_refused_where_only_users_are_accepted(
    broker: Broker, start_consumer: StartConsumer, settings: BrokerSettings
) -> None:
    calls = Calls()
    handle = calls.handler()

    service = service_name()
    await start_consumer(service, [spec(handle)])
    robot = Principal.service("scheduler", ["admin"], origin=Origin.SCHEDULE)
    robot_id = await send(broker, principal=robot)

    [parked] = await broker.drain(
        settings.topology().quarantine_queue(service), expect=1
    )
    assert parked.message_id == robot_id
    assert parked.headers[h.FAILURE_CODE] == "Forbidden"
    assert calls.seen == []


async def test_a_handler_raising_forbidden_is_quarantined_not_retried(
    broker: Broker, start_consumer: StartConsumer, settings: BrokerSettings
) -> None:
    calls = Calls()
    guarded = calls.handler(Forbidden("alice may not read bob's plan"))

    service = service_name()
    await start_consumer(service, [spec(guarded)])
    message_id = await send(broker)

    topology = settings.topology()
    [parked] = await broker.drain(topology.quarantine_queue(service), expect=1)
    assert parked.message_id == message_id
    assert parked.headers[h.FAILURE_CODE] == "Forbidden"
    assert calls.attempts(message_id) == [0]
    assert await broker.depth(topology.dead_queue(service)) == 0


async def test_prefetch_bounds_the_messages_held_at_once(
    broker: Broker, start_consumer: StartConsumer, settings: BrokerSettings
) -> None:
    calls = Calls()
    release = asyncio.Event()

    async def blocked(context: Context, payload: Say) -> None:
        calls.record(context, payload)
        await release.wait()

    service = service_name()
    consumer = await start_consumer(service, [spec(blocked)])
    sent = [await send(broker) for _ in range(settings.prefetch + 4)]
    await calls.wait_for(lambda: len(calls.seen) == settings.prefetch)

    work = settings.topology().service_queue(service)
    assert await wait_depth(broker, work, 4) == 4
    assert consumer.in_flight == settings.prefetch
    release.set()
    await calls.wait_for(lambda: len(calls.seen) == len(sent))
    assert sorted(message_id for message_id, _, _ in calls.seen) == sorted(sent)


async def test_a_start_the_broker_refuses_says_why_and_leaves_nothing_running(
    broker: Broker, settings: BrokerSettings
) -> None:
    # The queue exists with the default delivery limit; this consumer asks for
    # another one, which RabbitMQ refuses as inequivalent arguments.
    service = service_name()
    await unattended_queue(broker, service)
    other_limit = settings.model_copy(update={"delivery_limit": 3})
    consumer = Consumer(service, [spec(Calls().handler())], other_limit)

    with pytest.raises(BrokerUnavailable, match="PRECONDITION_FAILED"):
        await consumer.start(timeout=1)

    assert not consumer.link.is_ready
    assert consumer.link.reconnects >= 1
    await consumer.stop()


async def test_wrong_credentials_are_named_in_the_start_error(
    settings: BrokerSettings,
) -> None:
    # The tests' own broker (local or a container), with a password it refuses.
    parts = urlsplit(settings.amqp_url.get_secret_value())
    netloc = f"{parts.username}:not-the-password@{parts.hostname}:{parts.port or 5672}"
    wrong = settings.model_copy(
        update={"amqp_url": SecretStr(urlunsplit(parts._replace(netloc=netloc)))}
    )
    consumer = Consumer(service_name(), [spec(Calls().handler())], wrong)

    with pytest.raises(BrokerUnavailable, match="ACCESS_REFUSED") as caught:
        await consumer.start(timeout=1)

    assert "not-the-password" not in str(caught.value)
