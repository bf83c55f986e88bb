"""The broker itself refuses what a service's account was not provisioned for.

Every attack here logs in with a real account made by ``baton provision`` and
does what a compromised service would try. The broker must close the channel with
ACCESS_REFUSED (or PRECONDITION_FAILED for a forged user_id), and no handler runs.
"""

from __future__ import annotations

import json
import uuid

import aio_pika
import aiormq
import pytest

from messaging.consumer import Consumer
from messaging.errors import BrokerUnavailable
from messaging.handlers import Context
from messaging.identity import Principal, encode_principal
from messaging.provision import Management
from tests.trust.conftest import Deployment, parked, publish_as, started
from tests.trust.services import FLAG, PLACE, PLACED, Order

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

BODY = json.dumps({"item": "book"}).encode()
HEADERS = encode_principal(Principal.user("alice", ["buyer"], entered_by="edge"))


async def attempt_publish(
    deployment: Deployment,
    service: str,
    exchange: str,
    routing_key: str,
    **properties: object,
) -> None:
    await publish_as(
        deployment,
        service,
        routing_key,
        exchange=exchange,
        body=BODY,
        headers=dict(HEADERS),
        message_id=uuid.uuid4().hex,
        **properties,  # type: ignore[arg-type]
    )


async def test_a_service_cannot_publish_a_command_it_does_not_declare(
    deployment: Deployment,
) -> None:
    await started(deployment, ["core", "audit"])

    with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as refused:
        await attempt_publish(
            deployment, "audit", f"{deployment.prefix}.commands", PLACE
        )

    assert "topic" in str(refused.value) or "routing key" in str(refused.value)
    assert deployment.seen.of("core") == []


async def test_a_service_cannot_publish_on_an_exchange_it_does_not_use(
    deployment: Deployment,
) -> None:
    await started(deployment, ["audit"])

    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await attempt_publish(deployment, "edge", f"{deployment.prefix}.events", PLACED)

    assert deployment.seen.of("audit") == []


async def test_a_forged_user_id_is_refused_by_the_broker(
    deployment: Deployment,
) -> None:
    await started(deployment, ["core"])

    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as refused:
        await attempt_publish(
            deployment,
            "audit",
            f"{deployment.prefix}.commands",
            FLAG,
            user_id=deployment.accounts.of("edge"),
        )

    assert "user_id" in str(refused.value)
    assert deployment.seen.of("core") == []


@pytest.mark.parametrize("exchange", ["", "amq.default"])
async def test_no_service_can_publish_through_the_default_exchange(
    deployment: Deployment, exchange: str
) -> None:
    await started(deployment, ["core"])

    with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as refused:
        await attempt_publish(
            deployment,
            "edge",
            exchange,
            f"{deployment.prefix}.core",
            message_type=PLACE,
        )

    assert "amq.default" in str(refused.value)
    assert deployment.seen.of("core") == []


@pytest.mark.parametrize(
    ("exchange", "routing_key"),
    [("commands", PLACE), ("commands", "#"), ("events", "#")],
)
async def test_a_service_cannot_bind_its_queue_to_eavesdrop(
    deployment: Deployment, exchange: str, routing_key: str
) -> None:
    await started(deployment, ["audit"])
    connection = await deployment.connect("audit")
    channel = await connection.channel()
    queue = await channel.get_queue(f"{deployment.prefix}.audit", ensure=False)

    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await queue.bind(f"{deployment.prefix}.{exchange}", routing_key=routing_key)


async def test_a_service_cannot_read_another_services_queue(
    deployment: Deployment,
) -> None:
    await started(deployment, ["core", "audit"])
    connection = await deployment.connect("audit")
    channel = await connection.channel()
    queue = await channel.get_queue(f"{deployment.prefix}.core", ensure=False)

    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await queue.get(fail=False)


async def test_a_service_cannot_declare_a_queue_of_its_own_choosing(
    deployment: Deployment,
) -> None:
    connection = await deployment.connect("audit")
    channel = await connection.channel()

    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await channel.declare_queue(f"{deployment.prefix}.spy", auto_delete=True)


def direct_routes(deployment: Deployment) -> dict[str, tuple[str, str]]:
    """Every direct exchange core or the edge owns, with a key that reaches its
    queues: what another service would bind to, to eavesdrop."""
    topology = deployment.topology
    return {
        "redeliver": (topology.redeliver_exchange("core"), "core"),
        "retry": (
            topology.retry_exchange("core"),
            topology.retry_queue("core", topology.retry_delays[0]),
        ),
        "dead": (topology.dead_exchange("core"), "core"),
        "quarantine": (topology.quarantine_exchange("core"), "core"),
        "replies": (
            topology.reply_exchange("edge"),
            topology.reply_queue("edge", "0123456789ab"),
        ),
    }


async def with_edge_replies(deployment: Deployment) -> None:
    """Make the edge's reply exchange exist, as a running edge would."""
    connection = await deployment.connect(None)
    channel = await connection.channel()
    await channel.declare_exchange(
        deployment.topology.reply_exchange("edge"),
        aio_pika.ExchangeType.DIRECT,
        durable=True,
        auto_delete=True,
    )
    await channel.close()


DIRECT_EXCHANGES = ["redeliver", "retry", "dead", "quarantine", "replies"]


