"""The edge's way onto the broker: publish a command, or ask and await a reply.

The gateway owns the edge's broker connection (a :class:`~messaging.connection.Link`
that declares the exchanges it publishes to), one confirming publisher and one
requester with a private reply queue. Every call is bounded in time: a broker
that is down, slow to confirm or refusing messages ends the call with a
:class:`~messaging.errors.PublishError`, never a hung request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aio_pika.abc import AbstractConnection
from pydantic import BaseModel

from contracts import Contract
from messaging.connection import Link
from messaging.errors import ConfirmTimeout
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
        owner: str = "edge",
        signer: Signer | None = None,
    ) -> None:
        self.topology: Topology = broker.topology()
        self.link = Link(broker.amqp_url, name=EDGE_CONNECTION, on_connect=self._setup)
        self._publish_timeout = publish_timeout
        self.publisher = Publisher(
            self.link, confirm_timeout=publish_timeout, signer=signer
        )
        self.requester = Requester(
            self.link, self.publisher, self.topology, owner=owner
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
    ) -> str:
        """Publish a command and wait for the broker's confirm; its message id."""
        try:
            async with asyncio.timeout(self._publish_timeout + PUBLISH_MARGIN):
                return await self.publisher.publish(
                    self.topology.commands,
                    contract.name,
                    message_type=contract.name,
                    body=payload,
                    principal=principal,
                    correlation_id=correlation_id,
                )
        except TimeoutError:
            raise ConfirmTimeout(
                f"publishing {contract.name} took over {self._publish_timeout}s"
            ) from None

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
        return await self.requester.request(
            contract.name,
            payload,
            principal=principal,
            reply_model=contract.reply,
            timeout=timeout,
            correlation_id=correlation_id,
        )

    async def _setup(self, connection: AbstractConnection) -> None:
        # Declaring is idempotent; it lets the edge start before any service.
        channel = await connection.channel()
        try:
            await self.topology.declare_exchanges(channel)
        finally:
            await channel.close()
