"""Fixtures for the messaging tests: a running consumer, and messages to feed it.

Messages are published with the raw probe of ``tests/conftest.py`` so that a test
can send exactly the bytes, properties and headers an attacker or a broken
client would, and then look at the queues to see where each one ended.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest_asyncio
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from pydantic import BaseModel, ConfigDict

from messaging import headers as h
from messaging.consumer import Consumer
from messaging.handlers import Context, HandlerSpec
from messaging.identity import Principal, encode_principal
from messaging.settings import BrokerSettings
from messaging.topology import Binding, Route
from tests.conftest import Broker

ECHO = "echo.say"


class Say(BaseModel):
    """The payload of the test's command."""

    model_config = ConfigDict(extra="forbid")

    text: str


class Said(BaseModel):
    """The reply to a ``Say`` request."""

    text: str
    by: str


def alice(*roles: str) -> Principal:
    return Principal.user("alice", roles, entered_by="edge")


Handler = Callable[[Context, Say], Awaitable[BaseModel | None]]


@dataclass
class Calls:
    """What a handler saw: one entry per call, in order."""

    seen: list[tuple[str, int, Say]] = field(default_factory=list)
    principals: list[Principal] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, context: Context, payload: Say) -> None:
        self.seen.append((context.message_id, context.attempt, payload))
        self.principals.append(context.principal)
        self.changed.set()

    def handler(self, error: Exception | None = None) -> Handler:
        """A handler that records each call, then raises `error` when given."""

        async def handle(context: Context, payload: Say) -> None:
            self.record(context, payload)
            if error is not None:
                raise error

        return handle

    def count(self, message_id: str) -> int:
        return sum(1 for seen_id, _, _ in self.seen if seen_id == message_id)

    def attempts(self, message_id: str) -> list[int]:
        return [attempt for seen_id, attempt, _ in self.seen if seen_id == message_id]

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10.0
    ) -> None:
        """Wait until `predicate` holds, failing the test after `timeout`."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def spec(func: Handler, message_type: str = ECHO, **options: Any) -> HandlerSpec[Say]:
    return HandlerSpec(message_type=message_type, model=Say, func=func, **options)


StartConsumer = Callable[..., Awaitable[Consumer]]


@pytest_asyncio.fixture
async def start_consumer(
    settings: BrokerSettings, broker: Broker
) -> AsyncIterator[StartConsumer]:
    """Start a consumer for a service; every one started is stopped at the end."""
    started: list[Consumer] = []

    async def start(
        service: str,
        handlers: Sequence[HandlerSpec[Any]],
        *,
        settings_: BrokerSettings | None = None,
    ) -> Consumer:
        broker.track(service)
        consumer = Consumer(service, handlers, settings_ or settings)
        started.append(consumer)
        await consumer.start()
        return consumer

    yield start
    for consumer in started:
        await consumer.stop()


def service_name() -> str:
    """A service name no other test (or parallel helper) uses."""
    return f"svc-{uuid.uuid4().hex[:8]}"


async def send(
    broker: Broker,
    *,
    body: bytes | None = None,
    principal: Principal | None = None,
    headers: dict[str, Any] | None = None,
    message_type: str = ECHO,
    routing_key: str | None = None,
    exchange: str | None = None,
    **properties: Any,
) -> str:
    """Publish a command the way a well-behaved Baton publisher would, unless told.

    `headers`, when given, replace the identity headers entirely; `properties`
    override any AMQP property. Returns the message id.
    """
    message_id = properties.pop("message_id", uuid.uuid4().hex)
    if headers is None:
        headers = encode_principal(principal or alice())
    defaults: dict[str, Any] = {
        "content_type": h.CONTENT_TYPE,
        "type": message_type,
        "message_id": message_id,
        "correlation_id": message_id,
        "timestamp": datetime.now(UTC),
        "delivery_mode": 2,
    }
    defaults.update(properties)
    await broker.publish_raw(
        exchange or broker.topology.commands,
        routing_key or message_type,
        json.dumps({"text": "hello"}).encode() if body is None else body,
        headers=headers,
        **defaults,
    )
    return str(message_id)


async def unattended_queue(broker: Broker, service: str) -> AbstractQueue:
    """Declare a service's queues and bindings with nobody consuming them."""
    channel = await broker.connection.channel()
    try:
        return await broker.topology.declare_service(
            channel, broker.track(service), [Binding(Route.COMMAND, ECHO)]
        )
    finally:
        await channel.close()


def last_death(message: AbstractIncomingMessage) -> tuple[object, object]:
    """The queue the broker last dead-lettered `message` from, and why (x-death)."""
    deaths = message.headers["x-death"]
    assert isinstance(deaths, list), deaths
    latest = deaths[0]
    assert isinstance(latest, dict), latest
    return latest["queue"], latest["reason"]


async def wait_depth(
    broker: Broker, queue: str, expected: int, timeout: float = 10.0
) -> int:
    """Poll until `queue` holds `expected` ready messages; returns the last depth."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    depth = await broker.depth(queue)
    while depth != expected and loop.time() < deadline:
        await asyncio.sleep(0.05)
        depth = await broker.depth(queue)
    return depth
