"""What every benchmarked pipeline carries and does: the same command, the same handler.

All pipelines publish the same JSON payload (a ``plan.create`` command) as
persistent messages with publisher confirms, to a durable topic exchange bound to
one quorum queue, and consume it with the same prefetch, acking after the handler.
Only the library in between changes.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aio_pika

from contracts.plans import PlanCreate
from messaging.handlers import Context, HandlerSpec
from messaging.identity import Principal
from messaging.settings import BrokerSettings
from messaging.topology import Binding, Route

MESSAGE_TYPE = "plan.create"
SERVICE = "bench-core"
PAYLOAD = PlanCreate(goal="run a marathon in under four hours", horizon_days=120)
BODY = PAYLOAD.model_dump_json().encode()


def run_prefix() -> str:
    """A random base for every name one benchmark run declares."""
    return f"bench{secrets.token_hex(4)}"


def bench_prefix(base: str) -> str:
    """A fresh prefix under `base`, so no measurement meets another's queues."""
    return f"{base}-{secrets.token_hex(3)}"


def edge_principal() -> Principal:
    """The user every benchmark command acts for, as the edge would build it."""
    return Principal.user("user-4711", ["planner", "reader"], entered_by="edge")


@dataclass(frozen=True)
class RunSpec:
    """One pipeline run: where, how many messages, how they are sent and taken."""

    amqp_url: str
    prefix: str
    messages: int
    window: int
    prefetch: int


class Tally:
    """Counts handled messages and says when the expected number arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.done = asyncio.Event()
        if expected == 0:
            self.done.set()

    def handled(self) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.done.set()


def counting_handler(tally: Tally) -> HandlerSpec[PlanCreate]:
    """Baton's handler for the benchmark command: it needs the planner role."""

    async def handle(_context: Context, _payload: PlanCreate) -> None:
        tally.handled()

    return HandlerSpec(
        MESSAGE_TYPE, PlanCreate, handle, required_roles=frozenset({"planner"})
    )


async def publish_in_windows(
    send: Callable[[int], Awaitable[object]], messages: int, window: int
) -> None:
    """Send `messages` with at most `window` unconfirmed at once, as every variant does.

    Each window is gathered: the next starts once every confirm of the last one
    arrived, the way a careful producer bounds what it could have to resend.
    """
    for start in range(0, messages, window):
        stop = min(start + window, messages)
        await asyncio.gather(*(send(i) for i in range(start, stop)))


async def declare_service(amqp_url: str, settings: BrokerSettings) -> None:
    """Declare the benchmark service's queues, bound to the benchmark command."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        binding = Binding(Route.COMMAND, MESSAGE_TYPE)
        await settings.topology().declare_service(channel, SERVICE, [binding])
    finally:
        await connection.close()


async def delete_names(amqp_url: str, queues: list[str], exchanges: list[str]) -> None:
    """Delete a run's queues and exchanges; missing ones are fine."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()
