"""Worker test fixtures: running services, and a sender that acts as the edge."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from aio_pika.abc import AbstractConnection
from pydantic import BaseModel

from contracts import Contract
from messaging.connection import Link
from messaging.identity import Principal, decode_principal
from messaging.publisher import Publisher
from messaging.rpc import Requester
from messaging.settings import BrokerSettings
from messaging.topology import Topology
from tests.conftest import Broker
from workers.service import Service
from workers.worker import Worker

R = TypeVar("R", bound=BaseModel)

StartWorker = Callable[[Service], Awaitable[Worker]]


@pytest_asyncio.fixture
async def run(settings: BrokerSettings, broker: Broker) -> AsyncIterator[StartWorker]:
    """Start a service's worker; every worker started is stopped at the end."""
    started: list[Worker] = []

    async def start(service: Service) -> Worker:
        broker.track(service.name)
        worker = Worker(service, settings)
        await worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in reversed(started):
        await worker.stop()


class Sender:
    """Publishes commands and requests as an entry point would, for any principal."""

    def __init__(self, link: Link, topology: Topology) -> None:
        self.link = link
        self.topology = topology
        self.publisher = Publisher(link)
        self.requester = Requester(link, self.publisher, topology, owner="edge")

    async def command(
        self,
        contract: Contract,
        payload: BaseModel,
        principal: Principal,
        *,
        message_id: str | None = None,
    ) -> str:
        return await self.publisher.publish(
            self.topology.exchange_for(contract.route),
            contract.name,
            message_type=contract.name,
            body=payload,
            principal=principal,
            message_id=message_id,
        )

    async def request(
        self,
        contract: Contract,
        payload: BaseModel,
        principal: Principal,
        reply_model: type[R],
        *,
        timeout: float = 5.0,
    ) -> R:
        return await self.requester.request(
            contract.name,
            payload,
            principal=principal,
            reply_model=reply_model,
            timeout=timeout,
        )

    async def close(self) -> None:
        await self.requester.close()
        await self.publisher.close()
        await self.link.stop()


@pytest_asyncio.fixture
async def sender(settings: BrokerSettings, broker: Broker) -> AsyncIterator[Sender]:
    topology = settings.topology()

    async def declare(connection: AbstractConnection) -> None:
        channel = await connection.channel()
        await topology.declare_exchanges(channel)
        await channel.close()

    link = Link(settings.amqp_url, name="test-sender", on_connect=declare)
    await link.start()
    await link.wait_ready(10)
    probe = Sender(link, topology)
    yield probe
    await probe.close()


async def eventually(
    check: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll `check` until it returns something truthy, failing after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


class Tap:
    """A queue of the test's own, bound where services publish: what went by."""

    def __init__(self, broker: Broker, queue: str) -> None:
        self.broker = broker
        self.queue = queue

    @classmethod
    async def on(cls, broker: Broker, exchange: str, routing_key: str) -> Tap:
        name = f"{broker.topology.prefix}.tap.{secrets.token_hex(4)}"
        broker.extra_queues.add(name)
        channel = await broker.connection.channel()
        try:
            queue = await channel.declare_queue(name)
            await queue.bind(exchange, routing_key)
        finally:
            await channel.close()
        return cls(broker, name)

    async def principals(self, expect: int = 1) -> list[Principal]:
        """The principals of the next `expect` messages, as a receiver decodes them."""
        taken = await self.broker.drain(self.queue, expect=expect)
        assert len(taken) == expect, f"{len(taken)} messages went by, not {expect}"
        return [decode_principal(message.headers) for message in taken]


async def settled(
    worker: Worker, broker: Broker, *, quiet: float = 1.0, timeout: float = 20.0
) -> None:
    """Wait until `worker` handles nothing and its queues stay empty for `quiet` s.

    `quiet` outlasts the tests' whole retry path (0.1 s, then 0.2 s), so a copy
    on its way from a retry queue back to the service queue shows up in time.
    """
    topology = broker.topology
    queues = [
        topology.service_queue(worker.name),
        *(topology.retry_queue(worker.name, d) for d in topology.retry_delays),
    ]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    calm_since: float | None = None
    while True:
        depths = [await broker.depth(queue) for queue in queues]
        now = loop.time()
        if worker.consumer.in_flight or any(depths):
            calm_since = None
        elif calm_since is None:
            calm_since = now
        elif now - calm_since >= quiet:
            return
        if now > deadline:
            pytest.fail(f"{worker.name} did not settle within {timeout}s: {depths}")
        await asyncio.sleep(0.05)


def user(subject: str = "alice", *roles: str) -> Principal:
    """A user whose work entered through the edge."""
    return Principal.user(subject, roles, entered_by="edge")
