"""The worker pipeline through Baton, through raw aio-pika and through FastStream.

Each variant is one coroutine taking a :class:`RunSpec` and returning a
:class:`Timing`: the seconds from the first publish until the handler has seen
every message, and the CPU time this process spent meanwhile (publisher and
consumer both run here). CPU per message barely depends on what else the machine
is doing, so it compares variants even when the wall clock is noisy. Every variant
sets up its own consumer first (not timed), publishes in the same windows, and
deletes what it declared afterwards, even when the run fails.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from faststream.middlewares import AckPolicy
from faststream.rabbit import (
    Channel,
    ExchangeType,
    QueueType,
    RabbitBroker,
    RabbitExchange,
    RabbitQueue,
)

from bench.brokercpu import broker_pid, cpu_seconds
from bench.deployment import deploy
from bench.workload import (
    MESSAGE_TYPE,
    PAYLOAD,
    SERVICE,
    RunSpec,
    Tally,
    bench_prefix,
    counting_handler,
    delete_names,
    edge_principal,
    publish_in_windows,
)
from contracts.plans import PlanCreate
from messaging import headers as h
from messaging.connection import Link, broker_user
from messaging.consumer import Consumer
from messaging.identity import encode_principal
from messaging.publisher import Publisher
from messaging.settings import BrokerSettings

Pipeline = Callable[[RunSpec], Awaitable["Timing"]]
Send = Callable[[int], Awaitable[object]]

QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}
RAW_PRINCIPAL = edge_principal()


async def baton(spec: RunSpec) -> Timing:
    """Publisher -> Consumer with every check Baton makes, unsigned identity."""
    return await _baton(spec, signed=False)


async def baton_signed(spec: RunSpec) -> Timing:
    """The same, with every message signed and its signature verified."""
    return await _baton(spec, signed=True)


async def _baton(spec: RunSpec, *, signed: bool) -> Timing:
    settings = BrokerSettings(
        amqp_url=spec.amqp_url, prefix=bench_prefix(spec.prefix), prefetch=spec.prefetch
    )
    topology = settings.topology()
    tally = Tally(spec.messages)
    handler = counting_handler(tally)
    deployment = deploy(spec.amqp_url, handler, topology, signed=signed)
    consumer = Consumer(
        SERVICE, [handler], settings, topology=topology, trust=deployment.trust
    )
    link = Link(settings.amqp_url, name="bench:edge")
    publisher = Publisher(
        link, confirm_timeout=settings.confirm_timeout, signer=deployment.signer
    )
    principal = edge_principal()

    async def send(_index: int) -> None:
        await publisher.publish(
            topology.commands,
            MESSAGE_TYPE,
            message_type=MESSAGE_TYPE,
            body=PAYLOAD,
            principal=principal,
        )

    try:
        await consumer.start()
        await link.start()
        await link.wait_ready(10.0)
        return await timed(send, tally, spec)
    finally:
        await publisher.close()
        await link.stop()
        await consumer.stop()
        await delete_names(
            spec.amqp_url,
            topology.service_queues(SERVICE),
            [*topology.exchanges(), *topology.service_exchanges(SERVICE)],
        )


async def raw_aio_pika(spec: RunSpec) -> Timing:
    """The least a careful aio-pika program does for the same guarantees."""
    return await _raw(spec, _plain_message)


async def raw_identity_headers(spec: RunSpec) -> Timing:
    """The same raw loop carrying Baton's headers and properties, unchecked.

    Not a contender: it shows how much of Baton's cost is the identity on the
    wire (a header table AMQP clients encode and decode in Python) rather than
    Baton's own code.
    """
    return await _raw(spec, _message_like_baton)


def _plain_message(_account: str) -> aio_pika.Message:
    return aio_pika.Message(
        PAYLOAD.model_dump_json().encode(),
        content_type=h.CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=uuid.uuid4().hex,
        type=MESSAGE_TYPE,
    )


def _message_like_baton(account: str) -> aio_pika.Message:
    message_id = uuid.uuid4().hex
    return aio_pika.Message(
        PAYLOAD.model_dump_json().encode(),
        headers=encode_principal(RAW_PRINCIPAL),
        content_type=h.CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        correlation_id=message_id,
        timestamp=datetime.now(UTC),
        type=MESSAGE_TYPE,
        user_id=account,  # RabbitMQ checks it against the connection's account
    )


async def _raw(spec: RunSpec, message: Callable[[str], aio_pika.Message]) -> Timing:
    prefix = bench_prefix(spec.prefix)
    exchange_name, queue_name = f"{prefix}.commands", f"{prefix}.{SERVICE}"
    tally = Tally(spec.messages)

    async def on_message(message: AbstractIncomingMessage) -> None:
        tally.handled()
        await message.ack()

    account = broker_user(spec.amqp_url)
    consuming = await aio_pika.connect(spec.amqp_url)
    publishing = await aio_pika.connect(spec.amqp_url)
    try:
        channel = await consuming.channel()
        await channel.set_qos(prefetch_count=spec.prefetch)
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(queue_name, durable=True, arguments=QUORUM)
        await queue.bind(exchange, routing_key=MESSAGE_TYPE)
        await queue.consume(on_message)

        confirming = await publishing.channel(
            publisher_confirms=True, on_return_raises=True
        )
        target = await confirming.get_exchange(exchange_name, ensure=False)

        async def send(_index: int) -> None:
            await target.publish(message(account), MESSAGE_TYPE, mandatory=True)

        return await timed(send, tally, spec)
    finally:
        await publishing.close()
        await consuming.close()
        await delete_names(spec.amqp_url, [queue_name], [exchange_name])


async def faststream(spec: RunSpec) -> Timing:
    """FastStream's RabbitBroker: typed handler, ack after it, confirmed publish."""
    prefix = bench_prefix(spec.prefix)
    exchange = RabbitExchange(
        f"{prefix}.commands", type=ExchangeType.TOPIC, durable=True
    )
    queue = RabbitQueue(
        f"{prefix}.{SERVICE}",
        queue_type=QueueType.QUORUM,
        durable=True,
        routing_key=MESSAGE_TYPE,
    )
    tally = Tally(spec.messages)
    # Two brokers, as the other variants use two connections: one consumes,
    # one publishes. Logging is off so that FastStream's per-message INFO lines
    # (on by default) are not what is measured.
    consuming = RabbitBroker(spec.amqp_url, logger=None)
    publishing = RabbitBroker(spec.amqp_url, logger=None)

    @consuming.subscriber(
        queue,
        exchange,
        channel=Channel(prefetch_count=spec.prefetch),
        ack_policy=AckPolicy.REJECT_ON_ERROR,
    )
    async def handle(body: PlanCreate) -> None:
        tally.handled()

    async def send(_index: int) -> None:
        await publishing.publish(
            PAYLOAD,
            exchange=exchange,
            routing_key=MESSAGE_TYPE,
            persist=True,
            mandatory=True,
            message_id=uuid.uuid4().hex,
            message_type=MESSAGE_TYPE,
        )

    try:
        await consuming.start()
        await publishing.start()
        return await timed(send, tally, spec)
    finally:
        await publishing.stop()
        await consuming.stop()
        await delete_names(spec.amqp_url, [queue.name], [exchange.name])


