"""A declared service, running: its consumer against the broker."""

from __future__ import annotations

import asyncio
import logging

from messaging.consumer import Consumer
from messaging.settings import BrokerSettings
from messaging.signing import Signer
from messaging.trust import TrustPolicy
from workers.service import Service

logger = logging.getLogger(__name__)


class Worker:
    """Consumes one service's queue with the handlers the service declared."""

    def __init__(
        self,
        service: Service,
        settings: BrokerSettings,
        *,
        trust: TrustPolicy | None = None,
        signer: Signer | None = None,
    ) -> None:
        """`trust` and `signer` come from the startup self-check (None in dev)."""
        self.service = service
        self.consumer = Consumer(
            service.name,
            service.declaration().handlers,
            settings,
            trust=trust,
            signer=signer,
        )

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def queue(self) -> str:
        return self.consumer.topology.service_queue(self.service.name)

    @property
    def essential_tasks(self) -> list[asyncio.Task[None]]:
        """The tasks without which this worker has stopped taking messages.

        The broker link's loop ends only when it gives up for good (a broker it
        cannot use), and then nothing reconnects the consumer.
        """
        task = self.consumer.link.task
        return [] if task is None else [task]

    async def start(self, timeout: float = 10.0) -> None:
        """Declare the service's queues and bindings and start consuming."""
        await self.consumer.start(timeout)
        logger.info("%s: consuming %s", self.name, self.queue)

    async def stop(self) -> None:
        """Finish the messages in flight, then disconnect."""
        await self.consumer.stop()
