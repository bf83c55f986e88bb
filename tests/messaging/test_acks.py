"""Batched acks never settle a delivery whose handler is still running."""

from __future__ import annotations

import asyncio
import json

import pytest

from messaging.handlers import Context
from messaging.settings import BrokerSettings
from tests.conftest import Broker
from tests.messaging.conftest import Calls, Say, StartConsumer, send, service_name, spec

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]


async def test_acks_below_a_running_handler_wait_and_those_above_go_alone(
    broker: Broker, start_consumer: StartConsumer, settings: BrokerSettings
) -> None:
    calls = Calls()
    release = asyncio.Event()

    async def handle(context: Context, payload: Say) -> None:
        calls.record(context, payload)
        if payload.text == "slow" and calls.count(context.message_id) == 1:
            await release.wait()

    service = service_name()
    roomy = settings.model_copy(update={"prefetch": 8})
    consumer = await start_consumer(service, [spec(handle)], settings_=roomy)
    slow = await send(broker, body=json.dumps({"text": "slow"}).encode())
    await calls.wait_for(lambda: calls.count(slow) == 1)
    fast = [await send(broker) for _ in range(5)]
    await calls.wait_for(lambda: all(calls.count(m) == 1 for m in fast))
    await asyncio.sleep(0.2)  # well past the ack batching delay

    # Losing the connection returns every unacked delivery to the queue.
    await consumer.link.connection.close()
    await calls.wait_for(lambda: calls.count(slow) == 2, timeout=15)
    release.set()
    await asyncio.sleep(0.3)

    assert [calls.count(m) for m in fast] == [1] * 5
    assert calls.count(slow) == 2
    topology = settings.topology()
    assert await broker.depth(topology.service_queue(service)) == 0
