"""A declared service against the real broker: who may send, what a hop passes on."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from contracts import Contract
from contracts.catalogue import Strict
from messaging import headers as h
from messaging.errors import (
    Forbidden,
    RemoteError,
    RemoteFailure,
    RemoteNotFound,
    RequestTimeout,
)
from messaging.identity import MAX_ACTORS, Origin, Principal, PrincipalKind
from messaging.topology import Route
from tests.conftest import Broker
from tests.workers.conftest import Sender, StartWorker, Tap, eventually, user
from workers.context import ServiceContext
from workers.errors import NotFound, UndeclaredMessage
from workers.service import Service
from workers.worker import Worker

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]


class Note(Strict):
    text: str


class Echo(Strict):
    text: str


PING = Contract("t.ping", Note, roles=frozenset({"planner"}))
PONGED = Contract("t.ponged", Note, route=Route.EVENT)
ASK = Contract("t.ask", Note, reply=Echo)
HOP = Contract("t.hop", Note)
BOUNCE = Contract("t.bounce", Note)
RELAY = Contract("t.relay", Note, reply=Echo)


class Sink:
    """A service that records every event it receives."""

    def __init__(self, name: str = "sink") -> None:
        self.service = Service(name)
        self.seen: list[tuple[Principal, Note]] = []

        @self.service.handles(PONGED)
        async def record(ctx: ServiceContext, event: Note) -> None:
            self.seen.append((ctx.principal, event))


async def test_handler_gets_the_principal_and_payload_and_its_event_carries_the_chain(
    run: StartWorker, sender: Sender
) -> None:
    alpha = Service("alpha")
    alpha.emits(PONGED)
    handled: list[tuple[Principal, Note]] = []

    @alpha.handles(PING)
    async def ping(ctx: ServiceContext, cmd: Note) -> None:
        handled.append((ctx.principal, cmd))
        await ctx.publish_event(PONGED, Note(text=cmd.text + "!"))

    sink = Sink()
    await run(alpha)
    await run(sink.service)
    await sender.command(PING, Note(text="hi"), user("alice", "planner"))

    await eventually(lambda: sink.seen, what="the event at the sink")
    principal, cmd = handled[0]
    assert (principal.subject, principal.actors) == ("alice", ("edge",))
    assert isinstance(cmd, Note) and cmd.text == "hi"
    seen, event = sink.seen[0]
    assert seen.subject == "alice"
    assert seen.roles == frozenset({"planner"})
    assert seen.actors == ("edge", "alpha")
    assert seen.internal is True and seen.origin is Origin.EVENT
    assert event.text == "hi!"


@pytest.mark.parametrize(
    ("principal", "named_in_reason"),
    [
        (user("mallory", "viewer"), "planner"),
        (Principal.service("robot", ["planner"], origin=Origin.SCHEDULE), "service"),
    ],
    ids=["user-without-the-role", "service-principal-for-a-user-handler"],
)
async def test_a_sender_the_handler_does_not_accept_is_quarantined_unhandled(
    run: StartWorker,
    sender: Sender,
    broker: Broker,
    principal: Principal,
    named_in_reason: str,
) -> None:
    alpha = Service("alpha")
    handled: list[Note] = []

    @alpha.handles(PING)
    async def ping(ctx: ServiceContext, cmd: Note) -> None:
        handled.append(cmd)

    worker = await run(alpha)
    await sender.command(PING, Note(text="hi"), principal)

    [parked] = await _quarantined(broker, worker.name)
    assert parked.headers[h.FAILURE_CODE] == "Forbidden"
    assert named_in_reason in str(parked.headers[h.FAILURE_REASON])
    assert handled == []


async def test_publishing_an_undeclared_event_raises_and_dead_letters(
    run: StartWorker, sender: Sender, broker: Broker
) -> None:
    alpha = Service("alpha")
    raised: list[BaseException] = []

    @alpha.handles(PING)
    async def ping(ctx: ServiceContext, cmd: Note) -> None:
        try:
            await ctx.publish_event(PONGED, cmd)
        except UndeclaredMessage as exc:
            raised.append(exc)
            raise

    worker = await run(alpha)
    await sender.command(PING, Note(text="hi"), user("alice", "planner"))

    [dead] = await broker.drain(broker.topology.dead_queue(worker.name), expect=1)
    assert dead.headers[h.FAILURE_CODE] == "UndeclaredMessage"
    assert "emits()" in str(raised[0])


async def test_a_task_spawned_by_a_handler_publishes_for_the_same_principal(
    run: StartWorker, sender: Sender
) -> None:
    alpha = Service("alpha")
    alpha.emits(PONGED)

    async def follow_up(text: str) -> None:
        from messaging.handlers import current_context

        await current_context().publish_event(PONGED.name, Note(text=text))

    @alpha.handles(PING)
    async def ping(ctx: ServiceContext, cmd: Note) -> None:
        await asyncio.create_task(follow_up("from a task"))

    sink = Sink()
    await run(alpha)
    await run(sink.service)
    await sender.command(PING, Note(text="hi"), user("bob", "planner"))

    await eventually(lambda: sink.seen, what="the task's event")
    principal, event = sink.seen[0]
    assert (principal.subject, principal.actors) == ("bob", ("edge", "alpha"))
    assert event.text == "from a task"


async def test_a_hop_that_swaps_the_subject_is_quarantined_and_publishes_nothing(
    run: StartWorker, sender: Sender, broker: Broker
) -> None:
    alpha = Service("alpha")
    alpha.emits(PONGED)

    @alpha.handles(PING)
    async def ping(ctx: ServiceContext, cmd: Note) -> None:
        ctx.principal = dataclasses.replace(ctx.principal, subject="root")
        await ctx.publish_event(PONGED, cmd)

    sink = Sink()
    worker = await run(alpha)
    await run(sink.service)
    await sender.command(PING, Note(text="hi"), user("alice", "planner"))

    [parked] = await _quarantined(broker, worker.name)
    assert parked.headers[h.FAILURE_CODE] == "IdentityChanged"
    assert "'root'" in str(parked.headers[h.FAILURE_REASON])
    assert sink.seen == []


async def test_a_hop_that_adds_a_role_through_the_raw_publisher_is_quarantined(
    run: StartWorker, sender: Sender, broker: Broker
) -> None:
    alpha = Service("alpha")
    alpha.emits(PONGED)

    @alpha.handles(PING)
    async def ping(ctx: ServiceContext, cmd: Note) -> None:
        passed = ctx.passed_on(Origin.EVENT)
        elevated = dataclasses.replace(passed, roles=passed.roles | {"admin"})
        await ctx.publisher.publish(
            ctx.topology.events,
            PONGED.name,
            message_type=PONGED.name,
            body=cmd,
            principal=elevated,
        )

    sink = Sink()
    worker = await run(alpha)
    await run(sink.service)
    await sender.command(PING, Note(text="hi"), user("alice", "planner"))

    [parked] = await _quarantined(broker, worker.name)
    assert parked.headers[h.FAILURE_CODE] == "IdentityChanged"
    assert "admin" in str(parked.headers[h.FAILURE_REASON])
    assert sink.seen == []


async def test_a_loop_between_two_services_is_quarantined_at_the_depth_limit(
    run: StartWorker, sender: Sender, broker: Broker, settings: Any
) -> None:
    alpha, beta = Service("alpha"), Service("beta")
    alpha.emits(BOUNCE)
    beta.emits(HOP)
    hops: list[tuple[str, ...]] = []

    @alpha.handles(HOP)
    async def hop(ctx: ServiceContext, cmd: Note) -> None:
        hops.append(ctx.principal.actors)
        await ctx.send_command(BOUNCE, cmd)

    @beta.handles(BOUNCE)
    async def bounce(ctx: ServiceContext, cmd: Note) -> None:
        hops.append(ctx.principal.actors)
        await ctx.send_command(HOP, cmd)

    first = await run(alpha)
    await run(beta)
    await sender.command(HOP, Note(text="round"), user("alice"))

    [parked] = await _quarantined(broker, first.name)
    assert parked.headers[h.FAILURE_CODE] == "ChainTooDeep"
    assert "alpha > beta > alpha" in str(parked.headers[h.FAILURE_REASON])
    assert len(hops) == settings.max_chain_depth
    assert max(len(chain) for chain in hops) == settings.max_chain_depth


async def test_a_service_that_feeds_itself_is_quarantined_at_the_depth_limit(
    run: StartWorker, sender: Sender, broker: Broker, settings: Any
) -> None:
    hops: list[int] = []
    alpha = _self_feeding(hops)

    worker = await run(alpha)
    await sender.command(HOP, Note(text="again"), user("alice"))

    [parked] = await _quarantined(broker, worker.name)
    assert parked.headers[h.FAILURE_CODE] == "ChainTooDeep"
    assert hops == list(range(1, settings.max_chain_depth + 1))


def _self_feeding(hops: list[int]) -> Service:
    """A service whose handler sends the same command to itself again."""
    alpha = Service("alpha")
    alpha.emits(HOP)

    @alpha.handles(HOP)
    async def hop(ctx: ServiceContext, cmd: Note) -> None:
        hops.append(len(ctx.principal.actors))
        await ctx.send_command(HOP, cmd)

    return alpha


def _oracle() -> Service:
    oracle = Service("oracle")

    @oracle.handles(ASK)
    async def ask(ctx: ServiceContext, question: Note) -> Echo:
        if question.text == "missing":
            raise NotFound("nothing is called missing")
        if question.text == "slow":
            await asyncio.sleep(1.5)
        return Echo(
            text=f"{ctx.principal.subject}:{question.text}:{ctx.principal.actors}"
        )

    return oracle


def _asker(outcomes: list[object], *, timeout: float | None = None) -> Service:
    alpha = Service("alpha")
    alpha.requests(ASK)

    @alpha.handles(PING)
    async def ping(ctx: ServiceContext, cmd: Note) -> None:
        try:
            outcomes.append(await ctx.request(ASK, cmd, Echo, timeout=timeout))
        except (RemoteError, RequestTimeout) as exc:
            outcomes.append(exc)

    return alpha


async def test_a_request_gets_a_typed_reply_for_the_same_principal(
    run: StartWorker, sender: Sender
) -> None:
    outcomes: list[object] = []
    await run(_oracle())
    await run(_asker(outcomes))
    await sender.command(PING, Note(text="hi"), user("alice", "planner"))

    await eventually(lambda: outcomes, what="the reply")
    assert outcomes == [Echo(text="alice:hi:('edge', 'alpha')")]


async def test_a_callee_error_comes_back_as_a_remote_error_with_its_type(
    run: StartWorker, sender: Sender
) -> None:
    outcomes: list[object] = []
    await run(_oracle())
    await run(_asker(outcomes))
    await sender.command(PING, Note(text="missing"), user("alice", "planner"))

    await eventually(lambda: outcomes, what="the error reply")
    [error] = outcomes
    assert isinstance(error, RemoteNotFound)
    assert error.error_type == "NotFound"
    assert "nothing is called missing" in error.message


def _strict_oracle() -> Service:
    """A callee that refuses, cannot find or crashes on cue, and answers otherwise."""
    oracle = Service("oracle")

    @oracle.handles(ASK)
    async def ask(ctx: ServiceContext, question: Note) -> Echo:
        if question.text == "secret":
            raise Forbidden(f"{ctx.principal.subject!r} may not ask for secrets")
        if question.text == "missing":
            raise NotFound("nothing is called missing")
        if question.text == "crash":
            raise RuntimeError("the oracle fell over")
        return Echo(text=question.text)

    return oracle


def _propagating_asker(calls: list[int]) -> Service:
    """A caller that lets whatever its request raises decide its own delivery."""
    alpha = Service("alpha")
    alpha.requests(ASK)

    @alpha.handles(PING)
    async def ping(ctx: ServiceContext, cmd: Note) -> None:
        calls.append(ctx.attempt)
        await ctx.request(ASK, cmd, Echo)

    return alpha


async def test_a_callee_refusal_is_quarantined_at_the_caller_and_asked_once(
    run: StartWorker, sender: Sender, broker: Broker
) -> None:
    calls: list[int] = []
    await run(_strict_oracle())
    caller = await run(_propagating_asker(calls))
    await sender.command(PING, Note(text="secret"), user("alice", "planner"))

    [parked] = await _quarantined(broker, caller.name)

    assert parked.headers[h.FAILURE_CODE] == "Forbidden"
    reason = str(parked.headers[h.FAILURE_REASON])
    assert reason == "Forbidden: 'alice' may not ask for secrets"
    assert calls == [0]
    [asked] = await _quarantined(broker, "oracle")
    assert asked.type == ASK.name
    assert await broker.depth(broker.topology.quarantine_queue("oracle")) == 0
    assert await broker.depth(broker.topology.dead_queue(caller.name)) == 0


async def test_a_chain_too_deep_at_the_callee_is_quarantined_at_the_caller(
    run: StartWorker, sender: Sender, broker: Broker, settings: Any
) -> None:
    calls: list[int] = []
    await run(_strict_oracle())
    caller = await run(_propagating_asker(calls))
    hops = tuple(f"hop{n}" for n in range(settings.max_chain_depth - 1))
    deep = Principal(
        subject="alice",
        kind=PrincipalKind.USER,
        roles=frozenset({"planner"}),
        origin=Origin.EVENT,
        internal=True,
        actors=("edge", *hops),
    )
    await sender.command(PING, Note(text="hi"), deep)

    [parked] = await _quarantined(broker, caller.name)

    assert parked.headers[h.FAILURE_CODE] == "ChainTooDeep"
    assert calls == [0]
    [asked] = await _quarantined(broker, "oracle")
    assert asked.headers[h.FAILURE_CODE] == "ChainTooDeep"


async def test_a_callee_not_found_dead_letters_the_caller_at_once(
    run: StartWorker, sender: Sender, broker: Broker
) -> None:
    calls: list[int] = []
    await run(_strict_oracle())
    caller = await run(_propagating_asker(calls))
    await sender.command(PING, Note(text="missing"), user("alice", "planner"))

    [dead] = await broker.drain(broker.topology.dead_queue(caller.name), expect=1)

    assert dead.headers[h.FAILURE_CODE] == "RemoteNotFound"
    assert "nothing is called missing" in str(dead.headers[h.FAILURE_REASON])
    assert calls == [0]


async def test_a_callee_crash_is_retried_by_the_caller_then_dead_lettered(
    run: StartWorker, sender: Sender, broker: Broker, settings: Any
) -> None:
    calls: list[int] = []
    await run(_strict_oracle())
    caller = await run(_propagating_asker(calls))
    await sender.command(PING, Note(text="crash"), user("alice", "planner"))

    [dead] = await broker.drain(broker.topology.dead_queue(caller.name), expect=1)

    assert dead.headers[h.FAILURE_CODE] == "RemoteFailure"
    assert "the oracle fell over" in str(dead.headers[h.FAILURE_REASON])
    assert calls == list(range(len(settings.retry_delays) + 1))
    assert await broker.depth(broker.topology.dead_queue("oracle")) == 0


async def test_a_callee_error_travels_up_a_chain_of_requests_under_its_own_name(
    run: StartWorker, sender: Sender
) -> None:
    relay = Service("relay")
    relay.requests(ASK)

    @relay.handles(RELAY)
    async def forward(ctx: ServiceContext, question: Note) -> Echo:
        return await ctx.request(ASK, question, Echo)

    await run(_strict_oracle())
    await run(relay)
    outcomes: dict[str, str] = {}
    for text in ("secret", "missing", "crash"):
        with pytest.raises(RemoteError) as caught:
            await sender.request(RELAY, Note(text=text), user("alice"), Echo)
        outcomes[text] = caught.value.error_type

    assert outcomes == {
        "secret": "Forbidden",
        "missing": "NotFound",
        "crash": "RuntimeError",
    }
    assert isinstance(caught.value, RemoteFailure)


async def test_a_request_without_a_reply_in_time_raises_request_timeout(
    run: StartWorker, sender: Sender
) -> None:
    outcomes: list[object] = []
    await run(_oracle())
    await run(_asker(outcomes, timeout=0.3))
    await sender.command(PING, Note(text="slow"), user("alice", "planner"))

    await eventually(lambda: outcomes, what="the timeout")
    assert isinstance(outcomes[0], RequestTimeout)


async def test_each_reply_goes_only_to_its_own_caller(
    run: StartWorker, sender: Sender
) -> None:
    await run(_oracle())
    alice, bob = user("alice"), user("bob")

    replies = await asyncio.gather(
        *(
            sender.request(ASK, Note(text=str(n)), who, Echo)
            for n, who in enumerate([alice, bob, alice, bob])
        )
    )

    assert [r.text.split(":")[:2] for r in replies] == [
        ["alice", "0"],
        ["bob", "1"],
        ["alice", "2"],
        ["bob", "3"],
    ]


async def test_an_undeclared_request_raises_before_anything_is_sent(
    run: StartWorker, sender: Sender, broker: Broker
) -> None:
    outcomes: list[object] = []
    alpha = Service("alpha")

    @alpha.handles(PING)
    async def ping(ctx: ServiceContext, cmd: Note) -> None:
        try:
            await ctx.request(ASK, cmd, Echo)
        except UndeclaredMessage as exc:
            outcomes.append(exc)

    await run(alpha)
    tap = await Tap.on(broker, broker.topology.commands, ASK.name)
    await sender.command(PING, Note(text="hi"), user("alice", "planner"))

    await eventually(lambda: outcomes, what="the refusal")
    assert "requests()" in str(outcomes[0])
    # Anything alpha had sent would sit in the tap before this marker.
    await sender.command(ASK, Note(text="marker"), user("marker"))
    [first] = await tap.principals()
    assert first.subject == "marker"
    assert await broker.depth(tap.queue) == 0


async def _quarantined(broker: Broker, service: str) -> list[Any]:
    return await broker.drain(broker.topology.quarantine_queue(service), expect=1)


async def test_a_chain_at_the_protocol_limit_is_refused_at_publish_time(
    sender: Sender, broker: Broker, settings: Any
) -> None:
    hops: list[int] = []
    alpha = _self_feeding(hops)

    deepest = settings.model_copy(update={"max_chain_depth": MAX_ACTORS})
    broker.track(alpha.name)
    worker = Worker(alpha, deepest)
    await worker.start()
    try:
        await sender.command(HOP, Note(text="again"), user("alice"))
        [parked] = await _quarantined(broker, worker.name)
    finally:
        await worker.stop()

    assert parked.headers[h.FAILURE_CODE] == "ChainTooDeep"
    assert f"allows {MAX_ACTORS} hops" in str(parked.headers[h.FAILURE_REASON])
    assert hops == list(range(1, MAX_ACTORS + 1))
