"""One message as the broker delivered it to a consumer, and how it is settled.

A :class:`Delivery` wraps what aiormq hands over (the ``Basic.Deliver`` frame,
the decoded properties, the body) without copying it into another object per
field, and settles it on the channel it came from.

Acks are batched by :class:`Acks`: a handled delivery's ack waits a few
milliseconds, or until a few more are ready, and goes out as one ``basic.ack``
with ``multiple`` set for every tag below the oldest delivery still being
worked on (the rest one by one). Nothing is acked before its handler finished;
what batching costs is that a connection lost in those milliseconds returns a
handled message to the queue, which at-least-once delivery allows and the
inbox pattern absorbs. Nacks and rejects go out at once. None of them waits for
the socket to drain: AMQP has no answer to them, and a channel that dies first
makes the broker requeue the message anyway.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import aiormq.abc
from pamqp.commands import Basic

from messaging.connection import CONNECTION_ERRORS

logger = logging.getLogger(__name__)

ACK_DELAY = 0.005
"""The longest a handled delivery's ack waits for others to share its frame."""


class Acks:
    """The acks of one channel's consumer, sent in batches.

    Delivery tags grow on a channel, so ``basic.ack(tag, multiple=True)``
    settles every outstanding delivery up to ``tag``. It is used only below the
    lowest tag still open (delivered, not yet settled), which is why every
    delivery is registered with :meth:`opened` when it arrives.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel, batch: int) -> None:
        self.channel = channel
        self.batch = batch
        self._open: set[int] = set()
        self._ready: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def opened(self, tag: int) -> None:
        self._open.add(tag)

    def closed(self, tag: int) -> None:
        """`tag` was settled some other way (nacked, rejected) or lost."""
        self._open.discard(tag)

    def ready(self, tag: int) -> None:
        """`tag` may be acked: its handler finished."""
        self._open.discard(tag)
        self._ready.append(tag)
        if len(self._ready) >= self.batch:
            self.flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(ACK_DELAY, self.flush)

    def flush(self) -> None:
        """Send every ready ack now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ready, self._ready = self._ready, []
        if not ready or self.channel.is_closed:
            return
        task = asyncio.ensure_future(self._send(ready, min(self._open, default=None)))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def drain(self) -> None:
        """Flush, and wait until every ack is on its way to the broker."""
        self.flush()
        while self._sending:
            await asyncio.gather(*list(self._sending))

    async def _send(self, ready: list[int], lowest_open: int | None) -> None:
        covered = [tag for tag in ready if lowest_open is None or tag < lowest_open]
        alone = [tag for tag in ready if lowest_open is not None and tag > lowest_open]
        try:
            if covered:
                await self.channel.basic_ack(
                    max(covered), multiple=len(covered) > 1, wait=False
                )
            for tag in alone:
                await self.channel.basic_ack(tag, wait=False)
        except CONNECTION_ERRORS as exc:
            # The broker requeues whatever was not acked on a lost channel.
            logger.warning(
                "%d acks lost with the channel, the broker will redeliver: %s",
                len(ready),
                exc,
            )


class Delivery:
    """A received message: body, properties, where it came from, how to settle it."""

    __slots__ = ("_acks", "_properties", "_tag", "body", "channel", "frame", "headers")

    def __init__(self, message: aiormq.abc.DeliveredMessage, acks: Acks) -> None:
        frame = message.delivery
        if not isinstance(frame, Basic.Deliver):
            raise TypeError(f"not a consumer delivery: {type(frame).__name__}")
        self.frame = frame
        self.body: bytes = message.body
        self.channel = message.channel
        self._properties: Basic.Properties = message.header.properties
        self.headers: dict[str, Any] = self._properties.headers or {}
        if frame.delivery_tag is None:
            raise TypeError("a consumer delivery without a delivery tag")
        self._tag: int = frame.delivery_tag
        self._acks = acks
        acks.opened(self._tag)

    @property
    def message_id(self) -> str | None:
        return self._properties.message_id

    @property
    def correlation_id(self) -> str | None:
        return self._properties.correlation_id

    @property
    def type(self) -> str | None:
        return self._properties.message_type

    @property
    def content_type(self) -> str | None:
        return self._properties.content_type

    @property
    def content_encoding(self) -> str | None:
        return self._properties.content_encoding

    @property
    def user_id(self) -> str | None:
        return self._properties.user_id

    @property
    def reply_to(self) -> str | None:
        return self._properties.reply_to

    @property
    def timestamp(self) -> datetime | None:
        return self._properties.timestamp

    @property
    def exchange(self) -> str:
        return self.frame.exchange or ""

    @property
    def routing_key(self) -> str:
        return self.frame.routing_key or ""

    @property
    def redelivered(self) -> bool:
        return bool(self.frame.redelivered)

    @property
    def delivery_tag(self) -> int:
        return self._tag

    @property
    def channel_open(self) -> bool:
        """False once the channel it came on is gone: it can no longer be settled."""
        return not self.channel.is_closed

    def ack(self) -> None:
        """Ack it, with the next batch (see :class:`Acks`)."""
        self._acks.ready(self._tag)

    async def requeue(self) -> None:
        """Give it back to the broker, to be delivered again (marked redelivered)."""
        try:
            await self.channel.basic_nack(self._tag, requeue=True, wait=False)
        finally:
            # Open until the nack is queued, so no batched ack can cover it.
            self._acks.closed(self._tag)

    async def reject(self) -> None:
        """Refuse it for good: the queue's dead-letter exchange takes it."""
        try:
            await self.channel.basic_reject(self._tag, requeue=False, wait=False)
        finally:
            self._acks.closed(self._tag)
