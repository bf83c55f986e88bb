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
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange
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
from messaging.identity import Principal, encode_principal
from messaging.signing import Destination, Signer

logger = logging.getLogger(__name__)


def new_message_id() -> str:
    return uuid.uuid4().hex


class Publisher:
    """Publishes messages on one confirm channel of a :class:`Link`."""

    def __init__(
        self, link: Link, *, confirm_timeout: float = 5.0, signer: Signer | None = None
    ) -> None:
        self._link = link
        # Signs every message published here (messaging/signing.py), when set.
        self.signer = signer
        self._confirm_timeout = confirm_timeout
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
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
        table: dict[str, Any] = dict(headers or {})
        if principal is not None:
            table.update(encode_principal(principal))
        payload = body if isinstance(body, bytes) else body.model_dump_json().encode()
        if self.signer is not None:
            destination = Destination(exchange, routing_key, message_type)
            signature = self.signer.sign(
                destination,
                message_id,
                payload,
                principal,
                correlation_id=correlation_id,
                reply_to=reply_to or "",
            )
            table.update(signature)

        message = aio_pika.Message(
            payload,
            headers=table,
            content_type=h.CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            correlation_id=correlation_id,
            timestamp=datetime.now(UTC),
            type=message_type,
            user_id=self._link.user,
            reply_to=reply_to,
            expiration=expiration,
        )
        await self._send(exchange, routing_key, message)
        logger.debug("published %s %s to %s", message_type, message_id, exchange)
        return message_id

    async def republish(
        self,
        exchange: str,
        routing_key: str,
        message: aio_pika.abc.AbstractMessage,
        headers: Mapping[str, Any],
    ) -> None:
        """Publish a copy of a received message with extra transport headers.

        The copy keeps the body and properties but is sent under our own broker
        account (RabbitMQ refuses any other ``user_id``); the original publisher
        is kept in a header instead.
        """
        table = dict(message.headers or {})
        if message.user_id and message.user_id != self._link.user:
            table[h.ORIGINAL_PUBLISHER] = message.user_id
        table.update(headers)
        copy = aio_pika.Message(
            message.body,
            headers=table,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            type=message.type,
            user_id=self._link.user,
            reply_to=message.reply_to,
        )
        await self._send(exchange, routing_key, copy)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        self._exchanges.clear()
        if channel is not None and not channel.is_closed:
            await _close_quietly(channel)
        await asyncio.gather(*list(self._closing))

    async def _send(
        self, exchange: str, routing_key: str, message: aio_pika.Message
    ) -> None:
        target = await self._exchange(exchange)
        try:
            await target.publish(
                message,
                routing_key,
                mandatory=True,
                timeout=self._confirm_timeout,
            )
        except aiormq.exceptions.PublishError as exc:
            raise MessageReturned(exchange, routing_key, str(exc.args[0])) from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise PublishNacked(
                f"broker refused message {message.message_id} to {exchange!r}"
            ) from exc
        except TimeoutError as exc:
            self._forget_channel()
            raise ConfirmTimeout(
                f"no confirm for message {message.message_id} within "
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

    async def _exchange(self, name: str) -> AbstractExchange:
        channel = await self._open_channel()
        exchange = self._exchanges.get(name)
        if exchange is None:
            exchange = await channel.get_exchange(name, ensure=False)
            self._exchanges[name] = exchange
        return exchange

    async def _open_channel(self) -> AbstractChannel:
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        async with self._opening:
            if self._channel is None or self._channel.is_closed:
                self._exchanges.clear()
                try:
                    self._channel = await self._link.connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                except CONNECTION_ERRORS as exc:
                    raise BrokerUnavailable(f"cannot open a channel: {exc}") from exc
        return self._channel

    def _forget_channel(self) -> None:
        """Drop a channel we no longer trust; the next publish opens a fresh one.

        The old channel is closed in the background: left open, each confirm
        timeout would leak one channel on the connection until it reconnects.
        """
        channel, self._channel = self._channel, None
        self._exchanges.clear()
        if channel is not None and not channel.is_closed:
            task = asyncio.create_task(_close_quietly(channel))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)


async def _close_quietly(channel: AbstractChannel) -> None:
    with contextlib.suppress(*CONNECTION_ERRORS):
        await channel.close()
