"""Publishing with no silent loss: confirms, persistence, mandatory routing.

Every message carries a message id, a correlation id, a timestamp, its type,
its content type and the AMQP ``user_id`` of the connection's broker account,
which RabbitMQ checks. The identity headers come from the principal; nothing a
caller passes in ``headers`` may overwrite them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiormq
from aio_pika.abc import AbstractChannel
from pydantic import BaseModel

from messaging import headers as h
from messaging.connection import CONNECTION_ERRORS, Link
from messaging.errors import (
    BrokerUnavailable,
    ConfirmTimeout,
    MessageReturned,
    PublishError,
    PublishNacked,
)
from messaging.identity import Principal
from messaging.signing import Destination, Signer
from messaging.wire import (
    OutgoingProperties,
    header_table,
    table_entries,
    timestamp_seconds,
)

if TYPE_CHECKING:
    from messaging.delivery import Delivery

logger = logging.getLogger(__name__)


def new_message_id() -> str:
    return uuid.uuid4().hex


class Publisher:
    """Publishes messages on one confirm channel of a :class:`Link`.

    Messages go straight to the AMQP channel under aio-pika (aiormq): the
    properties are laid out by :mod:`messaging.wire` and the publish waits for
    the broker's confirm, not for the socket to drain, which the confirm
    implies anyway.
    """

    def __init__(
        self, link: Link, *, confirm_timeout: float = 5.0, signer: Signer | None = None
    ) -> None:
        self._link = link
        # Signs every message published here (messaging/signing.py), when set.
        self.signer = signer
        self._confirm_timeout = confirm_timeout
        self._channel: AbstractChannel | None = None
        self._underlay: aiormq.Channel | None = None
        self._opening = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def broker_user(self) -> str:
        return self._link.user

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        *,
        message_type: str,
        body: BaseModel | bytes,
        principal: Principal | None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        headers: Mapping[str, Any] | None = None,
        expiration: float | None = None,
    ) -> str:
        """Publish and wait for the broker's confirm; returns the message id."""
        message_id = message_id or new_message_id()
        correlation_id = correlation_id or message_id
        payload = body if isinstance(body, bytes) else body.model_dump_json().encode()
        if self.signer is not None:
            destination = Destination(exchange, routing_key, message_type)
            signed = await self.signer.sign_soon(
                destination,
                message_id,
                payload,
                principal,
                correlation_id=correlation_id,
                reply_to=reply_to or "",
            )
            headers = {**headers, **signed} if headers else signed

        properties = OutgoingProperties(
            table=header_table(principal, headers),
            message_id=message_id,
            correlation_id=correlation_id,
            message_type=message_type,
            user_id=self._link.user,
            timestamp=int(time.time()),
            reply_to=reply_to,
            expiration=_milliseconds(expiration),
        )
        await self._send(exchange, routing_key, payload, properties)
        logger.debug("published %s %s to %s", message_type, message_id, exchange)
        return message_id

    async def republish(
        self,
        exchange: str,
        routing_key: str,
        message: Delivery,
        headers: Mapping[str, Any],
    ) -> None:
        """Publish a copy of a received message with extra transport headers.

        The copy keeps the body and properties but is sent under our own broker
        account (RabbitMQ refuses any other ``user_id``); the original publisher
        is kept in a header instead. Header values the AMQP client cannot send
        back as they came (text that was not UTF-8) are carried as byte arrays.
        """
        table = encodable(message.headers or {})
        if message.user_id and message.user_id != self._link.user:
            table[h.ORIGINAL_PUBLISHER] = message.user_id
        table.update(headers)
        properties = OutgoingProperties(
            table=table_entries(table),
            message_id=message.message_id or new_message_id(),
            correlation_id=message.correlation_id or "",
            message_type=message.type or "",
            user_id=self._link.user,
            timestamp=timestamp_seconds(message.timestamp, int(time.time())),
            reply_to=message.reply_to,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
        )
        await self._send(exchange, routing_key, message.body, properties)

    async def close(self) -> None:
        channel, self._channel, self._underlay = self._channel, None, None
        if channel is not None and not channel.is_closed:
            await _close_quietly(channel)
        await asyncio.gather(*list(self._closing))

    async def _send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: OutgoingProperties,
    ) -> None:
        channel = self._underlay
        if channel is None or channel.is_closed:
            channel = await self._open_channel()
        try:
            await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
                timeout=self._confirm_timeout,
                wait=False,
            )
        except aiormq.exceptions.PublishError as exc:
            raise MessageReturned(exchange, routing_key, str(exc.args[0])) from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise PublishNacked(
                f"broker refused message {properties.message_id} to {exchange!r}"
            ) from exc
        except TimeoutError as exc:
            self._forget_channel()
            raise ConfirmTimeout(
                f"no confirm for message {properties.message_id} within "
                f"{self._confirm_timeout}s"
            ) from exc
        except aiormq.exceptions.ChannelClosed as exc:
            self._forget_channel()
            raise PublishError(
                f"broker closed the channel publishing to {exchange!r}: {exc}"
            ) from exc
        except CONNECTION_ERRORS as exc:
            self._forget_channel()
            raise BrokerUnavailable(
                f"publishing to {exchange!r} failed: {exc}"
            ) from exc

    async def _open_channel(self) -> aiormq.Channel:
        async with self._opening:
            if self._underlay is None or self._underlay.is_closed:
                try:
                    channel = await self._link.connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                    underlay = await channel.get_underlay_channel()
                except CONNECTION_ERRORS as exc:
                    raise BrokerUnavailable(f"cannot open a channel: {exc}") from exc
                if not isinstance(underlay, aiormq.Channel):
                    raise TypeError(f"not an aiormq channel: {underlay!r}")
                self._channel, self._underlay = channel, underlay
        return self._underlay

    def _forget_channel(self) -> None:
        """Drop a channel we no longer trust; the next publish opens a fresh one.

        The old channel is closed in the background: left open, each confirm
        timeout would leak one channel on the connection until it reconnects.
        """
        channel, self._channel, self._underlay = self._channel, None, None
        if channel is not None and not channel.is_closed:
            task = asyncio.create_task(_close_quietly(channel))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)


def encodable(headers: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of received headers that the AMQP client can encode again.

    pamqp decodes a long string that is not UTF-8 as ``bytes`` but refuses to
    encode ``bytes``; the same octets travel on as a byte array instead.
    """
    return {key: _encodable(value) for key, value in headers.items()}


def _encodable(value: Any) -> Any:
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return encodable(value)
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    return value


def _milliseconds(seconds: float | None) -> str | None:
    """An AMQP per-message TTL (milliseconds, as text) for `seconds`."""
    if seconds is None:
        return None
    return str(max(0, round(seconds * 1000)))


async def _close_quietly(channel: AbstractChannel) -> None:
    with contextlib.suppress(*CONNECTION_ERRORS):
        await channel.close()
