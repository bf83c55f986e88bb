"""The edge's way onto the broker: publish a command, or ask and await a reply.

The gateway owns the edge's broker connection (a :class:`~messaging.connection.Link`
that declares the exchanges it publishes to and sets up the private reply queue
as soon as it connects), one confirming publisher and one requester. Every call
is bounded in time: a broker that is down, silent, slow to confirm or refusing
messages ends a command with a :class:`~messaging.errors.PublishError` and a
request with that or a :class:`~messaging.errors.RequestTimeout`, never a hung
request. A call that outlives its deadline for any other reason than a late
confirm means the connection went silent: the gateway asks for a fresh one, so
readiness says so at once instead of after the heartbeat gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

from aio_pika.abc import AbstractConnection
from pydantic import BaseModel

from contracts import Contract
from messaging.connection import Link, cancelled_by_connection
from messaging.errors import BrokerUnavailable, ConfirmTimeout, RequestTimeout
from messaging.identity import Principal
from messaging.publisher import Publisher
from messaging.rpc import Requester
from messaging.settings import BrokerSettings
from messaging.signing import Signer
from messaging.topology import Topology

logger = logging.getLogger(__name__)

EDGE_CONNECTION: Final = "baton:edge"
# Time beyond the confirm deadline a publish may take (opening a channel on a
# connection that died silently) before the edge gives up on it.
PUBLISH_MARGIN: Final = 1.0


class CommandGateway:
    """Sends commands for principals; the only broker client of the edge."""

    def __init__(
        self,
        broker: BrokerSettings,
        *,
        publish_timeout: float,
        heartbeat: int | None = None,
        owner: str = "edge",
        signer: Signer | None = None,
    ) -> None:
        self.topology: Topology = broker.topology()
        self.link = Link(
            broker.amqp_url,
            name=EDGE_CONNECTION,
            on_connect=self._setup,
            heartbeat=heartbeat,
        )
        self._publish_timeout = publish_timeout
        self._send_deadline = publish_timeout + PUBLISH_MARGIN
        self.publisher = Publisher(
            self.link, confirm_timeout=publish_timeout, signer=signer
        )
        self.requester = Requester(
            self.link,
            self.publisher,
            self.topology,
            owner=owner,
            setup_timeout=publish_timeout,
        )

    @property
    def is_ready(self) -> bool:
        return self.link.is_ready

    async def start(self, wait: float) -> None:
        """Start connecting; give the first connection up to `wait` seconds."""
        await self.link.start(wait=wait)

    async def stop(self) -> None:
        await self.requester.close()
        await self.publisher.close()
        await self.link.stop()

    async def send(
        self,
        contract: Contract,
        payload: BaseModel,
        principal: Principal,
        *,
        correlation_id: str | None,
        message_id: str | None = None,
    ) -> str:
        """Publish a command and wait for the broker's confirm; its message id."""
        async with self._bounded(f"publishing {contract.name}", ConfirmTimeout):
            return await self.publisher.publish(
                self.topology.commands,
                contract.name,
                message_type=contract.name,
                body=payload,
                principal=principal,
                message_id=message_id,
                correlation_id=correlation_id,
            )

    async def ask(
        self,
        contract: Contract,
        payload: BaseModel,
        principal: Principal,
        *,
        correlation_id: str | None,
        timeout: float,
    ) -> BaseModel:
        """Send a request and return the worker's validated reply."""
        if contract.reply is None:
            raise ValueError(f"{contract.name} is not a request")
        # The requester bounds sending and waiting itself; this is a backstop.
        backstop = timeout + PUBLISH_MARGIN
        async with self._bounded(f"asking {contract.name}", RequestTimeout, backstop):
            return await self.requester.request(
                contract.name,
                payload,
                principal=principal,
                reply_model=contract.reply,
                timeout=timeout,
                correlation_id=correlation_id,
                send_timeout=self._send_deadline,
            )

    @contextlib.asynccontextmanager
    async def _bounded(
        self,
        what: str,
        timeout_error: type[ConfirmTimeout | RequestTimeout],
        extra: float = 0.0,
    ) -> AsyncIterator[None]:
        """At most the send deadline (plus `extra`); a dying connection is a 503."""
        deadline = self._send_deadline + extra
        try:
            async with asyncio.timeout(deadline):
                yield
        except TimeoutError:
            # The publisher's own confirm deadline is shorter: what ran out is
            # something else, such as a channel that never opened.
            self.link.mark_lost()
            raise timeout_error(f"{what} took over {deadline}s") from None
        except asyncio.CancelledError:
            if not cancelled_by_connection():
                raise
            self.link.mark_lost()
            raise BrokerUnavailable(f"the connection closed while {what}") from None

    async def _setup(self, connection: AbstractConnection) -> None:
        # Bounded, and a dying connection is a connection error, so that the
        # link tries again instead of waiting on a broker that went silent.
        try:
            async with asyncio.timeout(self._send_deadline):
                channel = await connection.channel()
                try:
                    # Idempotent; it lets the edge start before any service.
                    await self.topology.declare_exchanges(channel)
                finally:
                    await channel.close()
                await self.requester.open(connection)
        except asyncio.CancelledError:
            if not cancelled_by_connection():
                raise
            raise ConnectionError("the connection closed during set-up") from None
        except BrokerUnavailable as exc:
            raise ConnectionError(str(exc)) from exc
