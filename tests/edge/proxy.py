"""A TCP proxy in front of the broker that can stop passing bytes, on demand.

A broker that dies cleanly closes its sockets, and clients notice at once. The
hard case is a connection that goes silent: a frozen VM, a dropped route, a
stuck load balancer. :class:`FreezableProxy` makes that case on purpose: while
frozen, it keeps every socket open but forwards nothing, in one direction or
both. Freezing only the way back (``to_client``) lets a publish reach the
broker while its confirm never comes back: a confirm that is really late.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit


class FreezableProxy:
    """Forwards 127.0.0.1:<port> to the broker until told to freeze."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self._target_url = target_url
        self._target = (parts.hostname or "localhost", parts.port or 5672)
        self._to_broker = asyncio.Event()
        self._to_client = asyncio.Event()
        self._to_broker.set()
        self._to_client.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        # The local port of each connection to the broker: the broker (and its
        # management API) sees the proxied client at this port.
        self.broker_side_ports: list[int] = []

    @property
    def url(self) -> str:
        """The broker URL, with the proxy in place of the broker's address."""
        parts = urlsplit(self._target_url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self, *, to_broker: bool = True, to_client: bool = True) -> None:
        """Stop forwarding in the given directions; sockets stay open."""
        if to_broker:
            self._to_broker.clear()
        if to_client:
            self._to_client.clear()

    def thaw(self) -> None:
        """Forward again, in both directions, what was held back included."""
        self._to_broker.set()
        self._to_client.set()

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.thaw()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update({client_writer, broker_writer})
        self.broker_side_ports.append(broker_writer.get_extra_info("sockname")[1])
        for reader, writer, flowing in (
            (client_reader, broker_writer, self._to_broker),
            (broker_reader, client_writer, self._to_client),
        ):
            task = asyncio.create_task(self._pipe(reader, writer, flowing))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        flowing: asyncio.Event,
    ) -> None:
        try:
            while data := await reader.read(65536):
                await flowing.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()
