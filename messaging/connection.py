"""A broker connection that is noticed when it dies and comes back by itself.

aio-pika's robust connection restores channels in the background, but a consumer
whose connection died of a frame the client could not decode was seen not to come
back. Baton keeps the loop in its own hands instead: connect, set up, wait until
the connection or any channel we watch closes, tear everything down, back off and
start again from a clean slate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection
from pydantic import SecretStr

from messaging.errors import BatonError, BrokerUnavailable

logger = logging.getLogger(__name__)

# Errors that mean "the link to the broker is gone": reconnect, never crash.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    *aio_pika.exceptions.CONNECTION_EXCEPTIONS,
    asyncio.TimeoutError,
)

OnConnect = Callable[[AbstractConnection], Awaitable[None]]


def broker_user(url: str | SecretStr) -> str:
    """The account name in an AMQP URL (RabbitMQ's default when there is none)."""
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    return unquote(urlsplit(raw).username or "guest")


def redacted(url: str | SecretStr) -> str:
    """The URL without its password, fit for a log line."""
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    parts = urlsplit(raw)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{broker_user(raw)}@{host}{port}{parts.path}"


class Link:
    """Keeps one connection to the broker open, reconnecting with backoff."""

    def __init__(
        self,
        url: str | SecretStr,
        *,
        name: str,
        on_connect: OnConnect | None = None,
        connect_timeout: float = 5.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._url = url if isinstance(url, SecretStr) else SecretStr(url)
        self.name = name
        self.user = broker_user(self._url)
        self._on_connect = on_connect
        self._connect_timeout = connect_timeout
        self._max_backoff = max_backoff
        self._connection: AbstractConnection | None = None
        self._lost: asyncio.Event = asyncio.Event()
        self._ready = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0
        # Why the last attempt failed, so that "could not reach the broker"
        # can say what the broker answered (refused login, a queue declared
        # with other arguments) instead of only that time ran out.
        self.last_error: BaseException | None = None

    @property
    def is_ready(self) -> bool:
        """True while a connection is open and set up."""
        return self._ready.is_set() and self._connection is not None

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The connect loop, while it runs; it ends only on stop() or giving up."""
        return self._task

    @property
    def connection(self) -> AbstractConnection:
        """The open connection, or BrokerUnavailable when there is none now."""
        if not self.is_ready or self._connection is None:
            raise BrokerUnavailable(f"{self.name} has no connection to the broker")
        return self._connection

    async def start(self, wait: float | None = None) -> None:
        """Start the connect loop; with `wait`, give the first connection that long."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"link:{self.name}")
        if wait is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait)

    async def wait_ready(self, timeout: float) -> None:
        """Wait for a usable connection, raising BrokerUnavailable after `timeout`."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            cause = f": {self.last_error}" if self.last_error is not None else ""
            raise BrokerUnavailable(
                f"{self.name} could not reach the broker within {timeout}s{cause}"
            ) from self.last_error

    def watch(self, channel: AbstractChannel) -> None:
        """Treat the loss of `channel` like the loss of the whole connection."""
        channel.close_callbacks.add(self._on_closed)

    def mark_lost(self) -> None:
        """Ask for a fresh connection, as when a consumer vanished under us."""
        self._lost.set()

    async def stop(self) -> None:
        """Close the connection and end the loop."""
        self._stopping = True
        self._lost.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            try:
                await self._serve_one_connection()
                backoff = 0.05
            except CONNECTION_ERRORS as exc:
                self.last_error = exc
                logger.warning("%s: broker connection failed: %s", self.name, exc)
            except BatonError as exc:
                # Set-up refused for good (a broker without quorum queues):
                # trying again would only repeat it.
                self.last_error = exc
                logger.error("%s: cannot use this broker: %s", self.name, exc)
                return
            if self._stopping:
                break
            self.reconnects += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _serve_one_connection(self) -> None:
        self._lost.clear()
        connection = await aio_pika.connect(
            self._url.get_secret_value(),
            timeout=self._connect_timeout,
            client_properties={"connection_name": self.name},
        )
        connection.close_callbacks.add(self._on_closed)
        try:
            self._connection = connection
            if self._on_connect is not None:
                await self._on_connect(connection)
            self._ready.set()
            logger.info("%s: connected to %s", self.name, redacted(self._url))
            await self._lost.wait()
        finally:
            self._ready.clear()
            self._connection = None
            with contextlib.suppress(*CONNECTION_ERRORS):
                await asyncio.wait_for(connection.close(), self._connect_timeout)
        if not self._stopping:
            logger.warning("%s: lost the broker connection, reconnecting", self.name)

    def _on_closed(self, _sender: Any, _exc: BaseException | None = None) -> None:
        self._lost.set()