@dataclass(frozen=True)
class Timing:
    """Wall-clock and CPU seconds of one run of `messages` messages.

    `broker_cpu_seconds` is the local broker's CPU time over the same span, when
    the broker runs on this machine (bench/brokercpu.py), else None.
    """

    messages: int
    seconds: float
    cpu_seconds: float
    broker_cpu_seconds: float | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us_per_message(self) -> float:
        return self.cpu_seconds / self.messages * 1e6

    @property
    def broker_cpu_us_per_message(self) -> float | None:
        if self.broker_cpu_seconds is None:
            return None
        return self.broker_cpu_seconds / self.messages * 1e6


async def timed(send: Send, tally: Tally, spec: RunSpec) -> Timing:
    """Wall and CPU time from the first publish until every message was handled."""
    loop = asyncio.get_running_loop()
    broker = broker_pid()
    broker_started = cpu_seconds(broker)
    started, cpu_started = loop.time(), time.process_time()
    await publish_in_windows(send, spec.messages, spec.window)
    deadline = 30.0 + spec.messages / 200
    try:
        await asyncio.wait_for(tally.done.wait(), deadline)
    except TimeoutError:
        raise RuntimeError(
            f"only {tally.count} of {tally.expected} messages were handled "
            f"within {deadline:.0f}s"
        ) from None
    elapsed, cpu = loop.time() - started, time.process_time() - cpu_started
    broker_now = cpu_seconds(broker)
    broker_cpu = (
        None
        if broker_started is None or broker_now is None
        else broker_now - broker_started
    )
    return Timing(spec.messages, elapsed, cpu, broker_cpu)


