"""The consumer runtime: from a delivery to a handler call to exactly one outcome.

Each delivery ends in one of four ways, and only this module decides which:

    handler returned            -> ack (and a reply, when one was asked for)
    handler failed, tries left  -> copy to the retry queue with attempt + 1, ack
    handler failed, no tries    -> copy to the dead queue with the error, ack
    trust or schema failure     -> copy to the quarantine queue with the reason, ack

The original is acked only after its copy is confirmed by the broker; if the copy
cannot be published the original is requeued, so nothing is lost. Trust and
schema failures are never retried: the same bytes would fail the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import pydantic
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from pamqp.commands import Basic
from pydantic import BaseModel

from messaging import headers as h
from messaging.connection import CONNECTION_ERRORS, Link
from messaging.errors import (
    BrokerTooOld,
    BrokerUnavailable,
    ChainTooDeep,
    HeaderTypeError,
    HeaderValueError,
    IdentityError,
    MessageRejected,
    PublishError,
    Reject,
    Retry,
    SchemaError,
    UnknownMessageType,
)
from messaging.handlers import Context, HandlerSpec, enter_context, leave_context
from messaging.identity import Principal, decode_principal
from messaging.logcontext import MessageContext, message_context
from messaging.publisher import Publisher
from messaging.rpc import Requester
from messaging.settings import BrokerSettings
from messaging.signing import OriginAssertion, Signer, carrying
from messaging.topology import Binding, Topology, supports_quorum
from messaging.trust import TRUST_REFUSALS, TrustPolicy

logger = logging.getLogger(__name__)
security_log = logging.getLogger("baton.security")

MAX_ATTEMPT = 100
# After an unexpected reconnect the consumer takes one message at a time for this
# many messages, so that a message that kills the connection is the only one
# whose delivery count grows and its neighbours are not quarantined with it.
PROBATION_MESSAGES = 20


class Consumer:
    """Consumes one service's queue and runs its handlers."""

    def __init__(
        self,
        service: str,
        handlers: Sequence[HandlerSpec[Any]],
        settings: BrokerSettings,
        *,
        topology: Topology | None = None,
        trust: TrustPolicy | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.topology = topology or settings.topology()
        # None in development: user_id and signatures are then not checked.
        self.trust = trust
        self._handlers = {spec.message_type: spec for spec in handlers}
        self.link = Link(
            settings.amqp_url, name=f"baton:{service}", on_connect=self._attach
        )
        self.publisher = Publisher(
            self.link, confirm_timeout=settings.confirm_timeout, signer=signer
        )
        self.requester = Requester(
            self.link, self.publisher, self.topology, owner=service
        )
        self._queue: AbstractQueue | None = None
        self._channel: AbstractChannel | None = None
        self._consumer_tag: str | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._probation = 0
        self.queue_name = ""

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def start(self, timeout: float = 10.0) -> None:
        """Connect, declare the service's queues and start consuming.

        When that fails within `timeout` nothing is left running in the
        background, and the error says what the broker answered last.
        """
        await self.link.start()
        try:
            await self.link.wait_ready(timeout)
        except BrokerUnavailable:
            await self.link.stop()
            raise

    async def stop(self) -> None:
        """Stop taking messages, let in-flight ones finish and ack, then close."""
        self._stopping = True
        await self._cancel_consumer()
        try:
            await asyncio.wait_for(self._idle.wait(), self.settings.stop_timeout)
        except TimeoutError:
            logger.warning(
                "%s: %d messages still in flight after %ss; the broker will "
                "redeliver them",
                self.service,
                self._in_flight,
                self.settings.stop_timeout,
            )
        await self.requester.close()
        await self.publisher.close()
        await self.link.stop()

    async def _attach(self, connection: AbstractConnection) -> None:
        if self.topology.quorum and not supports_quorum(_server_properties(connection)):
            raise BrokerTooOld(
                "this broker has no quorum queues: set quorum_queues off"
            )
        channel = await connection.channel(publisher_confirms=False)
        self.link.watch(channel)
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_cancelled_by_broker)
        self._channel = channel

        prefetch = self.settings.prefetch
        if self.link.reconnects and prefetch > 1:
            self._probation = PROBATION_MESSAGES
            prefetch = 1
        await channel.set_qos(prefetch_count=prefetch)

        bindings = [
            Binding(spec.route, spec.message_type) for spec in self._handlers.values()
        ]
        queue = await self.topology.declare_service(channel, self.service, bindings)
        self.queue_name = queue.name
        self._queue = queue
        if not self._stopping:
            self._consumer_tag = await queue.consume(self._on_message)
            logger.info(
                "%s: consuming %s (prefetch %d)", self.service, queue.name, prefetch
            )

    def _on_cancelled_by_broker(self, frame: Basic.Cancel) -> None:
        # The broker drops a consumer whose queue was deleted or lost its
        # leader; the channel stays open, so nothing else would notice that
        # this worker has stopped taking messages.
        if self._stopping:
            return
        logger.warning(
            "%s: the broker cancelled consumer %s, reconnecting to restore it",
            self.service,
            frame.consumer_tag,
        )
        self.link.mark_lost()

    async def _cancel_consumer(self) -> None:
        queue, tag = self._queue, self._consumer_tag
        self._consumer_tag = None
        if queue is None or tag is None:
            return
        try:
            await queue.cancel(tag)
        except CONNECTION_ERRORS as exc:
            logger.debug(
                "%s: cancel failed, connection already gone: %s", self.service, exc
            )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._in_flight += 1
        self._idle.clear()
        log_context = MessageContext(
            message_id=message.message_id or "-",
            correlation_id=message.correlation_id or "-",
            queue=self.queue_name,
        )
        try:
            with message_context(log_context):
                await self._process(message)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            spec, principal, attempt, origin = self._admit(message)
            payload = _validate(spec, message.body)
        except (IdentityError, MessageRejected) as exc:
            await self._quarantine(message, exc)
            return

        context = Context(
            principal=principal,
            service=self.service,
            message_id=message.message_id or "",
            correlation_id=message.correlation_id or message.message_id or "",
            message_type=spec.message_type,
            attempt=attempt,
            publisher=self.publisher,
            topology=self.topology,
            requester=self.requester,
            request_timeout=self.settings.request_timeout,
            sent_by=self.trust.sender(message) if self.trust else "",
        )
        with (
            message_context(_with_principal(message, self.queue_name, principal)),
            carrying(origin),
        ):
            await self._run_handler(message, spec, context, payload)

    def _admit(
        self, message: AbstractIncomingMessage
    ) -> tuple[HandlerSpec[Any], Principal, int, OriginAssertion | None]:
        """Every check that needs no handler: each failure is final, never retried."""
        if len(message.body) > self.settings.max_body_bytes:
            raise SchemaError(
                f"body is {len(message.body)} bytes, over the limit "
                f"{self.settings.max_body_bytes}"
            )
        if message.content_type != h.CONTENT_TYPE:
            raise SchemaError(
                f"content type {message.content_type!r} is not {h.CONTENT_TYPE!r}"
            )
        spec = self._handlers.get(message.type or "")
        if spec is None:
            raise UnknownMessageType(
                f"{self.service} has no handler for message type {message.type!r}"
            )

        principal = decode_principal(message.headers)
        origin = self.trust.admit(message, spec, principal) if self.trust else None
        attempt = _attempt(message.headers)
        if len(principal.actors) > self.settings.max_chain_depth:
            raise ChainTooDeep(
                f"actor chain {' > '.join(principal.actors)} is deeper than "
                f"{self.settings.max_chain_depth}"
            )
        spec.authorize(principal)
        return spec, principal, attempt, origin

    async def _run_handler(
        self,
        message: AbstractIncomingMessage,
        spec: HandlerSpec[Any],
        context: Context,
        payload: BaseModel,
    ) -> None:
        token = enter_context(context)
        deadline = asyncio.timeout(self.settings.handler_timeout)
        try:
            async with deadline:
                result = await spec.func(context, payload)
        except Reject as exc:
            await self._fail(message, context, exc, exc.reason, final=True)
            return
        except MessageRejected as exc:
            # A handler found the message itself unacceptable (a request for
            # another user's data): that is a trust failure, never retried.
            await self._quarantine(message, exc)
            return
        except TimeoutError as exc:
            # A handler's own timeout (a slow upstream) is not our deadline.
            reason = (
                f"handler exceeded its {self.settings.handler_timeout}s deadline"
                if deadline.expired()
                else _describe(exc)
            )
            await self._fail(message, context, exc, reason, final=False)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any handler failure is retried
            await self._fail(message, context, exc, _describe(exc), final=False)
            return
        finally:
            leave_context(token)

        if message.reply_to:
            await self._reply(message, context, result, error=None)
        await self._settle(message)
        logger.debug("handled %s", spec.message_type)

    async def _fail(
        self,
        message: AbstractIncomingMessage,
        context: Context,
        exc: BaseException,
        reason: str,
        *,
        final: bool,
    ) -> None:
        if message.reply_to:
            # A caller is waiting: it gets the error now and decides itself
            # whether to ask again, instead of waiting out our retries.
            await self._reply(message, context, None, error=exc)
            await self._settle(message)
            logger.info("request %s failed: %s", context.message_type, reason)
            return

        delay = None if final else self.topology.retry_delay(context.attempt + 1)
        if isinstance(exc, Retry) and exc.delay is not None and delay is not None:
            delay = self._delay_at_least(exc.delay)
        if delay is not None:
            logger.info(
                "attempt %d failed, retrying in %ss: %s",
                context.attempt + 1,
                delay,
                reason,
            )
            await self._forward(
                message,
                self.topology.retry_exchange(self.service),
                self.topology.retry_queue(self.service, delay),
                {
                    h.ATTEMPT: context.attempt + 1,
                    h.FAILURE_REASON: reason,
                    **self._origin(message),
                },
            )
            return

        if isinstance(exc, Reject | Retry | TimeoutError):
            logger.warning(
                "dead-lettering after %d attempts: %s", context.attempt + 1, reason
            )
        else:
            logger.error("dead-lettering: handler failed", exc_info=exc)
        await self._forward(
            message,
            self.topology.dead_exchange(self.service),
            self.service,
            self._failure_headers(message, type(exc).__name__, reason),
        )

    async def _quarantine(
        self, message: AbstractIncomingMessage, exc: IdentityError | MessageRejected
    ) -> None:
        security_log.warning(
            "quarantined %s from %r: %s: %s",
            message.message_id,
            message.user_id,
            exc.code,
            exc,
        )
        if (
            message.reply_to
            and not isinstance(exc, IdentityError)
            and not isinstance(exc, TRUST_REFUSALS)
        ):
            await self._reply_error_raw(message, exc)
        await self._forward(
            message,
            self.topology.quarantine_exchange(self.service),
            self.service,
            self._failure_headers(message, exc.code, str(exc)),
        )

    def _failure_headers(
        self, message: AbstractIncomingMessage, code: str, reason: str
    ) -> dict[str, Any]:
        return {
            h.FAILURE_CODE: code,
            h.FAILURE_REASON: reason[:1000],
            h.FAILED_BY: self.service,
            **self._origin(message),
        }

    def _origin(self, message: AbstractIncomingMessage) -> dict[str, str]:
        """Where the message was first published, also after a trip through retry.

        A retried message comes back through our ``redeliver``; the exchange and
        routing key it was first sent to travel in our transport headers.
        """
        exchange, routing_key = message.exchange or "", message.routing_key or ""
        table = message.headers or {}
        first = table.get(h.ORIGINAL_EXCHANGE), table.get(h.ORIGINAL_ROUTING_KEY)
        if exchange == self.topology.redeliver_exchange(self.service) and all(
            type(value) is str for value in first
        ):
            exchange, routing_key = str(first[0]), str(first[1])
        return {h.ORIGINAL_EXCHANGE: exchange, h.ORIGINAL_ROUTING_KEY: routing_key}

    async def _forward(
        self,
        message: AbstractIncomingMessage,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
    ) -> None:
        try:
            await self.publisher.republish(exchange, routing_key, message, headers)
        except PublishError as exc:
            logger.warning(
                "could not move the message to %s, requeueing: %s", exchange, exc
            )
            await self._settle(message, requeue=True)
            return
        await self._settle(message)

    async def _settle(
        self, message: AbstractIncomingMessage, *, requeue: bool | None = None
    ) -> None:
        try:
            if requeue:
                await message.nack(requeue=True)
            else:
                await message.ack()
        except CONNECTION_ERRORS as exc:
            # The channel is gone, so the broker requeues the message itself and
            # will deliver it again; acking it twice is impossible.
            logger.warning(
                "ack lost with the channel, the broker will redeliver: %s", exc
            )
            return
        if self.trust is not None and not requeue:
            # Settled, whatever the outcome: a copy of this delivery that comes
            # again, even flagged redelivered, is a replay.
            self.trust.settled(message)
        if self._probation and not requeue:
            self._probation -= 1
            if self._probation == 0:
                await self._end_probation()

    async def _end_probation(self) -> None:
        channel = self._channel
        if channel is None:
            return
        try:
            await channel.set_qos(prefetch_count=self.settings.prefetch)
            logger.info("%s: prefetch back to %d", self.service, self.settings.prefetch)
        except CONNECTION_ERRORS as exc:
            logger.debug("could not restore prefetch: %s", exc)

    async def _reply(
        self,
        message: AbstractIncomingMessage,
        context: Context,
        result: BaseModel | None,
        *,
        error: BaseException | None,
    ) -> None:
        headers: dict[str, Any] = {}
        if error is not None:
            headers[h.ERROR_TYPE] = type(error).__name__
            body: bytes = _error_body(error)
        elif result is None:
            body = b"null"
        else:
            body = result.model_dump_json().encode()
        await self._send_reply(message, body, headers)

    async def _reply_error_raw(
        self, message: AbstractIncomingMessage, exc: MessageRejected
    ) -> None:
        await self._send_reply(message, _error_body(exc), {h.ERROR_TYPE: exc.code})

    async def _send_reply(
        self, message: AbstractIncomingMessage, body: bytes, headers: dict[str, Any]
    ) -> None:
        exchange = self.topology.reply_exchange_for(message.reply_to or "")
        if exchange is None:
            logger.warning("not replying to %r: no reply queue", message.reply_to)
            return
        try:
            await self.publisher.publish(
                exchange,
                message.reply_to or "",
                message_type=f"{message.type}.reply",
                body=body,
                principal=None,
                message_id=uuid.uuid4().hex,
                correlation_id=message.message_id,
                headers=headers,
            )
        except PublishError as exc:
            # The caller has gone (its reply queue is deleted) or timed out.
            logger.info("reply to %s not delivered: %s", message.reply_to, exc)

    def _delay_at_least(self, wanted: float) -> float:
        for delay in self.topology.retry_delays:
            if delay >= wanted:
                return delay
        return self.topology.retry_delays[-1]


