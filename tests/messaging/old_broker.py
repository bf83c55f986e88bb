"""A relay to the real broker that announces itself as an older RabbitMQ.

Quorum queues need RabbitMQ 3.8. To see what a Baton process does on a broker
without them, a test connects through this relay: every byte passes unchanged
in both directions except the broker's first frame, ``Connection.Start``, whose
``version`` server property is rewritten. Queues are still declared on the real
broker, so the test can look at them there.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from urllib.parse import urlsplit, urlunsplit

from pamqp import commands, frame

FRAME_HEADER = struct.Struct(">BHI")  # type, channel, payload size
FRAME_END = 1


class OldBroker:
    """Relays AMQP connections to `upstream_url`, claiming to be `version`."""

    def __init__(self, upstream_url: str, version: str) -> None:
        self._upstream = urlsplit(upstream_url)
        self.version = version
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> OldBroker:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        """The upstream URL with the relay's address in place of the broker's."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        credentials = self._upstream.netloc.rpartition("@")[0]
        netloc = (
            f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
        )
        return urlunsplit(self._upstream._replace(netloc=netloc))

    async def _relay(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        broker_reader, broker_writer = await asyncio.open_connection(
            self._upstream.hostname or "localhost", self._upstream.port or 5672
        )
        self._writers.update((client_writer, broker_writer))
        for pump in (
            _pump(client_reader, broker_writer),
            self._announce_then_pump(broker_reader, client_writer),
        ):
            task = asyncio.create_task(pump)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _announce_then_pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await reader.readexactly(FRAME_HEADER.size)
            _kind, channel, size = FRAME_HEADER.unpack(head)
            raw = head + await reader.readexactly(size + FRAME_END)
        except asyncio.IncompleteReadError:
            writer.close()
            return
        _consumed, _channel, start = frame.unmarshal(raw)
        assert isinstance(start, commands.Connection.Start), start
        start.server_properties["version"] = self.version
        writer.write(frame.marshal(start, channel))
        await _pump(reader, writer)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(ConnectionError):
            writer.close()
