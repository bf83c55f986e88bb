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

The service, dead and quarantine queues are quorum queues when the broker has
them (RabbitMQ 3.8 on). Only a quorum queue has a delivery limit; on classic
queues (``BATON_QUORUM_QUEUES``) nothing bounds a message that kills the
consumer before it can be settled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue

from messaging.errors import BrokerTooOld

logger = logging.getLogger(__name__)

CLASSIC_FALLBACK: Final = (
    "RabbitMQ %s has no quorum queues (3.8 or newer has them): declaring classic "
    "queues for %s, as BATON_QUORUM_QUEUES=auto allows. Lost with them: the "
    "broker's delivery limit (BATON_DELIVERY_LIMIT). A failing handler is still "
    "bounded by Baton's own attempt count (BATON_RETRY_DELAYS), and input Baton "
    "can read but refuses still goes to quarantine. But a message that kills the "
    "consumer's connection before it is settled (a header table the client "
    "cannot decode) or its process is now redelivered without end and holds up "
    "the queue behind it, until an operator removes it. Upgrade the broker, or "
    "set BATON_QUORUM_QUEUES=false to choose classic queues knowingly."
)


class QuorumQueues(StrEnum):
    """Whether a service's queues are quorum queues (``BATON_QUORUM_QUEUES``)."""

    AUTO = "auto"  # quorum when the broker has them, else classic with a warning
    TRUE = "true"  # quorum, and refuse to start on a broker without them
    FALSE = "false"  # classic: no delivery limit


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
    quorum: QuorumQueues = QuorumQueues.AUTO

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
        quorum = await self._quorum_on(channel, service)
        await self.declare_exchanges(channel)
        queue = await channel.declare_queue(
            self.service_queue(service),
            durable=True,
            arguments=self._work_args(service, quorum),
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
                name, durable=True, arguments=_parking_args(quorum)
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

    async def _quorum_on(self, channel: AbstractChannel, service: str) -> bool:
        """Whether to declare quorum queues on the broker behind `channel`."""
        if self.quorum == QuorumQueues.FALSE:
            return False
        underlay = await channel.get_underlay_channel()
        server = underlay.connection.server_properties
        if supports_quorum(server):
            return True
        version = _version(server) or "of unknown version"
        if self.quorum == QuorumQueues.TRUE:
            raise BrokerTooOld(
                f"RabbitMQ {version} has no quorum queues (they need 3.8 or newer) "
                "and BATON_QUORUM_QUEUES is true: upgrade the broker, or set "
                "BATON_QUORUM_QUEUES=auto or false to run on classic queues, "
                "which have no delivery limit"
            )
        logger.warning(CLASSIC_FALLBACK, version, service)
        return False

    def _work_args(self, service: str, quorum: bool) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-dead-letter-exchange": self.quarantine,
            "x-dead-letter-routing-key": service,
        }
        if quorum:
            args["x-queue-type"] = "quorum"
            args["x-delivery-limit"] = self.delivery_limit
        return args


def _parking_args(quorum: bool) -> dict[str, Any]:
    return {"x-queue-type": "quorum"} if quorum else {}


def supports_quorum(server_properties: Mapping[str, Any]) -> bool:
    """Quorum queues exist from RabbitMQ 3.8 on."""
    try:
        major, minor = (
            int(part) for part in _version(server_properties).split(".")[:2]
        )
    except ValueError:
        return False
    return (major, minor) >= (3, 8)


def _version(server_properties: Mapping[str, Any]) -> str:
    version = server_properties.get("version", b"")
    if isinstance(version, bytes | bytearray):
        return version.decode("ascii", "replace")
    return str(version)


def _millis(seconds: float) -> int:
    return max(1, round(seconds * 1000))
