"""Deliveries that are awkward to settle still end somewhere, and the worker goes on.

A header the AMQP client cannot encode again, a handler answering with the wrong
type, a payload model that fails in an unforeseen way, ids that try to forge log
lines: each delivery is settled (quarantined, dead-lettered, answered or
rejected to quarantine), never left unacked to block the prefetch window.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, model_validator

from messaging import headers as h
from messaging.errors import RemoteError
from messaging.handlers import Context, HandlerSpec
from messaging.identity import encode_principal
from messaging.logcontext import MessageContextFilter
from messaging.rpc import Requester
from messaging.settings import BrokerSettings
from tests.conftest import Broker
from tests.messaging.conftest import (
    ECHO,
    Calls,
    Handler,
    Said,
    Say,
    StartConsumer,
    alice,
    last_death,
    send,
    service_name,
    spec,
)
from tests.messaging.raw_amqp import RawPublisher, properties

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

PREFETCH = 2
BODY = json.dumps({"text": "hello"}).encode()


async def _raw_publish(
    amqp_url: str, broker: Broker, headers: dict[str, Any], patch: tuple[bytes, bytes]
) -> str:
    message_id = uuid.uuid4().hex
    raw = await RawPublisher.connect(amqp_url)
    try:
        await raw.publish(
            broker.topology.commands,
            ECHO,
            BODY,
            properties(message_id, ECHO, **headers),
            patch=patch,
        )
    finally:
        await raw.close()
    return message_id


async def _with_small_prefetch(
    start_consumer: StartConsumer, settings: BrokerSettings, handler: Handler
) -> str:
    """A consumer whose whole prefetch a few stuck deliveries would fill."""
    service = service_name()
    narrow = settings.model_copy(update={"prefetch": PREFETCH})
    await start_consumer(service, [spec(handler)], settings_=narrow)
    return service


async def test_an_identity_header_not_in_utf8_is_quarantined_and_the_worker_goes_on(
    amqp_url: str,
    broker: Broker,
    start_consumer: StartConsumer,
    settings: BrokerSettings,
) -> None:
    calls = Calls()
    service = await _with_small_prefetch(start_consumer, settings, calls.handler())

    # pamqp decodes a long string that is not UTF-8 as bytes, and refuses to
    # encode bytes: a copy to quarantine must still be made.
    headers = {**encode_principal(alice()), h.SUBJECT: "QQQQQ"}
    bad = [
        await _raw_publish(amqp_url, broker, headers, (b"QQQQQ", b"Q\xffQQQ"))
        for _ in range(PREFETCH + 1)
    ]
    good = await send(broker)

    parked = await broker.drain(
        settings.topology().quarantine_queue(service), expect=len(bad)
    )
    await calls.wait_for(lambda: calls.count(good) == 1)
    assert sorted(str(message.message_id) for message in parked) == sorted(bad)
    assert {message.headers[h.FAILURE_CODE] for message in parked} == {
        "HeaderTypeError"
    }
    assert parked[0].headers[h.SUBJECT] == b"Q\xffQQQ"


async def test_a_foreign_header_that_is_not_utf8_survives_retries_into_the_dead_queue(
    amqp_url: str,
    broker: Broker,
    start_consumer: StartConsumer,
    settings: BrokerSettings,
) -> None:
    calls = Calls()
    failing = calls.handler(RuntimeError("boom"))
    service = await _with_small_prefetch(start_consumer, settings, failing)

    headers = {**encode_principal(alice()), "trace": "ZZZZ"}
    message_id = await _raw_publish(amqp_url, broker, headers, (b"ZZZZ", b"Z\xffZZ"))

    [dead] = await broker.drain(settings.topology().dead_queue(service), expect=1)
    assert dead.message_id == message_id
    assert calls.attempts(message_id) == [0, 1, 2]
    assert dead.headers["trace"] == b"Z\xffZZ"
    assert dead.headers[h.FAILURE_CODE] == "RuntimeError"


class Brittle(BaseModel):
    """A payload model whose validator fails in a way pydantic does not wrap."""

    model_config = ConfigDict(extra="forbid")

    text: str

    @model_validator(mode="before")
    @classmethod
    def _lookup(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("text") == "hello":
            raise KeyError("a lookup table the model relied on is missing")
        return data


async def test_an_unforeseen_failure_before_the_handler_rejects_to_quarantine(
    broker: Broker,
    start_consumer: StartConsumer,
    settings: BrokerSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = Calls()

    async def handle(context: Context, payload: Brittle) -> None:
        calls.record(context, Say(text=payload.text))

    service = service_name()
    brittle = HandlerSpec(ECHO, Brittle, handle)
    await start_consumer(service, [brittle])

    caplog.set_level(logging.ERROR, logger="messaging.consumer")
    bad = await send(broker)
    good = await send(broker, body=json.dumps({"text": "fine"}).encode())

    await calls.wait_for(lambda: calls.count(good) == 1)
    [parked] = await broker.drain(
        settings.topology().quarantine_queue(service), expect=1
    )
    assert parked.message_id == bad
    # The broker dead-lettered the rejected original: x-death says why.
    assert last_death(parked)[1] == "rejected"
    assert any("a lookup table" in (r.exc_text or "") for r in caplog.records)
    assert calls.count(bad) == 0


async def test_a_request_handler_answering_with_a_dict_returns_an_error_to_the_caller(
    broker: Broker,
    start_consumer: StartConsumer,
    settings: BrokerSettings,
) -> None:
    async def sloppy(context: Context, payload: Say) -> Any:
        return {"text": payload.text}

    service = service_name()
    consumer = await start_consumer(service, [spec(sloppy)])
    caller = await start_consumer(service_name(), [])
    requester: Requester = caller.requester

    with pytest.raises(RemoteError, match="returned dict, not a pydantic model"):
        await requester.request(
            ECHO,
            Say(text="hi"),
            principal=alice(),
            reply_model=Said,
            timeout=10,
        )

    await consumer.stop()
    topology = settings.topology()
    assert await broker.depth(topology.service_queue(service)) == 0
    assert await broker.depth(topology.dead_queue(service)) == 0


async def test_ids_that_hold_line_breaks_are_logged_escaped(
    broker: Broker,
    start_consumer: StartConsumer,
    settings: BrokerSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = service_name()
    await start_consumer(service, [spec(Calls().handler())])
    caplog.handler.addFilter(MessageContextFilter())
    caplog.set_level(logging.WARNING, logger="baton.security")

    forged = "m-1\n2026-12-03 INFO baton.security admitted m-1"
    await send(broker, message_id=forged, correlation_id=forged, headers={"baton-x": 1})
    await broker.drain(settings.topology().quarantine_queue(service), expect=1)

    [record] = [r for r in caplog.records if r.name == "baton.security"]
    assert "\n" not in record.getMessage()
    assert "\n" not in record.message_id  # type: ignore[attr-defined]
    assert "\n" not in record.correlation_id  # type: ignore[attr-defined]
    assert "\\n" in record.message_id  # type: ignore[attr-defined]
