"""Log lines say which message and which principal they are about, and leak nothing."""

from __future__ import annotations

import logging
import re

import pytest

from messaging import headers as h
from messaging.handlers import Context
from messaging.identity import encode_principal
from messaging.logcontext import LOG_FORMAT, MessageContextFilter, configure_logging
from messaging.settings import BrokerSettings
from tests.conftest import Broker
from tests.messaging.conftest import (
    Calls,
    Say,
    StartConsumer,
    alice,
    send,
    service_name,
    spec,
)

# A token of the shape the edge receives; it must never reach a log line.
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiJhbGljZSIsInJvbGVzIjpbImFkbWluIl19."
    "c2VjcmV0LXNpZ25hdHVyZS1kby1ub3QtbG9n"
)
JWT_SHAPE = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.handler.addFilter(MessageContextFilter())
    caplog.handler.setFormatter(logging.Formatter(LOG_FORMAT))
    caplog.set_level(logging.INFO)
    # Our own per-message lines are DEBUG; aiormq's DEBUG dumps raw frames and
    # is kept at INFO by configure_logging, as here.
    caplog.set_level(logging.DEBUG, logger="messaging")
    return caplog


@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_handler_log_line_carries_the_message_and_the_principal(
    broker: Broker,
    start_consumer: StartConsumer,
    settings: BrokerSettings,
    records: pytest.LogCaptureFixture,
) -> None:
    calls = Calls()
    handler_log = logging.getLogger("tests.handler")

    async def handle(context: Context, payload: Say) -> None:
        handler_log.info("planning %s", payload.text)
        calls.record(context, payload)

    service = service_name()
    await start_consumer(service, [spec(handle)])
    message_id = await send(broker, correlation_id="flow-7")
    await calls.wait_for(lambda: calls.count(message_id) == 1)

    [line] = [r for r in records.records if r.name == "tests.handler"]
    assert line.message_id == message_id  # type: ignore[attr-defined]
    assert line.correlation_id == "flow-7"  # type: ignore[attr-defined]
    assert line.principal == "user:alice"  # type: ignore[attr-defined]
    assert line.queue == settings.topology().service_queue(service)  # type: ignore[attr-defined]
    assert f"{message_id} user:alice] planning hello" in records.text


@pytest.mark.asyncio
@pytest.mark.broker
async def test_security_log_names_the_message_but_never_a_token(
    broker: Broker,
    start_consumer: StartConsumer,
    records: pytest.LogCaptureFixture,
) -> None:
    calls = Calls()
    await start_consumer(service_name(), [spec(calls.handler())])
    identity = encode_principal(alice())

    bad_ids = [
        await send(broker, headers={**identity, h.TENANT: JWT}),
        await send(broker, headers={**identity, h.ROLES: [JWT]}),
        await send(broker, body=f'{{"text": "hi", "token": "{JWT}"}}'.encode()),
        await send(broker, body=f'{{"text": ["{JWT}"]}}'.encode()),
    ]
    # A token in a header outside our namespace is ignored, and not logged.
    good = await send(broker, headers={**identity, "authorization": f"Bearer {JWT}"})
    await calls.wait_for(lambda: calls.count(good) == 1)

    security = [r for r in records.records if r.name == "baton.security"]
    assert sorted(r.message_id for r in security) == sorted(bad_ids)  # type: ignore[attr-defined]
    assert JWT_SHAPE.search(records.text) is None
    assert "c2VjcmV0LXNpZ25hdHVyZS1kby1ub3QtbG9n" not in records.text
    assert "guest:guest" not in records.text


@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_refusal_is_logged_with_code_header_message_and_publisher_escaped(
    broker: Broker,
    start_consumer: StartConsumer,
    records: pytest.LogCaptureFixture,
) -> None:
    service = service_name()
    await start_consumer(service, [spec(Calls().handler())])
    forged = "alice\n2024-01-01 WARNING baton.security all clear"
    headers = {**encode_principal(alice()), h.SUBJECT: forged}

    message_id = await send(broker, headers=headers, user_id="guest")
    # The line is written before the copy goes to quarantine.
    await broker.drain(broker.topology.quarantine_queue(service), expect=1)

    [line] = [r for r in records.records if r.name == "baton.security"]
    said = line.getMessage()
    assert line.levelno == logging.WARNING
    for part in (message_id, "'guest'", "HeaderValueError", h.SUBJECT):
        assert part in said
    # The forged subject is escaped: it cannot start a log line of its own.
    assert "\n" not in said


def test_debug_logging_keeps_the_amqp_client_from_dumping_frames() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(logging.DEBUG)
        client_level = logging.getLogger("aiormq").getEffectiveLevel()
        ours = logging.getLogger("messaging.consumer").getEffectiveLevel()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        for name in ("aiormq", "aio_pika"):
            logging.getLogger(name).setLevel(logging.NOTSET)

    assert client_level == logging.INFO
    assert ours == logging.DEBUG
