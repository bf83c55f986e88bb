"""Request and reply through a real consumer: typed replies, errors, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from messaging import headers as h
from messaging.connection import Link
from messaging.errors import RemoteError, RequestTimeout
from messaging.handlers import Context
from messaging.publisher import Publisher
from messaging.rpc import Requester
from messaging.settings import BrokerSettings
from tests.conftest import Broker
from tests.messaging.conftest import (
    ECHO,
    Said,
    Say,
    StartConsumer,
    alice,
    last_death,
    service_name,
    spec,
    unattended_queue,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

NewRequester = Callable[[], Awaitable[Requester]]


@pytest_asyncio.fixture
async def new_requester(settings: BrokerSettings) -> AsyncIterator[NewRequester]:
    """Requesters on their own connections, as two edge processes would have."""
    opened: list[tuple[Link, Publisher, Requester]] = []

    async def open_one() -> Requester:
        link = Link(settings.amqp_url, name=f"baton:{service_name()}")
        await link.start()
        await link.wait_ready(10)
        publisher = Publisher(link, confirm_timeout=settings.confirm_timeout)
        requester = Requester(link, publisher, settings.topology(), owner="edge")
        opened.append((link, publisher, requester))
        return requester

    yield open_one
    for link, publisher, requester in opened:
        await requester.close()
        await publisher.close()
        await link.stop()


async def _answer(context: Context, payload: Say) -> Said:
    if payload.text == "fail":
        raise ValueError("no such plan")
    await asyncio.sleep(0.05 if payload.text.startswith("slow") else 0)
    return Said(text=payload.text.upper(), by=context.principal.subject)


async def test_a_request_gets_its_typed_reply(
    start_consumer: StartConsumer, new_requester: NewRequester
) -> None:
    await start_consumer(service_name(), [spec(_answer)])
    requester = await new_requester()

    reply = await requester.request(
        ECHO, Say(text="hi"), principal=alice(), reply_model=Said, timeout=10
    )

    assert reply == Said(text="HI", by="alice")
    assert requester.pending == 0


async def test_a_handler_error_reaches_the_caller_as_remote_error(
    broker: Broker,
    start_consumer: StartConsumer,
    new_requester: NewRequester,
    settings: BrokerSettings,
) -> None:
    service = service_name()
    await start_consumer(service, [spec(_answer)])
    requester = await new_requester()

    with pytest.raises(RemoteError) as caught:
        await requester.request(
            ECHO, Say(text="fail"), principal=alice(), reply_model=Said, timeout=10
        )

    assert caught.value.error_type == "ValueError"
    assert "no such plan" in caught.value.message
    # The caller got the error; the request itself is settled, not retried.
    assert await broker.depth(settings.topology().service_queue(service)) == 0
    assert await broker.depth(settings.topology().dead_queue(service)) == 0


async def test_a_forbidden_request_is_answered_and_quarantined(
    broker: Broker,
    start_consumer: StartConsumer,
    new_requester: NewRequester,
    settings: BrokerSettings,
) -> None:
    service = service_name()
    admin_only = spec(_answer, required_roles=frozenset({"admin"}))
    await start_consumer(service, [admin_only])
    requester = await new_requester()

    with pytest.raises(RemoteError) as caught:
        await requester.request(
            ECHO, Say(text="hi"), principal=alice(), reply_model=Said, timeout=10
        )

    assert caught.value.error_type == "Forbidden"
    parked = await broker.drain(settings.topology().quarantine_queue(service), expect=1)
    assert parked[0].headers[h.FAILURE_CODE] == "Forbidden"


async def test_a_request_nobody_answers_times_out_and_expires(
    broker: Broker, new_requester: NewRequester
) -> None:
    # A queue is bound (so the request is routable) but no consumer reads it.
    service = service_name()
    await unattended_queue(broker, service)
    requester = await new_requester()

    with pytest.raises(RequestTimeout):
        await requester.request(
            ECHO, Say(text="hi"), principal=alice(), reply_model=Said, timeout=0.5
        )

    assert requester.pending == 0
    # The request expires with its caller's patience instead of being handled
    # late; the broker parks it in quarantine, marked as expired.
    quarantine = broker.topology.quarantine_queue(service)
    [expired] = await broker.drain(quarantine, expect=1)
    assert last_death(expired) == (broker.topology.service_queue(service), "expired")
    assert expired.type == ECHO


async def test_concurrent_callers_each_get_their_own_reply(
    start_consumer: StartConsumer, new_requester: NewRequester
) -> None:
    await start_consumer(service_name(), [spec(_answer)])
    first, second = await new_requester(), await new_requester()
    texts = [f"slow-{n}" for n in range(6)]

    replies = await asyncio.gather(
        *(
            (first if n % 2 else second).request(
                ECHO, Say(text=text), principal=alice(), reply_model=Said, timeout=10
            )
            for n, text in enumerate(texts)
        )
    )

    assert [reply.text for reply in replies] == [text.upper() for text in texts]


async def test_a_reply_with_a_foreign_correlation_id_is_dropped(
    broker: Broker, new_requester: NewRequester
) -> None:
    # The test plays the callee by hand, so it can forge replies in between.
    queue = await unattended_queue(broker, service_name())
    requester = await new_requester()
    pending = asyncio.create_task(
        requester.request(
            ECHO, Say(text="hi"), principal=alice(), reply_model=Said, timeout=10
        )
    )

    [request] = await broker.drain(queue.name, expect=1)
    for correlation_id, text in (("forged-id", "FORGED"), (request.message_id, "REAL")):
        await broker.publish_raw(
            broker.topology.reply_exchange_for(request.reply_to or "") or "",
            request.reply_to or "",
            Said(text=text, by="mallory").model_dump_json().encode(),
            correlation_id=correlation_id,
            content_type="application/json",
        )

    reply = await pending
    assert reply.text == "REAL"
    assert requester.pending == 0
