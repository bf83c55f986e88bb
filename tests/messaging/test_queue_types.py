"""Quorum queues where the broker has them; classic queues, said aloud, where not.

A broker without quorum queues is played by a relay that announces RabbitMQ
3.7 in front of the real broker (``old_broker.py``): the queues still land on
the real broker, where the management API shows their type.
"""

from __future__ import annotations

import logging

import pytest

from messaging.consumer import Consumer
from messaging.errors import BrokerTooOld, BrokerUnavailable, PublishError
from messaging.settings import BrokerSettings
from messaging.topology import QuorumQueues
from tests.conftest import Broker
from tests.management import ManagementApi
from tests.messaging.conftest import Calls, StartConsumer, send, service_name, spec
from tests.messaging.old_broker import OldBroker

pytestmark = [pytest.mark.broker, pytest.mark.asyncio]

OLD_VERSION = "3.7.28"
# Queue type and delivery limit of the work, dead and quarantine queues.
CLASSIC = {
    "work": ("classic", None),
    "dead": ("classic", None),
    "quarantine": ("classic", None),
}


async def _queue_types(
    management_api: ManagementApi, settings: BrokerSettings, service: str
) -> dict[str, tuple[str, object]]:
    """Each queue of the service that could be quorum: its type, delivery limit."""
    topology = settings.topology()
    names = {
        "work": topology.service_queue(service),
        "dead": topology.dead_queue(service),
        "quarantine": topology.quarantine_queue(service),
    }
    types = {}
    for role, name in names.items():
        queue = await management_api.queue(name)
        types[role] = (queue["type"], queue["arguments"].get("x-delivery-limit"))
    return types


async def _one_message_flows(
    broker: Broker, start_consumer: StartConsumer, settings: BrokerSettings
) -> str:
    """Start a consumer with `settings`, see one message handled and acked."""
    calls = Calls()
    service = service_name()
    consumer = await start_consumer(
        service, [spec(calls.handler())], settings_=settings
    )
    message_id = await send(broker)
    await calls.wait_for(lambda: calls.count(message_id) == 1)
    await consumer.stop()

    assert await broker.depth(settings.topology().service_queue(service)) == 0
    return service


async def test_auto_on_a_broker_without_quorum_queues_runs_on_classic_and_warns(
    broker: Broker,
    start_consumer: StartConsumer,
    settings: BrokerSettings,
    management_api: ManagementApi,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert settings.quorum_queues is QuorumQueues.AUTO
    async with OldBroker(settings.amqp_url.get_secret_value(), OLD_VERSION) as old:
        via_old = settings.model_copy(update={"amqp_url": old.url})
        with caplog.at_level(logging.WARNING, logger="messaging.topology"):
            service = await _one_message_flows(broker, start_consumer, via_old)

    assert await _queue_types(management_api, settings, service) == CLASSIC
    [warning] = [r for r in caplog.records if r.name == "messaging.topology"]
    assert warning.levelno == logging.WARNING
    said = warning.getMessage()
    assert OLD_VERSION in said
    assert service in said
    assert "BATON_QUORUM_QUEUES" in said
    assert "delivery limit" in said


async def test_quorum_queues_true_on_a_broker_without_them_refuses_to_start(
    broker: Broker, settings: BrokerSettings, management_api: ManagementApi
) -> None:
    service = broker.track(service_name())
    async with OldBroker(settings.amqp_url.get_secret_value(), OLD_VERSION) as old:
        required = settings.model_copy(
            update={"amqp_url": old.url, "quorum_queues": QuorumQueues.TRUE}
        )
        consumer = Consumer(service, [spec(Calls().handler())], required)
        with pytest.raises(BrokerUnavailable) as caught:
            await consumer.start(timeout=2)

    refusal = caught.value.__cause__
    assert isinstance(refusal, BrokerTooOld)
    assert not isinstance(refusal, PublishError)  # nothing was being published
    assert OLD_VERSION in str(refusal)
    assert "BATON_QUORUM_QUEUES" in str(caught.value)
    # Refused before anything was declared.
    declared = await management_api.names("queues")
    declared += await management_api.names("exchanges")
    assert [name for name in declared if name.startswith(settings.prefix)] == []


async def test_quorum_queues_false_declares_classic_queues_and_messages_flow(
    broker: Broker,
    start_consumer: StartConsumer,
    settings: BrokerSettings,
    management_api: ManagementApi,
    caplog: pytest.LogCaptureFixture,
) -> None:
    classic = settings.model_copy(update={"quorum_queues": QuorumQueues.FALSE})
    with caplog.at_level(logging.WARNING, logger="messaging.topology"):
        service = await _one_message_flows(broker, start_consumer, classic)

    assert await _queue_types(management_api, settings, service) == CLASSIC
    assert [r for r in caplog.records if r.name == "messaging.topology"] == []


async def test_auto_on_a_broker_with_quorum_queues_declares_them_with_the_limit(
    broker: Broker,
    start_consumer: StartConsumer,
    settings: BrokerSettings,
    management_api: ManagementApi,
) -> None:
    service = await _one_message_flows(broker, start_consumer, settings)

    assert await _queue_types(management_api, settings, service) == {
        "work": ("quorum", settings.delivery_limit),
        "dead": ("quorum", None),
        "quarantine": ("quorum", None),
    }
