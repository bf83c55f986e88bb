"""A bare AMQP 0-9-1 publisher that can put bytes on the wire no library would.

aio-pika and pamqp only encode valid header tables. Other clients, and attackers,
are not so careful, and RabbitMQ forwards a table whose key is not UTF-8 as it
is. This client speaks just enough of the protocol (handshake, one channel in
confirm mode, publish) to send such a message, so the tests can check what a
Baton consumer does when pamqp cannot decode a delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from pamqp import body, commands, frame, header
from pamqp.exceptions import UnmarshalingException

FrameValue = Any
FRAME_MAX = 131072


class RawPublisher:
    """One connection and one confirm-mode channel, driven frame by frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer
        self._buffer = b""

    @classmethod
    async def connect(cls, url: str) -> RawPublisher:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(
            parts.hostname or "localhost", parts.port or 5672
        )
        client = cls(reader, writer)
        await client._handshake(
            unquote(parts.username or "guest"),
            unquote(parts.password or "guest"),
            unquote(parts.path[1:]) or "/",
        )
        return client

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: bytes,
        properties: commands.Basic.Properties,
        *,
        patch: tuple[bytes, bytes] | None = None,
    ) -> None:
        """Publish and wait for the broker's ack.

        `patch` replaces bytes in the encoded content header with others of the
        same length, which keeps every length prefix valid while letting the
        test write what the encoder would refuse (a key that is not UTF-8).
        """
        content = frame.marshal(
            header.ContentHeader(0, len(payload), properties), channel_id=1
        )
        if patch is not None:
            old, new = patch
            if len(old) != len(new) or content.count(old) != 1:
                raise ValueError("a patch must match once and keep the length")
            content = content.replace(old, new)
        self._send(commands.Basic.Publish(exchange=exchange, routing_key=routing_key))
        self._writer.write(content)
        self._writer.write(frame.marshal(body.ContentBody(payload), channel_id=1))
        await self._writer.drain()
        reply = await self._expect(commands.Basic.Ack, commands.Basic.Nack)
        if isinstance(reply, commands.Basic.Nack):
            raise RuntimeError("the broker nacked the raw publish")

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            self._send(commands.Connection.Close(200, "bye", 0, 0), channel=0)
            await self._expect(commands.Connection.CloseOk)
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    async def _handshake(self, user: str, password: str, vhost: str) -> None:
        self._writer.write(frame.marshal(header.ProtocolHeader(), channel_id=0))
        await self._expect(commands.Connection.Start)
        self._send(
            commands.Connection.StartOk(
                client_properties={"connection_name": "baton-test:raw"},
                response=f"\0{user}\0{password}",
            ),
            channel=0,
        )
        tune = await self._expect(commands.Connection.Tune)
        self._send(
            commands.Connection.TuneOk(tune.channel_max, FRAME_MAX, 0), channel=0
        )
        self._send(commands.Connection.Open(virtual_host=vhost), channel=0)
        await self._expect(commands.Connection.OpenOk)
        self._send(commands.Channel.Open())
        await self._expect(commands.Channel.OpenOk)
        self._send(commands.Confirm.Select())
        await self._expect(commands.Confirm.SelectOk)

    def _send(self, value: FrameValue, channel: int = 1) -> None:
        self._writer.write(frame.marshal(value, channel_id=channel))

    async def _expect(self, *kinds: type[FrameValue]) -> FrameValue:
        while True:
            value = await self._next_frame()
            if isinstance(value, kinds):
                return value
            if isinstance(value, commands.Connection.Close | commands.Channel.Close):
                raise RuntimeError(f"the broker closed on us: {value.reply_text}")

    async def _next_frame(self) -> FrameValue:
        while True:
            if self._buffer:
                with contextlib.suppress(UnmarshalingException):
                    consumed, _channel, value = frame.unmarshal(self._buffer)
                    self._buffer = self._buffer[consumed:]
                    return value
            chunk = await self._reader.read(65536)
            if not chunk:
                raise ConnectionError("the broker closed the socket")
            self._buffer += chunk


def properties(message_id: str, message_type: str, **headers: Any) -> Any:
    """Baton-shaped message properties for a raw publish."""
    return commands.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,
        message_id=message_id,
        correlation_id=message_id,
        timestamp=datetime.now(UTC),
        message_type=message_type,
        headers=headers,
    )
