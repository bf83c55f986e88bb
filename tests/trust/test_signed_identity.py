"""Signed identity on a provisioned broker: what passes, and every forgery refused.

Each hostile message is published by a real account of the test deployment, so the
broker itself accepts it; the consumer must then refuse it into quarantine with
the reason, and no handler may run.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import aio_pika
import pytest

from baton.cli import main as baton
from messaging.identity import Origin, Principal, encode_principal
from messaging.signing import Destination, SigningKey
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
from tests.trust.services import CANCEL, PLACE, PLACED, STATUS, Order
from tests.workers.conftest import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]


async def publish_event_as_core(
    deployment: Deployment, headers: dict[str, object], message_id: str
) -> None:
    await publish_as(
        deployment,
        "core",
        PLACED,
        body=BODY,
        headers=headers,
        message_id=message_id,
        exchange=f"{deployment.prefix}.events",
    )


async def test_a_signed_command_and_the_event_it_causes_are_handled_for_the_user(
    deployment: Deployment,
) -> None:
    await started(deployment, ["core", "audit"])
    edge = await deployment.publisher("edge")

    message_id = await edge.publish(
        f"{deployment.prefix}.commands",
        PLACE,
        message_type=PLACE,
        body=Order(item="forward-book"),
        principal=alice(),
    )
    await deployment.seen.wait_for("audit", 1)

    (core_call,) = deployment.seen.of("core")
    (audit_call,) = deployment.seen.of("audit")
    assert core_call[1] == message_id
    assert core_call[2] == alice()
    assert audit_call[2].subject == "alice"
    assert audit_call[2].roles == frozenset({"buyer"})
    assert audit_call[2].actors == ("edge", "core")
    assert await parked(deployment, "core", 0) == []


async def test_a_retried_message_is_verified_again_and_not_taken_for_a_replay(
    deployment: Deployment,
) -> None:
    failures = {"left": 1}
    original = deployment._record

    async def flaky(service: str, context, payload: Order) -> None:
        await original(service, context, payload)
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("database blinked")

    deployment._record = flaky  # type: ignore[method-assign]
    await started(deployment, ["core"])
    edge = await deployment.publisher("edge")
    message_id = await edge.publish(
        f"{deployment.prefix}.commands",
        PLACE,
        message_type=PLACE,
        body=Order(item="book"),
        principal=alice(),
    )

    await deployment.seen.wait_for("core", 2)
    assert [call[1] for call in deployment.seen.of("core")] == [message_id] * 2
    assert await parked(deployment, "core", 0) == []


async def test_the_same_message_published_again_is_refused_as_a_replay(
    deployment: Deployment,
) -> None:
    await started(deployment, ["core"])
    message_id = uuid.uuid4().hex
    headers = signed(deployment.key("edge"), alice(), to_core(deployment), message_id)

    for _ in range(2):
        await publish_as(
            deployment, "edge", PLACE, body=BODY, headers=headers, message_id=message_id
        )

    ((quarantined_id, code, reason),) = await parked(deployment, "core", 1)
    assert (quarantined_id, code) == (message_id, "ReplayedMessage")
    assert "already admitted" in reason
    assert len(deployment.seen.of("core")) == 1


async def test_an_expired_assertion_is_refused(deployment: Deployment) -> None:
    await started(deployment, ["core"])
    message_id = uuid.uuid4().hex
    headers = signed(
        deployment.key("edge"),
        alice(),
        to_core(deployment),
        message_id,
        issued=time.time() - 3600,
    )

    await publish_as(
        deployment, "edge", PLACE, body=BODY, headers=headers, message_id=message_id
    )

    ((_, code, reason),) = await parked(deployment, "core", 1)
    assert code == "InvalidSignature"
    assert "expired" in reason
    assert deployment.seen.of("core") == []


async def test_a_handled_message_replayed_after_its_expiry_is_refused(
    deployment: Deployment,
) -> None:
    await started(deployment, ["core"])
    message_id = uuid.uuid4().hex
    # Signed 59 of its 60 seconds ago: it is handled now and expired a second later.
    issued = time.time() - 59
    headers = signed(
        deployment.key("edge"), alice(), to_core(deployment), message_id, issued=issued
    )
    await publish_as(
        deployment, "edge", PLACE, body=BODY, headers=headers, message_id=message_id
    )
    await deployment.seen.wait_for("core", 1)

    await asyncio.sleep(max(0.0, issued + 60 - time.time()) + 0.2)
    await publish_as(
        deployment, "edge", PLACE, body=BODY, headers=headers, message_id=message_id
    )

    ((quarantined, code, reason),) = await parked(deployment, "core", 1)
    assert (quarantined, code) == (message_id, "InvalidSignature")
    assert "expired" in reason
    assert len(deployment.seen.of("core")) == 1


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("body", "another body"),
        ("routing_key", "another routing key"),
        ("message_id", "another message id"),
        ("roles", "other identity headers"),
    ],
)
async def test_a_valid_identity_spliced_onto_another_message_is_refused(
    deployment: Deployment, change: str, expected: str
) -> None:
    await started(deployment, ["core"])
    message_id = uuid.uuid4().hex
    headers = signed(deployment.key("edge"), alice(), to_core(deployment), message_id)
    body, routing_key, sent_id = BODY, PLACE, message_id
    if change == "body":
        body = json.dumps({"item": "car"}).encode()
    elif change == "routing_key":
        routing_key = CANCEL
    elif change == "message_id":
        sent_id = uuid.uuid4().hex
    else:
        headers.update(encode_principal(alice("buyer", "admin")))

    await publish_as(
        deployment, "edge", routing_key, body=body, headers=headers, message_id=sent_id
    )

    ((_, code, reason),) = await parked(deployment, "core", 1)
    # A changed role set is caught by the identity digest or, failing that, by
    # the origin assertion; either way the signature check names it.
    assert code == "InvalidSignature"
    assert expected in reason
    assert deployment.seen.of("core") == []


async def test_the_edge_password_without_the_edge_key_cannot_pass(
    deployment: Deployment,
) -> None:
    await started(deployment, ["core"])
    attempts = {
        "unsigned": dict(encode_principal(alice())),
        "signed with the audit key": signed(
            deployment.key("audit"), alice(), to_core(deployment), "x"
        ),
        "signed with a key of its own": signed(
            SigningKey.generate("edge"), alice(), to_core(deployment), "x"
        ),
    }
    ids = {}
    for name, headers in attempts.items():
        ids[name] = uuid.uuid4().hex
        await publish_as(
            deployment, "edge", PLACE, body=BODY, headers=headers, message_id=ids[name]
        )

    reasons = {mid: reason for mid, _, reason in await parked(deployment, "core", 3)}
    assert "missing" in reasons[ids["unsigned"]]
    assert "published by edge" in reasons[ids["signed with the audit key"]]
    assert "unknown key id" in reasons[ids["signed with a key of its own"]]
    assert deployment.seen.of("core") == []


async def test_a_worker_cannot_mint_a_user_it_never_received(
    deployment: Deployment,
) -> None:
    await started(deployment, ["audit"])
    mallory = Principal.user("mallory", ["admin"], entered_by="edge").handed_to(
        "core", Origin.EVENT
    )
    event = Destination(f"{deployment.prefix}.events", PLACED, PLACED)
    message_id = uuid.uuid4().hex
    # core signs honestly with its own key, and vouches for a user itself.
    headers = signed(
        deployment.key("core"), mallory, event, message_id, introduces_users=True
    )

    await publish_event_as_core(deployment, headers, message_id)

    ((_, code, reason),) = await parked(deployment, "audit", 1)
    assert code == "UnprovenPrincipal"
    assert "does not introduce users" in reason
    assert deployment.seen.of("audit") == []


async def test_a_worker_cannot_add_roles_to_the_user_it_passes_on(
    deployment: Deployment,
) -> None:
    await started(deployment, ["audit"])
    edge_signed = signed(deployment.key("edge"), alice(), to_core(deployment), "m")
    promoted = alice("buyer", "admin").handed_to("core", Origin.EVENT)
    event = Destination(f"{deployment.prefix}.events", PLACED, PLACED)
    message_id = uuid.uuid4().hex
    headers = signed(
        deployment.key("core"), promoted, event, message_id, introduces_users=True
    )
    # The origin alice's edge vouched for, carried along as a hop would.
    headers["baton-origin-assertion"] = edge_signed["baton-origin-assertion"]

    await publish_event_as_core(deployment, headers, message_id)

    ((_, code, reason),) = await parked(deployment, "audit", 1)
    assert code == "UnprovenPrincipal"
    assert "'admin'" in reason
    assert deployment.seen.of("audit") == []


async def test_a_message_without_user_id_is_refused(deployment: Deployment) -> None:
    await started(deployment, ["core"])
    message_id = uuid.uuid4().hex
    headers = signed(deployment.key("edge"), alice(), to_core(deployment), message_id)

    await publish_as(
        deployment,
        "edge",
        PLACE,
        body=BODY,
        headers=headers,
        message_id=message_id,
        user_id="",
    )

    ((_, code, reason),) = await parked(deployment, "core", 1)
    assert (code, reason) == ("UntrustedPublisher", "the message has no user_id")
    assert deployment.seen.of("core") == []


async def test_an_account_that_is_no_declared_service_is_refused(
    deployment: Deployment,
) -> None:
    await started(deployment, ["core"])
    connection = await deployment.connect(None)
    channel = await connection.channel()
    exchange = await channel.get_exchange(f"{deployment.prefix}.commands", ensure=False)
    message_id = uuid.uuid4().hex
    headers = signed(deployment.key("edge"), alice(), to_core(deployment), message_id)
    await exchange.publish(
        aio_pika.Message(
            BODY,
            headers=headers,
            content_type="application/json",
            message_id=message_id,
            type=PLACE,
            user_id="guest",
        ),
        PLACE,
    )

    ((_, code, reason),) = await parked(deployment, "core", 1)
    assert code == "UntrustedPublisher"
    assert "'guest' is no declared service" in reason
    assert deployment.seen.of("core") == []


async def test_a_replay_stays_refused_when_the_broker_redelivers_it(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    # The replay is refused, but its quarantine copy cannot be published (an
    # operator removed the exchange), so the broker redelivers it, flagged
    # redelivered, until the delivery limit: every copy must be refused again.
    await started(deployment, ["core"])
    message_id = uuid.uuid4().hex
    headers = signed(deployment.key("edge"), alice(), to_core(deployment), message_id)
    await publish_as(
        deployment, "edge", PLACE, body=BODY, headers=headers, message_id=message_id
    )
    await deployment.seen.wait_for("core", 1)
    connection = await deployment.connect(None)
    channel = await connection.channel()
    await channel.exchange_delete(deployment.topology.quarantine_exchange("core"))
    await channel.close()

    await publish_as(
        deployment, "edge", PLACE, body=BODY, headers=headers, message_id=message_id
    )

    def refusals() -> int:
        return sum(
            "ReplayedMessage" in record.getMessage()
            for record in caplog.records
            if record.name == "baton.security"
        )

    await eventually(lambda: refusals() >= 3, what="the copies refused")
    assert len(deployment.seen.of("core")) == 1


async def test_a_first_publish_cannot_claim_a_retry_attempt(
    deployment: Deployment,
) -> None:
    # baton-attempt 3 on a first publish would skip every retry the handler
    # has; only the service's own retry path may set it.
    await started(deployment, ["core"])
    message_id = uuid.uuid4().hex
    headers = signed(deployment.key("edge"), alice(), to_core(deployment), message_id)

    await publish_as(
        deployment,
        "edge",
        PLACE,
        body=BODY,
        headers={**headers, "baton-attempt": 3},
        message_id=message_id,
    )

    ((_, code, reason),) = await parked(deployment, "core", 1)
    assert code == "UntrustedPublisher"
    assert "only core's own retry path sets it" in reason
    assert deployment.seen.of("core") == []


async def test_a_request_cannot_be_sent_again_with_its_reply_pointed_elsewhere(
    deployment: Deployment,
) -> None:
    # Someone with the edge's password but not its key takes a signed request
    # and sends it with reply_to naming a queue it reads itself.
    await started(deployment, ["core"])
    topology = deployment.topology
    thief = await (await deployment.connect("edge")).channel()
    stolen = await topology.declare_reply_queue(thief, "edge", "0123456789ab")
    message_id = uuid.uuid4().hex
    headers = signed(
        deployment.key("edge"),
        alice(),
        to_core(deployment, STATUS),
        message_id,
        reply_to=topology.reply_queue("edge", "aaaaaaaaaaaa"),
    )

    await publish_as(
        deployment,
        "edge",
        STATUS,
        body=BODY,
        headers=headers,
        message_id=message_id,
        reply_to=stolen.name,
    )

    ((_, code, reason),) = await parked(deployment, "core", 1)
    assert code == "InvalidSignature"
    assert "another reply_to" in reason
    assert deployment.seen.of("core") == []
    assert await stolen.get(fail=False) is None


async def test_a_running_consumer_follows_a_key_rotation_without_a_restart(
    deployment: Deployment, tmp_path: Path
) -> None:
    await started(deployment, ["core"])
    new_dir = tmp_path / "new-keys"
    generate = ["keys", "generate", "edge", "--dir", str(new_dir)]
    assert baton([*generate, "--keyring", str(deployment.keyring)]) == 0
    (new_key,) = (SigningKey.load(path) for path in new_dir.glob("edge-*.key"))
    old_kid = deployment.key("edge").kid
    retire = ["keys", "retire", old_kid, "--keyring", str(deployment.keyring)]
    assert baton([*retire, "--grace", "0"]) == 0
    await asyncio.sleep(1.5)  # the consumer looks at the ring file every second

    ids = {"new": uuid.uuid4().hex, "old": uuid.uuid4().hex}
    for name, key in (("new", new_key), ("old", deployment.key("edge"))):
        headers = signed(key, alice(), to_core(deployment), ids[name])
        await publish_as(
            deployment, "edge", PLACE, body=BODY, headers=headers, message_id=ids[name]
        )

    await deployment.seen.wait_for("core", 1)
    assert [call[1] for call in deployment.seen.of("core")] == [ids["new"]]
    ((refused, code, reason),) = await parked(deployment, "core", 1)
    assert (refused, code) == (ids["old"], "InvalidSignature")
    assert f"key {old_kid} was retired" in reason


@pytest.mark.parametrize(
    ("roles", "handled"), [(["maintenance"], True), (["maintenance", "admin"], False)]
)
async def test_a_service_acting_as_itself_holds_only_the_roles_it_declared(
    deployment: Deployment, roles: list[str], handled: bool
) -> None:
    await started(deployment, ["audit"])
    itself = Principal.service("core", roles, origin=Origin.SCHEDULE)
    event = Destination(f"{deployment.prefix}.events", PLACED, PLACED)
    message_id = uuid.uuid4().hex
    # core's own key, as a compromised core would use it.
    headers = signed(deployment.key("core"), itself, event, message_id)

    await publish_event_as_core(deployment, headers, message_id)

    if handled:
        await deployment.seen.wait_for("audit", 1)
        assert deployment.seen.of("audit")[0][2] == itself
        assert await parked(deployment, "audit", 0) == []
        return
    ((_, code, reason),) = await parked(deployment, "audit", 1)
    assert code == "UnprovenPrincipal"
    assert "core vouched for itself with roles ['admin']" in reason
    assert deployment.seen.of("audit") == []


async def test_commands_published_together_are_each_verified_and_handled_once(
    deployment: Deployment,
) -> None:
    await started(deployment, ["core"])
    edge = await deployment.publisher("edge")

    ids = await asyncio.gather(
        *(
            edge.publish(
                f"{deployment.prefix}.commands",
                PLACE,
                message_type=PLACE,
                body=Order(item=f"book-{i}"),
                principal=alice(),
            )
            for i in range(20)
        )
    )
    await deployment.seen.wait_for("core", 20)

    assert sorted(call[1] for call in deployment.seen.of("core")) == sorted(ids)
    assert await parked(deployment, "core", 0) == []