@pytest.mark.parametrize("kind", DIRECT_EXCHANGES)
async def test_a_service_cannot_bind_to_another_services_direct_exchange(
    deployment: Deployment, kind: str
) -> None:
    # Topic rights do not apply to direct exchanges; only the exchange's name
    # keeps audit out of core's retries, dead letters and quarantine, and out
    # of the replies to the edge.
    await started(deployment, ["core", "audit"])
    await with_edge_replies(deployment)
    exchange, routing_key = direct_routes(deployment)[kind]
    connection = await deployment.connect("audit")
    channel = await connection.channel()
    queue = await channel.get_queue(f"{deployment.prefix}.audit.dead", ensure=False)

    with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as refused:
        await queue.bind(exchange, routing_key=routing_key)

    assert exchange in str(refused.value)


@pytest.mark.parametrize("kind", DIRECT_EXCHANGES)
async def test_a_service_cannot_publish_into_another_services_direct_exchange(
    deployment: Deployment, kind: str
) -> None:
    await started(deployment, ["core"])
    await with_edge_replies(deployment)
    exchange, routing_key = direct_routes(deployment)[kind]

    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await attempt_publish(
            deployment, "audit", exchange, routing_key, message_type=PLACE
        )

    assert deployment.seen.of("core") == []
    assert await parked(deployment, "core", 0) == []


async def test_a_worker_cannot_read_the_retries_of_another_to_act_for_their_user(
    deployment: Deployment,
) -> None:
    # core fails once, so alice's command, with her origin assertion, waits in
    # core's retry path; audit tries every way into that path.
    failures = {"left": 1}
    record = deployment._record

    async def flaky(service: str, context: Context, payload: Order) -> None:
        await record(service, context, payload)
        if service == "core" and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("database blinked")

    deployment._record = flaky  # type: ignore[method-assign]
    await started(deployment, ["core", "audit"])
    spy = await deployment.connect("audit")
    edge = await deployment.publisher("edge")
    await edge.publish(
        f"{deployment.prefix}.commands",
        PLACE,
        message_type=PLACE,
        body=Order(item="book"),
        principal=Principal.user("alice", ["buyer"], entered_by="edge"),
    )

    for kind in ("redeliver", "retry", "dead", "quarantine"):
        exchange, routing_key = direct_routes(deployment)[kind]
        channel = await spy.channel()
        queue = await channel.get_queue(f"{deployment.prefix}.audit.dead", ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await queue.bind(exchange, routing_key=routing_key)
    await deployment.seen.wait_for("core", 2)

    assert deployment.seen.of("audit") == []
    assert await parked(deployment, "audit", 0, kind="dead") == []


@pytest.mark.parametrize(
    "exchange", ["commands", "events", "core.quarantine", "core.redeliver"]
)
async def test_a_service_cannot_delete_a_shared_or_another_services_exchange(
    deployment: Deployment, exchange: str
) -> None:
    await started(deployment, ["core"])
    connection = await deployment.connect("edge")
    channel = await connection.channel()

    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await channel.exchange_delete(f"{deployment.prefix}.{exchange}")


async def test_a_service_cannot_redeclare_a_shared_exchange(
    deployment: Deployment,
) -> None:
    # Declaring needs configure, which would also allow deleting: services
    # only check the shared exchanges passively.
    connection = await deployment.connect("core")
    channel = await connection.channel()

    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await channel.declare_exchange(
            f"{deployment.prefix}.commands", aio_pika.ExchangeType.TOPIC, durable=True
        )


async def test_provisioned_accounts_carry_no_tags_and_no_other_vhost(
    deployment: Deployment,
) -> None:
    for service in ("edge", "core", "audit"):
        user = deployment.accounts.of(service)
        connection = await aio_pika.connect(deployment.url(service))
        await connection.close()

        with Management(deployment.management) as management:
            account = management.get(f"/api/users/{user}")
            permissions = management.get(f"/api/users/{user}/permissions")
        assert account["tags"] in ([], "")
        assert [p["vhost"] for p in permissions] == [deployment.vhost]


async def test_a_service_does_not_start_while_a_shared_exchange_is_missing(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    # Provisioning creates the shared exchanges; a service may not, so it says
    # what is missing instead of re-creating what an operator removed.
    connection = await deployment.connect(None)
    channel = await connection.channel()
    await channel.exchange_delete(f"{deployment.prefix}.events")
    await channel.close()

    settings = deployment.settings("audit")
    (audit,) = (d for d in deployment.declared if d.name == "audit")
    consumer = Consumer("audit", audit.handlers, settings)

    with pytest.raises(BrokerUnavailable, match="ACCESS_REFUSED"):
        await consumer.start(timeout=3.0)

    assert f"exchange {deployment.prefix}.events does not exist" in caplog.text


@pytest.mark.parametrize(
    ("source", "routing_key"),
    [("commands", "#"), ("commands", PLACE), ("core.dead", "core")],
)
async def test_a_service_cannot_bind_an_exchange_to_reroute_anothers_messages(
    deployment: Deployment, source: str, routing_key: str
) -> None:
    # An exchange-to-exchange binding is checked like a queue binding: read
    # on the source (with its topic rights), write on the destination.
    await started(deployment, ["core", "audit"])
    connection = await deployment.connect("audit")
    channel = await connection.channel()
    own = await channel.get_exchange(
        deployment.topology.dead_exchange("audit"), ensure=False
    )

    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await own.bind(f"{deployment.prefix}.{source}", routing_key=routing_key)
