"""The consumer runtime: from a delivery to a handler call to exactly one outcome.

For each delivery the consumer checks everything that needs no handler (size,
content type, message type, identity, trust, chain depth, roles, payload), runs
the handler under its deadline and hands the result to :mod:`messaging.outcomes`,
which settles the delivery. Trust and schema failures are never retried: the
same bytes would fail the same way. A failure this module did not foresee is
logged with its traceback and the delivery is rejected to the queue's
dead-letter exchange (quarantine), so it never sits unacked.

Deliveries come straight from the AMQP channel under aio-pika (aiormq), one task
each, without aio-pika's per-message wrapper and task.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import Any

import aiormq.abc
import pydantic
from aio_pika.abc import AbstractChannel, AbstractConnection
from pamqp.commands import Basic
from pydantic import BaseModel

from messaging import headers as h
from messaging.connection import CONNECTION_ERRORS, Link
from messaging.delivery import Acks, Delivery
from messaging.errors import (
    BrokerUnavailable,
    ChainTooDeep,
    HeaderTypeError,
    HeaderValueError,
    IdentityError,
    MessageRejected,
    Reject,
    SchemaError,
    UnknownMessageType,
)
from messaging.handlers import Context, HandlerSpec, enter_context
from messaging.identity import Principal, decode_principal
from messaging.logcontext import MessageContext, bind_message_context
from messaging.outcomes import Outcomes
from messaging.publisher import Publisher
from messaging.rpc import Requester
from messaging.settings import BrokerSettings
from messaging.signing import Signer, carry
from messaging.topology import Binding, Topology
from messaging.trust import Admission, TrustPolicy

logger = logging.getLogger(__name__)

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
        self.outcomes = Outcomes(
            service,
            self.topology,
            self.publisher,
            on_settled=trust.settled if trust is not None else None,
        )
        self._channel: AbstractChannel | None = None
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self._acks: Acks | None = None
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
        if self._acks is not None:
            await self._acks.drain()
        await self.requester.close()
        await self.publisher.close()
        await self.link.stop()

    async def _attach(self, connection: AbstractConnection) -> None:
        channel = await connection.channel(publisher_confirms=False)
        self.link.watch(channel)
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_cancelled_by_broker)
        self._channel, self._underlay = channel, underlay

        prefetch = self.settings.prefetch
        if self.link.reconnects and prefetch > 1:
            self._probation = PROBATION_MESSAGES
            prefetch = 1
        await channel.set_qos(prefetch_count=prefetch)
        acks = Acks(underlay, batch=_ack_batch(prefetch))
        self._acks = acks

        bindings = [
            Binding(spec.route, spec.message_type) for spec in self._handlers.values()
        ]
        queue = await self.topology.declare_service(channel, self.service, bindings)
        self.queue_name = queue.name
        if not self._stopping:
            on_delivery = functools.partial(self._on_delivery, acks)
            ok = await underlay.basic_consume(queue.name, on_delivery)
            self._consumer_tag = ok.consumer_tag
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
        underlay, tag = self._underlay, self._consumer_tag
        self._consumer_tag = None
        if underlay is None or tag is None or underlay.is_closed:
            return
        try:
            await underlay.basic_cancel(tag)
        except CONNECTION_ERRORS as exc:
            logger.debug(
                "%s: cancel failed, connection already gone: %s", self.service, exc
            )

    async def _on_delivery(
        self, acks: Acks, message: aiormq.abc.DeliveredMessage
    ) -> None:
        self._in_flight += 1
        self._idle.clear()
        delivery = Delivery(message, acks)
        log_context = MessageContext.of(
            delivery.message_id, delivery.correlation_id, self.queue_name
        )
        # Each delivery runs in a task of its own (aiormq starts one per
        # message), so what is bound to its context is dropped with the task.
        bind_message_context(log_context)
        try:
            await self._guarded(delivery, log_context)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _guarded(self, delivery: Delivery, log_context: MessageContext) -> None:
        """Process one delivery; whatever goes wrong, it does not stay unacked."""
        try:
            await self._process(delivery, log_context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the last line: never leave it unacked
            await self._reject_unforeseen(delivery, exc)
        if self._probation and delivery.channel_open:
            self._probation -= 1
            if self._probation == 0:
                await self._end_probation()

    async def _reject_unforeseen(self, delivery: Delivery, exc: Exception) -> None:
        if not delivery.channel_open:
            # Lost with the channel: the broker gives the delivery back itself.
            logger.warning("lost the broker while settling a delivery: %s", exc)
            return
        logger.error(
            "unexpected failure; rejecting the delivery to quarantine", exc_info=exc
        )
        await self.outcomes.rejected(delivery)

    async def _process(self, delivery: Delivery, log_context: MessageContext) -> None:
        try:
            spec, principal, attempt, admission = self._admit(delivery)
            payload = _validate(spec, delivery.body)
        except (IdentityError, MessageRejected) as exc:
            await self.outcomes.quarantined(delivery, exc)
            return

        context = Context(
            principal=principal,
            service=self.service,
            message_id=delivery.message_id or "",
            correlation_id=delivery.correlation_id or delivery.message_id or "",
            message_type=spec.message_type,
            attempt=attempt,
            publisher=self.publisher,
            topology=self.topology,
            requester=self.requester,
            request_timeout=self.settings.request_timeout,
            max_publishes=self.settings.max_publishes_per_delivery,
            sent_by=admission.sender if admission else "",
        )
        bind_message_context(log_context.acting_for(principal))
        carry(admission.origin if admission else None)
        await self._run_handler(delivery, spec, context, payload)

    def _admit(
        self, delivery: Delivery
    ) -> tuple[HandlerSpec[Any], Principal, int, Admission | None]:
        """Every check that needs no handler: each failure is final, never retried."""
        if len(delivery.body) > self.settings.max_body_bytes:
            raise SchemaError(
                f"body is {len(delivery.body)} bytes, over the limit "
                f"{self.settings.max_body_bytes}"
            )
        if delivery.content_type != h.CONTENT_TYPE:
            raise SchemaError(
                f"content type {delivery.content_type!r} is not {h.CONTENT_TYPE!r}"
            )
        spec = self._handlers.get(delivery.type or "")
        if spec is None:
            raise UnknownMessageType(
                f"{self.service} has no handler for message type {delivery.type!r}"
            )

        principal = decode_principal(delivery.headers)
        admission = self.trust.admit(delivery, spec, principal) if self.trust else None
        attempt = _attempt(delivery.headers)
        if len(principal.actors) > self.settings.max_chain_depth:
            raise ChainTooDeep(
                f"actor chain {' > '.join(principal.actors)} is deeper than "
                f"{self.settings.max_chain_depth}"
            )
        spec.authorize(principal)
        return spec, principal, attempt, admission

    async def _run_handler(
        self,
        delivery: Delivery,
        spec: HandlerSpec[Any],
        context: Context,
        payload: BaseModel,
    ) -> None:
        enter_context(context)
        deadline = asyncio.timeout(self.settings.handler_timeout)
        try:
            async with deadline:
                result = await spec.func(context, payload)
            if delivery.reply_to:
                _check_result(spec, result)
        except Reject as exc:
            await self.outcomes.failed(
                delivery, context.attempt, exc, exc.reason, final=True
            )
            return
        except MessageRejected as exc:
            # A handler found the message itself unacceptable (a request for
            # another user's data): that is a trust failure, never retried.
            await self.outcomes.quarantined(delivery, exc)
            return
        except TimeoutError as exc:
            # A handler's own timeout (a slow upstream) is not our deadline.
            reason = (
                f"handler exceeded its {self.settings.handler_timeout}s deadline"
                if deadline.expired()
                else _describe(exc)
            )
            await self.outcomes.failed(
                delivery, context.attempt, exc, reason, final=False
            )
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any handler failure is retried
            await self.outcomes.failed(
                delivery, context.attempt, exc, _describe(exc), final=False
            )
            return

        await self.outcomes.handled(delivery, result)
        logger.debug("handled %s", spec.message_type)

    async def _end_probation(self) -> None:
        channel = self._channel
        if channel is None:
            return
        try:
            await channel.set_qos(prefetch_count=self.settings.prefetch)
            if self._acks is not None:
                self._acks.batch = _ack_batch(self.settings.prefetch)
            logger.info("%s: prefetch back to %d", self.service, self.settings.prefetch)
        except CONNECTION_ERRORS as exc:
            logger.debug("could not restore prefetch: %s", exc)


def _ack_batch(prefetch: int) -> int:
    # A quarter of the window: enough to share frames, and the broker still
    # has three quarters of the prefetch to keep sending meanwhile.
    return max(1, prefetch // 4)


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


def _check_result(spec: HandlerSpec[Any], result: object) -> None:
    """A request's handler must answer with a model (or None), never anything else."""
    if result is not None and not isinstance(result, BaseModel):
        raise TypeError(
            f"the handler of {spec.message_type} returned "
            f"{type(result).__name__}, not a pydantic model or None"
        )


def _attempt(headers: Any) -> int:
    value = (headers or {}).get(h.ATTEMPT, 0)
    if type(value) is not int:
        raise HeaderTypeError(
            h.ATTEMPT, f"must be an integer, got {type(value).__name__}"
        )
    if not 0 <= value <= MAX_ATTEMPT:
        raise HeaderValueError(h.ATTEMPT, f"{value} is outside 0..{MAX_ATTEMPT}")
    return value


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
