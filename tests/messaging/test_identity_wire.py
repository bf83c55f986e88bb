"""The identity headers through a real RabbitMQ, published with plain aio-pika.

What a consumer decodes is what the broker delivered, not what we meant to
send: these tests check that valid principals survive the trip and that the
broker does not "fix" hostile types (a string "false" stays a string).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aio_pika
import pytest
import pytest_asyncio

from messaging import headers as h
from messaging.errors import HeaderTypeError, IdentityError
from messaging.identity import Origin, Principal, decode_principal, encode_principal
from tests.conftest import Broker
from tests.messaging.raw_amqp import RawPublisher, properties
from tests.vectors import format as vectors

pytestmark = [pytest.mark.broker, pytest.mark.asyncio]


@pytest_asyncio.fixture
async def queue(broker: Broker) -> AsyncIterator[str]:
    """A queue of its own on the default exchange, deleted by the broker fixture."""
    name = f"identity-wire-{secrets.token_hex(5)}"
    broker.extra_queues.add(name)
    channel = await broker.connection.channel()
    try:
        await channel.declare_queue(name, auto_delete=False)
    finally:
        await channel.close()
    yield name


async def publish(broker: Broker, queue: str, message_id: str, table: Any) -> None:
    channel = await broker.connection.channel(publisher_confirms=True)
    try:
        message = aio_pika.Message(b"{}", headers=table, message_id=message_id)
        await channel.default_exchange.publish(message, routing_key=queue)
    finally:
        await channel.close()


async def round_trip(
    broker: Broker, queue: str, tables: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Publish each table under its id; what the consumer received, by id."""
    for message_id, table in tables.items():
        await publish(broker, queue, message_id, table)
    received = await broker.drain(queue, expect=len(tables))
    return {message.message_id or "": message.headers for message in received}


def shape(value: Any) -> Any:
    """Every part of a header value with its exact type, so that True and 1 differ.

    Floats keep only their type: Python publishes them as AMQP single precision.
    """
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    if type(value) is float:
        return "float"
    return (type(value).__name__, value)


