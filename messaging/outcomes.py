"""How a delivery ends: acked, retried, dead-lettered, quarantined, or answered.

    handler returned            -> ack (and a reply, when one was asked for)
    handler failed, tries left  -> copy to the retry queue with attempt + 1, ack
    handler failed, no tries    -> copy to the dead queue with the error, ack
    trust or schema failure     -> copy to the quarantine queue with the reason, ack
    a request that failed       -> the error replied to the caller, ack

The original is acked only after its copy is confirmed by the broker; if the copy
cannot be published the original is requeued, so nothing is lost. A delivery
whose channel is already gone is not copied at all: the broker gives it back to
the next consumer, and a copy would make two.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from messaging import headers as h
from messaging.connection import CONNECTION_ERRORS
from messaging.delivery import Delivery
from messaging.errors import (
    IdentityError,
    MessageRejected,
    PublishError,
    Reject,
    RemoteError,
    Retry,
)
from messaging.publisher import Publisher
from messaging.topology import Topology
from messaging.trust import TRUST_REFUSALS

logger = logging.getLogger(__name__)
security_log = logging.getLogger("baton.security")

MAX_REASON_CHARS = 1000


class Outcomes:
    """Settles one service's deliveries; the consumer decides which outcome."""

    def __init__(
        self,
        service: str,
        topology: Topology,
        publisher: Publisher,
        *,
        on_settled: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.service = service
        self.topology = topology
        self.publisher = publisher
        # Told of every delivery acked, whatever the outcome: a copy of it that
        # comes again, even flagged redelivered, is a replay (the trust policy).
        self._on_settled = on_settled

    async def handled(self, delivery: Delivery, result: BaseModel | None) -> None:
        if delivery.reply_to:
            body = b"null" if result is None else _result_body(result)
            await self._send_reply(delivery, body, {})
        await self.settle(delivery)

    async def failed(
        self,
        delivery: Delivery,
        attempt: int,
        exc: BaseException,
        reason: str,
        *,
        final: bool,
    ) -> None:
        """A handler error: reply it, retry it, or dead-letter it."""
        if delivery.reply_to:
            # A caller is waiting: it gets the error now and decides itself
            # whether to ask again, instead of waiting out our retries.
            await self._send_reply(delivery, error_body(exc), _error_type(exc))
            await self.settle(delivery)
            logger.info("request %s failed: %s", delivery.type, reason)
            return

        delay = None if final else self.topology.retry_delay(attempt + 1)
        if isinstance(exc, Retry) and exc.delay is not None and delay is not None:
            delay = self._delay_at_least(exc.delay)
        if delay is not None:
            logger.info(
                "attempt %d failed, retrying in %ss: %s", attempt + 1, delay, reason
            )
            retry_headers = {
                h.ATTEMPT: attempt + 1,
                h.FAILURE_REASON: reason,
                **self._origin(delivery),
            }
            await self._forward(
                delivery,
                self.topology.retry_exchange(self.service),
                self.topology.retry_queue(self.service, delay),
                retry_headers,
            )
            return

        if isinstance(exc, Reject | Retry | TimeoutError):
            logger.warning("dead-lettering after %d attempts: %s", attempt + 1, reason)
        else:
            logger.error("dead-lettering: handler failed", exc_info=exc)
        await self._forward(
            delivery,
            self.topology.dead_exchange(self.service),
            self.service,
            self._failure_headers(delivery, type(exc).__name__, reason),
        )

    async def quarantined(
        self, delivery: Delivery, exc: IdentityError | MessageRejected
    ) -> None:
        security_log.warning(
            "quarantined %r from %r: %s: %s",
            delivery.message_id,
            delivery.user_id,
            exc.code,
            exc,
        )
        if (
            delivery.reply_to
            and not isinstance(exc, IdentityError)
            and not isinstance(exc, TRUST_REFUSALS)
        ):
            await self._send_reply(delivery, error_body(exc), {h.ERROR_TYPE: exc.code})
        await self._forward(
            delivery,
            self.topology.quarantine_exchange(self.service),
            self.service,
            self._failure_headers(delivery, exc.code, str(exc)),
        )

    async def rejected(self, delivery: Delivery) -> None:
        """Refuse a delivery for good: the queue dead-letters it into quarantine."""
        try:
            await delivery.reject()
        except CONNECTION_ERRORS as exc:
            logger.warning("could not reject, the broker will redeliver: %s", exc)
            return
        self._settled(delivery)

    async def settle(self, delivery: Delivery, *, requeue: bool = False) -> None:
        if not requeue:
            delivery.ack()
            self._settled(delivery)
            return
        try:
            await delivery.requeue()
        except CONNECTION_ERRORS as exc:
            # The channel is gone: the broker returns the message by itself.
            logger.warning("could not requeue, the broker will redeliver: %s", exc)

    def _settled(self, delivery: Delivery) -> None:
        if self._on_settled is not None:
            self._on_settled(delivery)

    def _failure_headers(
        self, delivery: Delivery, code: str, reason: str
    ) -> dict[str, Any]:
        return {
            h.FAILURE_CODE: code,
            h.FAILURE_REASON: reason[:MAX_REASON_CHARS],
            h.FAILED_BY: self.service,
            **self._origin(delivery),
        }

    def _origin(self, delivery: Delivery) -> dict[str, str]:
        """Where the message was first published, also after a trip through retry.

        A retried message comes back through our ``redeliver``; the exchange and
        routing key it was first sent to travel in our transport headers.
        """
        exchange, routing_key = delivery.exchange, delivery.routing_key
        first = (
            delivery.headers.get(h.ORIGINAL_EXCHANGE),
            delivery.headers.get(h.ORIGINAL_ROUTING_KEY),
        )
        if exchange == self.topology.redeliver_exchange(self.service) and all(
            type(value) is str for value in first
        ):
            exchange, routing_key = str(first[0]), str(first[1])
        return {h.ORIGINAL_EXCHANGE: exchange, h.ORIGINAL_ROUTING_KEY: routing_key}

    async def _forward(
        self,
        delivery: Delivery,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
    ) -> None:
        if not delivery.channel_open:
            logger.info(
                "not moving %r to %s: its channel is gone, the broker redelivers it",
                delivery.message_id,
                exchange,
            )
            return
        try:
            await self.publisher.republish(exchange, routing_key, delivery, headers)
        except PublishError as exc:
            logger.warning(
                "could not move the message to %s, requeueing: %s", exchange, exc
            )
            await self.settle(delivery, requeue=True)
            return
        await self.settle(delivery)

    async def _send_reply(
        self, delivery: Delivery, body: bytes, headers: dict[str, Any]
    ) -> None:
        exchange = self.topology.reply_exchange_for(delivery.reply_to or "")
        if exchange is None:
            logger.warning("not replying to %r: no reply queue", delivery.reply_to)
            return
        try:
            await self.publisher.publish(
                exchange,
                delivery.reply_to or "",
                message_type=f"{delivery.type}.reply",
                body=body,
                principal=None,
                message_id=uuid.uuid4().hex,
                correlation_id=delivery.message_id,
                headers=headers,
            )
        except PublishError as exc:
            # The caller has gone (its reply queue is deleted) or timed out.
            logger.info("reply to %s not delivered: %s", delivery.reply_to, exc)

    def _delay_at_least(self, wanted: float) -> float:
        for delay in self.topology.retry_delays:
            if delay >= wanted:
                return delay
        return self.topology.retry_delays[-1]


def error_body(exc: BaseException) -> bytes:
    message = exc.message if isinstance(exc, RemoteError) else str(exc)
    return json.dumps(
        {"error": _error_name(exc), "message": message[:MAX_REASON_CHARS]}
    ).encode()


def _error_type(exc: BaseException) -> dict[str, Any]:
    return {h.ERROR_TYPE: _error_name(exc)}


def _error_name(exc: BaseException) -> str:
    # A callee's error travels up a chain of requests under its own name, so
    # the first caller (the edge) answers as if it had asked the callee itself.
    if isinstance(exc, RemoteError):
        return exc.error_type
    return type(exc).__name__


def _result_body(result: BaseModel) -> bytes:
    return result.model_dump_json().encode()
