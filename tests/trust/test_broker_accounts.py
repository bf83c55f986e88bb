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

from messaging.identity import Principal, encode_principal
from messaging.provision import Management
from tests.trust.conftest import Deployment, parked, publish_as, started
from tests.trust.services import FLAG, PLACE, PLACED

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


async def test_a_message_pushed_into_another_services_retry_path_is_quarantined(
    deployment: Deployment,
) -> None:
    # redeliver is a direct exchange, where topic rights do not apply: audit can
    # route to core's queue through it, so core checks who put it there.
    await started(deployment, ["core"])
    message_id = uuid.uuid4().hex

    await publish_as(
        deployment,
        "audit",
        "core",
        exchange=f"{deployment.prefix}.redeliver",
        message_type=PLACE,
        body=BODY,
        headers={**HEADERS, "baton-original-publisher": deployment.accounts.of("edge")},
        message_id=message_id,
    )

    ((quarantined, code, reason),) = await parked(deployment, "core", 1)
    assert (quarantined, code) == (message_id, "UntrustedPublisher")
    assert "retry path" in reason
    assert deployment.seen.of("core") == []


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