class PairTable(dict[str, Any]):
    """A header table that makes pamqp encode a repeated key, as other clients can."""

    def __init__(self, pairs: Sequence[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = list(pairs)

    def items(self) -> Any:
        return list(self.pairs)


PRINCIPALS = {
    "user": Principal.user("alice", ["reader", "planner"], entered_by="edge"),
    "tenant": Principal.user("bob", entered_by="edge", tenant="acme"),
    "hops": Principal.user("carol", ["reader"], entered_by="edge")
    .handed_to("core", Origin.EVENT)
    .handed_to("users", Origin.REQUEST),
    "job": Principal.user("dave", entered_by="scheduler", origin=Origin.SCHEDULE),
    "service": Principal.service("scheduler", ["jobs"], origin=Origin.SCHEDULE),
}


async def test_principals_decode_unchanged_after_the_broker(broker, queue):
    tables = {name: encode_principal(p) for name, p in PRINCIPALS.items()}

    received = await round_trip(broker, queue, tables)

    assert received.keys() == PRINCIPALS.keys()
    for name, principal in PRINCIPALS.items():
        assert decode_principal(received[name]) == principal


def publishable(vector: vectors.Vector) -> bool:
    """Whether aio-pika can send the vector: no repeated key, no non-UTF-8 text."""
    table = vectors.decode_dict(vectors.encode_table(vector.headers))
    return not vector.has_duplicate_keys() and not _holds_bytes(table)


def _holds_bytes(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_bytes(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_bytes(item) for item in value)
    return type(value) is bytes


async def test_every_publishable_vector_decodes_the_same_after_the_broker(
    broker, queue
):
    chosen = [vector for vector in vectors.load("identity") if publishable(vector)]
    sent = {
        vector.id: vectors.decode_dict(vectors.encode_table(vector.headers))
        for vector in chosen
    }

    received = await round_trip(broker, queue, sent)

    assert len(chosen) > 100
    assert received.keys() == sent.keys()
    for vector in chosen:
        table = received[vector.id]
        assert shape(table) == shape(sent[vector.id]), vector.id
        if vector.principal is not None:
            decoded = vectors.principal_as_json(decode_principal(table))
            assert decoded == vector.principal, vector.id
            continue
        assert vector.error is not None
        with pytest.raises(IdentityError) as caught:
            decode_principal(table)
        assert caught.value.code == vector.error["code"], vector.id
        assert caught.value.header == vector.error["header"], vector.id


async def test_strings_and_bytes_for_booleans_arrive_as_strings_and_bytes(
    broker, queue
):
    alice = encode_principal(PRINCIPALS["user"])
    tables = {
        "string-false": {**alice, h.INTERNAL: "false"},
        "bytes-true": {**alice, h.INTERNAL: bytearray(b"true")},
        "int-one": {**alice, h.INTERNAL: 1},
        "bool-version": {**alice, h.VERSION: True},
    }

    received = await round_trip(broker, queue, tables)

    assert type(received["string-false"][h.INTERNAL]) is str
    assert type(received["bytes-true"][h.INTERNAL]) is bytearray
    assert type(received["int-one"][h.INTERNAL]) is int
    assert type(received["bool-version"][h.VERSION]) is bool
    for name, table in received.items():
        with pytest.raises(IdentityError) as caught:
            decode_principal(table)
        assert caught.value.code == "HeaderTypeError", name


async def test_a_repeated_key_routes_on_its_first_copy_and_reads_as_its_last(
    broker, queue
):
    exchange_name = f"identity-wire-headers-{secrets.token_hex(5)}"
    channel = await broker.connection.channel(publisher_confirms=True)
    try:
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.HEADERS, auto_delete=False
        )
        target = await channel.get_queue(queue)
        await target.bind(exchange, arguments={"x-match": "all", h.SUBJECT: "alice"})
        # pamqp writes the pairs sorted, so "alice" goes first, "mallory" last.
        pairs = [*encode_principal(PRINCIPALS["user"]).items(), (h.SUBJECT, "mallory")]
        message = aio_pika.Message(b"{}", headers=PairTable(pairs), message_id="dup")
        await exchange.publish(message, routing_key="")

        delivered = await broker.drain(queue, expect=1)
    finally:
        await channel.exchange_delete(exchange_name)
        await channel.close()

    assert len(delivered) == 1, "the binding did not match the first copy"
    received = delivered[0]
    # The broker matched the binding on the first copy (alice), while pamqp kept
    # the last (mallory): routing and the worker saw two users in one message.
    # A dict consumer cannot tell, hence the rule that forbids the repeat.
    assert received.headers[h.SUBJECT] == "mallory"
    assert decode_principal(received.headers).subject == "mallory"


async def test_text_that_is_not_utf8_arrives_as_bytes_refused_only_in_identity(
    amqp_url, broker, queue
):
    # aio-pika cannot publish such a value; other clients can, and RabbitMQ
    # forwards it. pamqp then hands the consumer bytes instead of a str.
    raw = await RawPublisher.connect(amqp_url)
    try:
        for header in ("traceparent", h.SUBJECT):
            headers = {**encode_principal(PRINCIPALS["user"]), header: "zzzz"}
            await raw.publish(
                "",
                queue,
                b"{}",
                properties(header, "echo.say", **headers),
                patch=(b"\x00\x00\x00\x04zzzz", b"\x00\x00\x00\x04zz\xff\xfe"),
            )
    finally:
        await raw.close()

    received = {m.message_id: m.headers for m in await broker.drain(queue, expect=2)}

    foreign, identity = received["traceparent"], received[h.SUBJECT]
    assert type(foreign["traceparent"]) is bytes
    assert decode_principal(foreign) == PRINCIPALS["user"]
    assert type(identity[h.SUBJECT]) is bytes
    with pytest.raises(HeaderTypeError) as caught:
        decode_principal(identity)
    assert caught.value.header == h.SUBJECT
    assert "not UTF-8" in str(caught.value)