def _server_properties(connection: AbstractConnection) -> dict[str, Any]:
    underlay = connection.transport
    if underlay is None:
        return {}
    return dict(underlay.connection.server_properties)


def _validate(spec: HandlerSpec[Any], body: bytes) -> BaseModel:
    try:
        payload: BaseModel = spec.model.model_validate_json(body)
        return payload
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors(include_url=False)[:5]
        )
        raise SchemaError(
            f"{spec.message_type} payload is invalid: {problems}"
        ) from None


def _attempt(headers: Any) -> int:
    value = (headers or {}).get(h.ATTEMPT, 0)
    if type(value) is not int:
        raise HeaderTypeError(
            h.ATTEMPT, f"must be an integer, got {type(value).__name__}"
        )
    if not 0 <= value <= MAX_ATTEMPT:
        raise HeaderValueError(h.ATTEMPT, f"{value} is outside 0..{MAX_ATTEMPT}")
    return value


def _with_principal(
    message: AbstractIncomingMessage, queue: str, principal: Principal
) -> MessageContext:
    return MessageContext(
        message_id=message.message_id or "-",
        correlation_id=message.correlation_id or "-",
        queue=queue,
        principal=f"{principal.kind.value}:{principal.subject}",
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _error_body(exc: BaseException) -> bytes:
    return json.dumps(
        {"error": type(exc).__name__, "message": str(exc)[:1000]}
    ).encode()
