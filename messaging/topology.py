"""Exchanges, queues and bindings: every name Baton declares is derived here.

    commands (topic) --type--> <prefix>.<service>            quorum, delivery limit
    events   (topic) --type--> <prefix>.<service>              |  broker dead-letter
    redeliver (direct) --<service>--> <prefix>.<service>       v  (poison frames)
    retry    (direct) --queue name--> <prefix>.<service>.retry.<ms>ms --TTL--> redeliver
    dead     (direct) --<service>--> <prefix>.<service>.dead
    quarantine (direct) --<service>--> <prefix>.<service>.quarantine
    replies  (direct) --reply queue name--> exclusive reply queue of a requester

A handler failure is republished to the retry queue for its attempt, whose TTL
sends it back through ``redeliver`` to the service queue alone (not to every
subscriber of the type). When retries run out the worker publishes the message to
``dead`` with the error; a trust or schema failure goes to ``quarantine`` with the
reason. The service queue itself dead-letters to ``quarantine`` too: that is
where a message ends that kept killing the consumer's connection until the
queue's delivery limit gave up on it, and where a request expires whose caller
stopped waiting (``x-death`` says ``delivery_limit`` or ``expired``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue

logger = logging.getLogger(__name__)


class Route(StrEnum):
    """Which kind of message a service subscribes to."""

    COMMAND = "command"
    EVENT = "event"


@dataclass(frozen=True, slots=True)
class Binding:
    """A service's subscription: messages of `message_type` arriving as `route`."""

    route: Route
    message_type: str


@dataclass(frozen=True)
class Topology:
    """The broker layout for one deployment, all names under one prefix."""

    prefix: str = "baton"
    retry_delays: tuple[float, ...] = (1.0, 5.0, 30.0)
    delivery_limit: int = 10
    quorum: bool = True

    @property
    def commands(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def replies(self) -> str:
        return f"{self.prefix}.replies"

    @property
    def retry(self) -> str:
        return f"{self.prefix}.retry"

    @property
    def redeliver(self) -> str:
        return f"{self.prefix}.redeliver"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def quarantine(self) -> str:
        return f"{self.prefix}.quarantine"

    def exchange_for(self, route: Route) -> str:
        return self.commands if route is Route.COMMAND else self.events

    def exchanges(self) -> dict[str, aio_pika.ExchangeType]:
        """Every exchange of the deployment, with its type."""
        topic, direct = aio_pika.ExchangeType.TOPIC, aio_pika.ExchangeType.DIRECT
        return {
            self.commands: topic,
            self.events: topic,
            self.replies: direct,
            self.retry: direct,
            self.redeliver: direct,
            self.dead: direct,
            self.quarantine: direct,
        }

    def service_queue(self, service: str) -> str:
        return f"{self.prefix}.{service}"

    def retry_queue(self, service: str, delay: float) -> str:
        return f"{self.prefix}.{service}.retry.{_millis(delay)}ms"

    def dead_queue(self, service: str) -> str:
        return f"{self.prefix}.{service}.dead"

    def quarantine_queue(self, service: str) -> str:
        return f"{self.prefix}.{service}.quarantine"

    def reply_queue(self, owner: str, instance: str) -> str:
        return f"{self.prefix}.{owner}.replies.{instance}"

    def retry_delay(self, attempt: int) -> float | None:
        """The delay before retry number `attempt` (1-based), None when exhausted."""
        if 1 <= attempt <= len(self.retry_delays):
            return self.retry_delays[attempt - 1]
        return None

    def service_queues(self, service: str) -> list[str]:
        """Every queue a service owns, for clean-up and for broker permissions."""
        retry_queues = [self.retry_queue(service, d) for d in self.retry_delays]
        return [
            self.service_queue(service),
            *retry_queues,
            self.dead_queue(service),
            self.quarantine_queue(service),
        ]

    async def declare_exchanges(self, channel: AbstractChannel) -> None:
        """Declare every exchange; declaring is idempotent on the broker."""
        for name, kind in self.exchanges().items():
            await channel.declare_exchange(name, kind, durable=True)

    async def declare_service(
        self, channel: AbstractChannel, service: str, bindings: Iterable[Binding]
    ) -> AbstractQueue:
        """Declare a service's queues and bindings; returns its work queue."""
        await self.declare_exchanges(channel)
        queue = await channel.declare_queue(
            self.service_queue(service),
            durable=True,
            arguments=self._work_args(service),
        )
        await queue.bind(self.redeliver, routing_key=service)
        for binding in bindings:
            await queue.bind(
                self.exchange_for(binding.route), routing_key=binding.message_type
            )

        for delay in self.retry_delays:
            await self._declare_retry_queue(channel, service, delay)
        for exchange, name in (
            (self.dead, self.dead_queue(service)),
            (self.quarantine, self.quarantine_queue(service)),
        ):
            parked = await channel.declare_queue(
                name, durable=True, arguments=self._parking_args()
            )
            await parked.bind(exchange, routing_key=service)

        logger.debug("declared queues of service %s", service)
        return queue

    async def _declare_retry_queue(
        self, channel: AbstractChannel, service: str, delay: float
    ) -> None:
        name = self.retry_queue(service, delay)
        queue = await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-message-ttl": _millis(delay),
                "x-dead-letter-exchange": self.redeliver,
                "x-dead-letter-routing-key": service,
            },
        )
        await queue.bind(self.retry, routing_key=name)

    def _work_args(self, service: str) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-dead-letter-exchange": self.quarantine,
            "x-dead-letter-routing-key": service,
        }
        if self.quorum:
            args["x-queue-type"] = "quorum"
            args["x-delivery-limit"] = self.delivery_limit
        return args

    def _parking_args(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"} if self.quorum else {}


def supports_quorum(server_properties: Mapping[str, Any]) -> bool:
    """Quorum queues exist from RabbitMQ 3.8 on."""
    version = server_properties.get("version", b"")
    if isinstance(version, bytes):
        version = version.decode("ascii", "replace")
    try:
        major, minor = (int(part) for part in str(version).split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (3, 8)


def _millis(seconds: float) -> int:
    return max(1, round(seconds * 1000))
