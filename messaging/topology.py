"""Exchanges, queues and bindings: every name Baton declares is derived here.

Two topic exchanges are shared by the deployment; everything else belongs to one
service and is named under ``<prefix>.<service>``:

    commands (topic) --type--> <prefix>.<service>            quorum, delivery limit
    events   (topic) --type--> <prefix>.<service>              |  broker dead-letter
                                                               v  (poison frames)
    (every other exchange is direct and named under its service or owner)
    <p>.<service>.redeliver  --------------> <p>.<service>
    <p>.<service>.retry  --queue name--> <p>.<service>.retry.<ms>ms
                                           --TTL--> <p>.<service>.redeliver
    <p>.<service>.dead  -------------------> <p>.<service>.dead
    <p>.<service>.quarantine  -------------> <p>.<service>.quarantine
    <p>.<owner>.replies  --queue name--> <p>.<owner>.replies.<12 hex>   exclusive

A handler failure is republished to the service's retry exchange for its
attempt, whose TTL queue sends it back through the service's ``redeliver``
exchange to the service queue alone (not to every subscriber of the type). When
retries run out the worker publishes the message to its ``dead`` exchange with
the error; a trust or schema failure goes to its ``quarantine`` exchange with the
reason. The service queue itself dead-letters to ``quarantine`` too: that is
where a message ends that kept killing the consumer's connection until the
queue's delivery limit gave up on it, and where a request expires whose caller
stopped waiting (``x-death`` says ``delivery_limit`` or ``expired``). A reply
goes to the reply exchange of the service that asked.

Why a service has exchanges of its own: RabbitMQ checks routing keys only on
topic exchanges. On a shared direct exchange any service allowed to bind could
bind its queue with another service's routing key and read its retries, dead
letters or replies. With one exchange each, broker permissions name exactly the
exchanges a service may read and write (``messaging/provision.py``).

The shared exchanges are created by ``baton provision``; a process only checks
that they exist (a passive declare, which needs no permission) and creates them
itself only when they are missing and its account may (development, ``guest``).

The service, dead and quarantine queues are quorum queues when the broker has
them (RabbitMQ 3.8 on). Only a quorum queue has a delivery limit; on classic
queues (``BATON_QUORUM_QUEUES``) nothing bounds a message that kills the
consumer before it can be settled.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue

from messaging.errors import BrokerTooOld
from messaging.identity import SERVICE_PATTERN

logger = logging.getLogger(__name__)

# The instance part of a reply queue's name: a requester picks 12 random hex digits.
REPLY_INSTANCE: Final = "[0-9a-f]{12}"

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

    def exchange_for(self, route: Route) -> str:
        return self.commands if route is Route.COMMAND else self.events

    def exchanges(self) -> dict[str, aio_pika.ExchangeType]:
        """The exchanges every service shares, with their type."""
        topic = aio_pika.ExchangeType.TOPIC
        return {self.commands: topic, self.events: topic}

    def service_exchanges(self, service: str) -> dict[str, aio_pika.ExchangeType]:
        """The exchanges a consuming service owns: its retry path and parking."""
        direct = aio_pika.ExchangeType.DIRECT
        return {
            self.retry_exchange(service): direct,
            self.redeliver_exchange(service): direct,
            self.dead_exchange(service): direct,
            self.quarantine_exchange(service): direct,
        }

    def retry_exchange(self, service: str) -> str:
        return f"{self.prefix}.{service}.retry"

    def redeliver_exchange(self, service: str) -> str:
        return f"{self.prefix}.{service}.redeliver"

    def dead_exchange(self, service: str) -> str:
        return f"{self.prefix}.{service}.dead"

    def quarantine_exchange(self, service: str) -> str:
        return f"{self.prefix}.{service}.quarantine"

    def reply_exchange(self, owner: str) -> str:
        return f"{self.prefix}.{owner}.replies"

    def reply_exchange_for(self, reply_to: str) -> str | None:
        """Where a reply to `reply_to` goes; None when that is no reply queue here."""
        owner = self.reply_owner(reply_to)
        return None if owner is None else self.reply_exchange(owner)

    def reply_owner(self, reply_to: str) -> str | None:
        """The service whose reply queue `reply_to` names, None for any other name."""
        owner = rf"({SERVICE_PATTERN.pattern})"
        pattern = rf"{re.escape(self.prefix)}\.{owner}\.replies\.{REPLY_INSTANCE}"
        match = re.fullmatch(pattern, reply_to)
        return match.group(1) if match else None

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
        """Make sure the shared exchanges exist, declaring only the missing ones.

        A passive declare needs no permission, so a provisioned account (which
        may not configure the shared exchanges) gets by; a missing exchange is
        declared, which works for an account allowed to (development). A failed
        passive declare closes its channel, so the checks run on channels of
        their own, never on `channel`.
        """
        underlay = await channel.get_underlay_channel()
        await _ensure_exchanges(underlay.connection, self.exchanges())

    async def declare_service(
        self, channel: AbstractChannel, service: str, bindings: Iterable[Binding]
    ) -> AbstractQueue:
        """Declare a service's own exchanges, queues and bindings; returns its queue."""
        quorum = await self._quorum_on(channel, service)
        await self.declare_exchanges(channel)
        for name, kind in self.service_exchanges(service).items():
            await channel.declare_exchange(name, kind, durable=True)
        queue = await channel.declare_queue(
            self.service_queue(service),
            durable=True,
            arguments=self._work_args(service, quorum),
        )
        await queue.bind(self.redeliver_exchange(service), routing_key=service)
        for binding in bindings:
            await queue.bind(
                self.exchange_for(binding.route), routing_key=binding.message_type
            )

        for delay in self.retry_delays:
            await self._declare_retry_queue(channel, service, delay)
        for exchange, name in (
            (self.dead_exchange(service), self.dead_queue(service)),
            (self.quarantine_exchange(service), self.quarantine_queue(service)),
        ):
            parked = await channel.declare_queue(
                name, durable=True, arguments=_parking_args(quorum)
            )
            await parked.bind(exchange, routing_key=service)

        logger.debug("declared queues of service %s", service)
        return queue

    async def declare_reply_queue(
        self, channel: AbstractChannel, owner: str, instance: str
    ) -> AbstractQueue:
        """An exclusive reply queue of `owner`, bound to `owner`'s reply exchange.

        The exchange goes when its last reply queue does (auto-delete), so a
        requester leaves nothing behind.
        """
        exchange = await channel.declare_exchange(
            self.reply_exchange(owner),
            aio_pika.ExchangeType.DIRECT,
            durable=True,
            auto_delete=True,
        )
        name = self.reply_queue(owner, instance)
        queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=name)
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
                "x-dead-letter-exchange": self.redeliver_exchange(service),
                "x-dead-letter-routing-key": service,
            },
        )
        await queue.bind(self.retry_exchange(service), routing_key=name)

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
            "x-dead-letter-exchange": self.quarantine_exchange(service),
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


async def _ensure_exchanges(
    connection: aiormq.abc.AbstractConnection,
    exchanges: Mapping[str, aio_pika.ExchangeType],
) -> None:
    channel = await connection.channel()
    try:
        for name, kind in exchanges.items():
            try:
                await channel.exchange_declare(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                channel = await connection.channel()
                await _declare_missing(channel, name, kind)
    finally:
        if not channel.is_closed:
            await channel.close()


async def _declare_missing(
    channel: aiormq.abc.AbstractChannel, name: str, kind: aio_pika.ExchangeType
) -> None:
    try:
        await channel.exchange_declare(name, exchange_type=kind.value, durable=True)
    except aiormq.exceptions.ChannelAccessRefused:
        logger.error(
            "exchange %s does not exist and this account may not create it: "
            "provision the deployment first (baton provision)",
            name,
        )
        raise
    logger.info("declared the missing exchange %s", name)


def _version(server_properties: Mapping[str, Any]) -> str:
    version = server_properties.get("version", b"")
    if isinstance(version, bytes | bytearray):
        return version.decode("ascii", "replace")
    return str(version)


def _millis(seconds: float) -> int:
    return max(1, round(seconds * 1000))
