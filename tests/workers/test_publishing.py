"""What a handler may publish, under which ids, and how much, over the real broker."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from contracts import Contract
from contracts.catalogue import Strict
from messaging import headers as h
from messaging.errors import TooManyPublishes
from messaging.identity import Origin, Principal
from messaging.settings import BrokerSettings
from messaging.topology import Route
from tests.conftest import Broker
from tests.workers.conftest import Sender, StartWorker, eventually, user
from workers.context import ServiceContext
from workers.errors import IdentityChanged, PublishKeyReused
from workers.inbox import SqliteStore
from workers.publish_ids import PublishIds
from workers.service import Service
from workers.worker import Worker

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]


class Note(Strict):
    text: str


PING = Contract("t.ping", Note)
PONGED = Contract("t.ponged", Note, route=Route.EVENT)
SECRET = Contract("t.secret", Note, route=Route.EVENT)

RawPublish = Callable[[ServiceContext, Note], Awaitable[object]]


class Sink:
    """A service that handles each event once (inbox), recording what it saw."""

    def __init__(self, store: SqliteStore, *contracts: Contract) -> None:
        self.service = Service("sink")
        self.deliveries: list[tuple[str, str, Principal]] = []
        self.store = store

        async def record(ctx: ServiceContext, event: Note) -> None:
            self.deliveries.append((ctx.message_type, event.text, ctx.principal))
            async with ctx.once(store) as tx:
                tx.execute("INSERT INTO seen VALUES (?)", (event.text,))

        for contract in contracts or (PONGED,):
            self.service.handles(contract)(record)

    async def texts(self) -> list[str]:
        rows = await self.store.query("SELECT text FROM seen ORDER BY text")
        return [row["text"] for row in rows]


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    made = SqliteStore(tmp_path / "sink.sqlite3", "CREATE TABLE seen (text TEXT);")
    yield made
    made.close()


async def _quarantined(broker: Broker, service: str) -> Any:
    [parked] = await broker.drain(broker.topology.quarantine_queue(service), expect=1)
    return parked


async def _dead(broker: Broker, service: str) -> Any:
    [dead] = await broker.drain(broker.topology.dead_queue(service), expect=1)
    return dead


def _publisher_of(publish: RawPublish, *emits: Contract) -> Service:
    alpha = Service("alpha")
    alpha.emits(*emits)

    @alpha.handles(PING)
    async def ping(ctx: ServiceContext, cmd: Note) -> None:
        await publish(ctx, cmd)

    return alpha


async def _raw(
    ctx: ServiceContext,
    cmd: Note,
    *,
    exchange: str | None = None,
    routing_key: str = PONGED.name,
    message_type: str = PONGED.name,
    principal: Principal | None = None,
    **extra: Any,
) -> object:
    """Publish through ``ctx.publisher``, by default exactly as the hop may."""
    return await ctx.publisher.publish(
        exchange or ctx.topology.events,
        routing_key,
        message_type=message_type,
        body=cmd,
        principal=principal or ctx.passed_on(Origin.EVENT),
        **extra,
    )


async def _secret(ctx: ServiceContext, cmd: Note) -> object:
    return await _raw(ctx, cmd, routing_key=SECRET.name, message_type=SECRET.name)


async def _declared_type_under_another_key(ctx: ServiceContext, cmd: Note) -> object:
    return await _raw(ctx, cmd, routing_key=SECRET.name)


async def _event_as_a_command(ctx: ServiceContext, cmd: Note) -> object:
    return await _raw(ctx, cmd, exchange=ctx.topology.commands)


@pytest.mark.parametrize(
    ("publish", "named_in_reason"),
    [
        (_secret, "does not declare it"),
        (_declared_type_under_another_key, "routing key must be the message type"),
        (_event_as_a_command, "publishes command t.ponged"),
    ],
    ids=["undeclared-type", "another-routing-key", "another-route"],
)
async def test_a_raw_publish_the_declaration_does_not_allow_is_refused(
    run: StartWorker,
    sender: Sender,
    broker: Broker,
    store: SqliteStore,
    publish: RawPublish,
    named_in_reason: str,
) -> None:
    sink = Sink(store, PONGED, SECRET)
    await run(sink.service)
    alpha = await run(_publisher_of(publish, PONGED))
    await sender.command(PING, Note(text="leak"), user("alice"))

    dead = await _dead(broker, alpha.name)

    assert dead.headers[h.FAILURE_CODE] == "UndeclaredMessage"
    assert named_in_reason in str(dead.headers[h.FAILURE_REASON])
    assert sink.deliveries == []


async def _relabelled_as_scheduled(ctx: ServiceContext, cmd: Note) -> object:
    scheduled = dataclasses.replace(ctx.passed_on(Origin.EVENT), origin=Origin.SCHEDULE)
    return await _raw(ctx, cmd, principal=scheduled)


async def _with_a_transport_header(ctx: ServiceContext, cmd: Note) -> object:
    return await _raw(ctx, cmd, headers={"Baton-Original-Publisher": "edge"})


async def _with_a_reply_queue(ctx: ServiceContext, cmd: Note) -> object:
    return await _raw(ctx, cmd, reply_to=f"{ctx.topology.prefix}.edge.reply.abc")


async def _swallowing_the_refusal(ctx: ServiceContext, cmd: Note) -> object:
    try:
        return await _relabelled_as_scheduled(ctx, cmd)
    except IdentityChanged:
        return None


@pytest.mark.parametrize(
    ("publish", "named_in_reason"),
    [
        (_relabelled_as_scheduled, "schedule"),
        (_with_a_transport_header, "Baton-Original-Publisher"),
        (_with_a_reply_queue, "reply_to"),
        (_swallowing_the_refusal, "schedule"),
    ],
    ids=["origin-relabelled", "protocol-header", "reply-to", "refusal-swallowed"],
)
async def test_a_raw_publish_that_changes_what_the_hop_says_is_quarantined(
    run: StartWorker,
    sender: Sender,
    broker: Broker,
    store: SqliteStore,
    publish: RawPublish,
    named_in_reason: str,
) -> None:
    sink = Sink(store)
    await run(sink.service)
    alpha = await run(_publisher_of(publish, PONGED))
    await sender.command(PING, Note(text="relabel"), user("alice"))

    parked = await _quarantined(broker, alpha.name)

    assert parked.headers[h.FAILURE_CODE] == "IdentityChanged"
    assert named_in_reason in str(parked.headers[h.FAILURE_REASON])
    assert sink.deliveries == []


async def test_a_raw_publish_within_the_declaration_goes_out_with_a_derived_id(
    run: StartWorker, sender: Sender, store: SqliteStore
) -> None:
    sink = Sink(store)
    await run(sink.service)

    await run(_publisher_of(_raw, PONGED))
    await sender.command(PING, Note(text="fine"), user("alice"), message_id="m-1")

    await eventually(lambda: sink.deliveries, what="the event")
    expected = PublishIds("alpha", "m-1").next(PONGED.name, b'{"text":"fine"}')
    handled = await store.query("SELECT message_id FROM inbox")
    assert [row["message_id"] for row in handled] == [expected]
    assert sink.deliveries[0][2].actors == ("edge", "alpha")


def _swapping(attempts: list[int]) -> Service:
    """Publishes x and y from two tasks; the first attempt fails before y, the
    retry publishes them in the other order."""
    alpha = Service("alpha")
    alpha.emits(PONGED)

    @alpha.handles(PING)
    async def ping(ctx: ServiceContext, cmd: Note) -> None:
        attempts.append(ctx.attempt)
        x_sent, y_sent = asyncio.Event(), asyncio.Event()

        async def x() -> None:
            if ctx.attempt:
                await y_sent.wait()
            await ctx.publish_event(PONGED, Note(text="x"))
            x_sent.set()

        async def y() -> None:
            if not ctx.attempt:
                await x_sent.wait()
                raise RuntimeError("failed before publishing y")
            await ctx.publish_event(PONGED, Note(text="y"))
            y_sent.set()

        await asyncio.gather(asyncio.create_task(x()), asyncio.create_task(y()))

    return alpha


async def test_concurrent_publishes_keep_their_ids_when_a_retry_swaps_their_order(
    run: StartWorker, sender: Sender, store: SqliteStore
) -> None:
    attempts: list[int] = []
    sink = Sink(store)
    await run(sink.service)
    await run(_swapping(attempts))
    await sender.command(PING, Note(text="go"), user("alice"))

    await eventually(lambda: len(sink.deliveries) == 3, what="all three events")

    assert attempts == [0, 1]
    assert await sink.texts() == ["x", "y"]


async def test_a_publish_id_depends_on_the_content_not_on_the_order() -> None:
    first, second = PublishIds("alpha", "m-1"), PublishIds("alpha", "m-1")

    x1, y1, x1_again = (
        first.next("t.e", b"x"),
        first.next("t.e", b"y"),
        first.next("t.e", b"x"),
    )
    y2, x2, x2_again = (
        second.next("t.e", b"y"),
        second.next("t.e", b"x"),
        second.next("t.e", b"x"),
    )

    assert (x1, y1, x1_again) == (x2, y2, x2_again)
    assert len({x1, y1, x1_again}) == 3
    assert PublishIds("alpha", "m-2").next("t.e", b"x") != x1
    assert PublishIds("alpha", "m-1").next("t.other", b"x") != x1


async def test_a_key_pins_the_id_of_a_payload_that_differs_between_attempts(
    run: StartWorker, sender: Sender, store: SqliteStore
) -> None:
    sink = Sink(store)
    alpha = Service("alpha")
    alpha.emits(PONGED)

    @alpha.handles(PING)
    async def ping(ctx: ServiceContext, cmd: Note) -> None:
        await ctx.publish_event(
            PONGED, Note(text=f"attempt {ctx.attempt}"), key="the-one"
        )
        if ctx.attempt == 0:
            raise RuntimeError("fail after publishing")

    await run(sink.service)
    await run(alpha)
    await sender.command(PING, Note(text="go"), user("alice"))

    await eventually(lambda: len(sink.deliveries) == 2, what="both copies")
    assert await sink.texts() == ["attempt 0"]


async def test_one_key_for_two_messages_is_dead_lettered(
    run: StartWorker, sender: Sender, broker: Broker, store: SqliteStore
) -> None:
    async def twice(ctx: ServiceContext, cmd: Note) -> object:
        await ctx.publish_event(PONGED, Note(text="a"), key="k")
        return await ctx.publish_event(PONGED, Note(text="b"), key="k")

    sink = Sink(store)
    await run(sink.service)
    alpha = await run(_publisher_of(twice, PONGED))
    await sender.command(PING, Note(text="go"), user("alice"))

    dead = await _dead(broker, alpha.name)

    assert dead.headers[h.FAILURE_CODE] == PublishKeyReused.__name__
    assert "key 'k' twice" in str(dead.headers[h.FAILURE_REASON])


@pytest_asyncio.fixture
async def capped(
    settings: BrokerSettings, broker: Broker
) -> AsyncIterator[Callable[[Service], Awaitable[Worker]]]:
    """Start a service whose deliveries may publish five messages each."""
    started: list[Worker] = []

    async def start(service: Service) -> Worker:
        broker.track(service.name)
        worker = Worker(
            service, settings.model_copy(update={"max_publishes_per_delivery": 5})
        )
        await worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.stop()


async def _forever(ctx: ServiceContext, cmd: Note) -> object:
    n = 0
    while True:
        n += 1
        await ctx.publish_event(PONGED, Note(text=f"{n:03}"))


async def _forever_from_tasks(ctx: ServiceContext, cmd: Note) -> object:
    async def one(n: int) -> None:
        await ctx.publish_event(PONGED, Note(text=f"{n:03}"))

    # Each task's refusal is collected, not raised: the context still knows.
    tasks = [asyncio.create_task(one(n)) for n in range(50)]
    return await asyncio.gather(*tasks, return_exceptions=True)


async def _forever_swallowing(ctx: ServiceContext, cmd: Note) -> object:
    try:
        return await _forever(ctx, cmd)
    except TooManyPublishes:
        return None


@pytest.mark.parametrize(
    "publish",
    [_forever, _forever_from_tasks, _forever_swallowing],
    ids=["in-a-loop", "from-tasks", "refusal-swallowed"],
)
async def test_a_runaway_fan_out_is_quarantined_at_the_publish_cap(
    capped: Callable[[Service], Awaitable[Worker]],
    run: StartWorker,
    sender: Sender,
    broker: Broker,
    store: SqliteStore,
    publish: RawPublish,
) -> None:
    sink = Sink(store)
    await run(sink.service)
    alpha = await capped(_publisher_of(publish, PONGED))
    await sender.command(PING, Note(text="go"), user("alice"))

    parked = await _quarantined(broker, alpha.name)

    assert parked.headers[h.FAILURE_CODE] == "TooManyPublishes"
    reason = str(parked.headers[h.FAILURE_REASON])
    assert "more than 5 messages" in reason
    assert "BATON_MAX_PUBLISHES_PER_DELIVERY" in reason
    await eventually(lambda: len(sink.deliveries) == 5, what="the five allowed events")
    assert await broker.depth(broker.topology.dead_queue(alpha.name)) == 0
