"""Shared fixtures: a real RabbitMQ, and names no other test uses.

The broker is the one at ``AMQP_URL`` when that is set (this machine, CI), with
its management API on port 15672 of the same host; otherwise a RabbitMQ
container, management plugin included, is started with testcontainers for the
session. Tests reach both through these fixtures, never through ``rabbitmqctl``,
which would talk to this machine's node rather than the container's.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aio_pika
import pytest
import pytest_asyncio

from messaging.settings import BrokerSettings
from messaging.topology import Topology
from tests.management import ManagementApi

IMAGE = "rabbitmq:3.13-management"
AMQP_PORT = 5672
MANAGEMENT_PORT = 15672


@dataclass(frozen=True)
class BrokerUnderTest:
    """Where the tests' broker answers: AMQP, and the management API beside it."""

    amqp_url: str
    management_url: str

    @property
    def vhost(self) -> str:
        return unquote(urlsplit(self.amqp_url).path[1:]) or "/"


@pytest.fixture(scope="session")
def broker_under_test() -> Iterator[BrokerUnderTest]:
    url = os.environ.get("AMQP_URL")
    if url:
        parts = urlsplit(url)
        user, password = parts.username or "guest", parts.password or "guest"
        host = f"{parts.hostname or 'localhost'}:{MANAGEMENT_PORT}"
        yield BrokerUnderTest(url, f"http://{user}:{password}@{host}/")
        return
    yield from _container_broker()


def _container_broker() -> Iterator[BrokerUnderTest]:
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine here"
        pytest.exit(
            f"AMQP_URL is not set and no Docker engine answers ({exc}); set "
            "AMQP_URL=amqp://guest:guest@localhost:5672/ to use a running broker",
            returncode=2,
        )
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import (
        CompositeWaitStrategy,
        HttpWaitStrategy,
        LogMessageWaitStrategy,
    )

    # The official image lets guest in from anywhere, the management API too.
    ready = CompositeWaitStrategy(
        LogMessageWaitStrategy("Server startup complete"),
        HttpWaitStrategy(MANAGEMENT_PORT, "/api/overview").with_basic_credentials(
            "guest", "guest"
        ),
    ).with_startup_timeout(120)
    container = (
        DockerContainer(IMAGE)
        .with_exposed_ports(AMQP_PORT, MANAGEMENT_PORT)
        .waiting_for(ready)
    )
    with container:
        host = container.get_container_host_ip()
        amqp = container.get_exposed_port(AMQP_PORT)
        management = container.get_exposed_port(MANAGEMENT_PORT)
        yield BrokerUnderTest(
            f"amqp://guest:guest@{host}:{amqp}/",
            f"http://guest:guest@{host}:{management}/",
        )


@pytest.fixture(scope="session")
def amqp_url(broker_under_test: BrokerUnderTest) -> str:
    return broker_under_test.amqp_url


@pytest.fixture(scope="session")
def management_url(broker_under_test: BrokerUnderTest) -> str:
    """The management API of the tests' broker, with the same administrator."""
    return broker_under_test.management_url


@pytest_asyncio.fixture
async def management_api(
    broker_under_test: BrokerUnderTest,
) -> AsyncIterator[ManagementApi]:
    api = ManagementApi(broker_under_test.management_url, broker_under_test.vhost)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
def prefix() -> str:
    """A deployment prefix of its own, so tests never see each other's messages."""
    return f"t{secrets.token_hex(5)}"


@pytest.fixture
def settings(amqp_url: str, prefix: str) -> BrokerSettings:
    return BrokerSettings(
        amqp_url=amqp_url,
        prefix=prefix,
        retry_delays=(0.1, 0.2),
        handler_timeout=2.0,
        stop_timeout=5.0,
        prefetch=8,
    )


@pytest_asyncio.fixture
async def broker(amqp_url: str, settings: BrokerSettings) -> AsyncIterator[Broker]:
    """A plain aio-pika connection for the test's own publishing and inspection."""
    connection = await aio_pika.connect(amqp_url)
    probe = Broker(connection, settings.topology())
    try:
        yield probe
    finally:
        await probe.cleanup()
        await connection.close()


class Broker:
    """What a test sees of the broker: raw publishing, queue contents, clean-up."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, topology: Topology):
        self.connection = connection
        self.topology = topology
        self.services: set[str] = set()
        self.extra_queues: set[str] = set()

    def track(self, service: str) -> str:
        self.services.add(service)
        return service

    async def publish_raw(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        confirm: bool = True,
        **properties: object,
    ) -> None:
        channel = await self.connection.channel(publisher_confirms=confirm)
        try:
            target = await channel.get_exchange(exchange, ensure=False)
            message = aio_pika.Message(body, **properties)  # type: ignore[arg-type]
            await target.publish(message, routing_key, mandatory=False)
        finally:
            await channel.close()

    async def drain(
        self, queue: str, *, expect: int, timeout: float = 10.0
    ) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Wait until `expect` messages sit in `queue`, take and ack them."""

        channel = await self.connection.channel()
        taken: list[aio_pika.abc.AbstractIncomingMessage] = []
        try:
            q = await channel.get_queue(queue, ensure=True)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while len(taken) < expect and loop.time() < deadline:
                message = await q.get(fail=False)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                await message.ack()
                taken.append(message)
        finally:
            await channel.close()
        return taken

    async def depth(self, queue: str) -> int:
        channel = await self.connection.channel()
        try:
            q = await channel.declare_queue(queue, passive=True)
            return q.declaration_result.message_count or 0
        finally:
            await channel.close()

    async def cleanup(self) -> None:
        channel = await self.connection.channel()
        try:
            for service in self.services:
                for name in self.topology.service_queues(service):
                    await channel.queue_delete(name)
                for name in self.topology.service_exchanges(service):
                    await channel.exchange_delete(name)
            for name in self.extra_queues:
                await channel.queue_delete(name)
            for name in self.topology.exchanges():
                await channel.exchange_delete(name)
        finally:
            await channel.close()