PIPELINES: dict[str, Pipeline] = {
    "baton": baton,
    "baton_signed": baton_signed,
    "raw_aio_pika": raw_aio_pika,
    "raw_identity_headers": raw_identity_headers,
    "faststream": faststream,
}


def pipelines() -> dict[str, Pipeline]:
    """Every variant of the worker pipeline, Baton's first."""
    return dict(PIPELINES)


async def compare(
    variants: dict[str, Pipeline], spec: RunSpec, repeat: int
) -> dict[str, dict[str, Any]]:
    """Interleaved repetitions of every variant; medians and paired ratios.

    Each repetition runs every variant once, starting with a different one each
    time, so a change in the machine's load hits all variants alike. A ratio is
    the median of the per-repetition ratios, which cancels most of that drift.
    """
    warmup = replace(spec, messages=min(spec.messages, 200))
    for pipeline in variants.values():
        await pipeline(warmup)

    names = list(variants)
    timings: dict[str, list[Timing]] = {name: [] for name in names}
    for repetition in range(repeat):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            timings[name].append(await variants[name](spec))

    rates = {name: [t.rate for t in runs] for name, runs in timings.items()}
    cpu = {name: [t.cpu_us_per_message for t in runs] for name, runs in timings.items()}
    figures = {name: _figures(name, rates, cpu) for name in names}
    for name, runs in timings.items():
        figures[name]["broker_cpu_us_per_msg"] = _median_or_none(
            [t.broker_cpu_us_per_message for t in runs]
        )
    return figures


def _median_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return round(statistics.median(known), 1) if known else None


def _figures(
    name: str, rates: dict[str, list[float]], cpu: dict[str, list[float]]
) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "msg_per_s": round(statistics.median(rates[name]), 1),
        "runs": [round(rate, 1) for rate in rates[name]],
        "ratio_to_raw": _paired_ratio(rates[name], rates.get("raw_aio_pika")),
        "cpu_us_per_msg": round(statistics.median(cpu[name]), 1),
        # Raw aio-pika's CPU per message over this variant's: like a rate ratio,
        # above 1 means cheaper than raw.
        "cpu_ratio_to_raw": _paired_ratio(cpu.get("raw_aio_pika", []), cpu[name]),
    }
    if name.startswith("baton"):
        figures["ratio_to_faststream"] = _paired_ratio(
            rates[name], rates.get("faststream")
        )
        figures["cpu_ratio_to_faststream"] = _paired_ratio(
            cpu.get("faststream", []), cpu[name]
        )
    return figures


def _paired_ratio(runs: list[float], baseline: list[float] | None) -> float | None:
    if not runs or not baseline:
        return None
    return round(
        statistics.median(a / b for a, b in zip(runs, baseline, strict=True)), 3
    )
