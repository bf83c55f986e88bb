"""What the consumer refuses when the broker's rights are wider than planned.

The broker stops most of these first. Each test here widens one account's rights
on purpose, as an operator's mistake or a tampered broker would, so that only the
consumer's own checks stand between the message and the handler.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest

from messaging.identity import Origin
from messaging.provision import NOTHING, Management
from messaging.signing import Destination
from tests.trust.conftest import (
    BODY,
    Deployment,
    alice,
    parked,
    publish_as,
    signed,
    started,
    to_core,
)
from tests.trust.services import PLACE, PLACED

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]


def widen(
    deployment: Deployment, management: Management, service: str, **rights: str
) -> None:
    """Give `service` more than its plan: topic rights, or a wider write regex."""
    vhost, user = quote(deployment.vhost, safe=""), deployment.accounts.of(service)
    if "commands" in rights:
        management.put(
            f"/api/topic-permissions/{vhost}/{user}",
            {
                "exchange": f"{deployment.prefix}.commands",
                "write": rights["commands"],
                "read": NOTHING,
            },
        )
    if "write" in rights:
        current = management.get(f"/api/permissions/{vhost}/{user}")
        management.put(
            f"/api/permissions/{vhost}/{user}",
            {**current, "write": rights["write"]},
        )


async def test_a_type_the_publisher_did_not_declare_is_refused_by_the_consumer(
    deployment: Deployment, management: Management
) -> None:
    await started(deployment, ["core"])
    widen(deployment, management, "audit", commands=".*")
    message_id = uuid.uuid4().hex
    headers = signed(deployment.key("audit"), alice(), to_core(deployment), message_id)

    await publish_as(
        deployment, "audit", PLACE, body=BODY, headers=headers, message_id=message_id
    )

    ((quarantined, code, reason),) = await parked(deployment, "core", 1)
    assert (quarantined, code) == (message_id, "UntrustedPublisher")
    assert reason == "audit is not declared to publish command order.place"
    assert deployment.seen.of("core") == []


async def test_a_message_pushed_into_another_services_retry_path_is_refused(
    deployment: Deployment, management: Management
) -> None:
    await started(deployment, ["core"])
    redeliver = deployment.topology.redeliver_exchange("core")
    widen(deployment, management, "audit", write=".*")
    message_id = uuid.uuid4().hex
    headers = signed(deployment.key("edge"), alice(), to_core(deployment), message_id)

    await publish_as(
        deployment,
        "audit",
        "core",
        exchange=redeliver,
        message_type=PLACE,
        body=BODY,
        headers={**headers, "baton-original-publisher": deployment.accounts.of("edge")},
        message_id=message_id,
    )

    ((quarantined, code, reason),) = await parked(deployment, "core", 1)
    assert (quarantined, code) == (message_id, "UntrustedPublisher")
    assert reason == "audit put a message into core's retry path"
    assert deployment.seen.of("core") == []


async def test_a_valid_identity_moved_to_another_exchange_is_refused(
    deployment: Deployment,
) -> None:
    # core may publish order.placed as an event; an assertion signed for the
    # commands exchange under the same routing key is no event.
    await started(deployment, ["audit"])
    message_id = uuid.uuid4().hex
    on_commands = Destination(f"{deployment.prefix}.commands", PLACED, PLACED)
    passed = alice().handed_to("core", Origin.EVENT)
    headers = signed(deployment.key("edge"), alice(), to_core(deployment), "m")
    moved = signed(deployment.key("core"), passed, on_commands, message_id)
    moved["baton-origin-assertion"] = headers["baton-origin-assertion"]

    await publish_as(
        deployment,
        "core",
        PLACED,
        exchange=f"{deployment.prefix}.events",
        body=BODY,
        headers=moved,
        message_id=message_id,
    )

    ((_, code, reason),) = await parked(deployment, "audit", 1)
    assert code == "InvalidSignature"
    assert "another exchange" in reason
    assert deployment.seen.of("audit") == []
