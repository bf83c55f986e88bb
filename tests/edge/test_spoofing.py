"""A client cannot choose who it is: only the verified token reaches the broker.

Each attack goes through the real edge to the real broker; a spy queue bound to
every command shows what was actually published. A refused attempt publishes
nothing: the next good command is the only message the spy ever sees.
"""

from __future__ import annotations

import json

import pytest
from aio_pika.abc import AbstractIncomingMessage

from messaging import headers as h
from messaging.identity import Principal, decode_principal
from tests.edge.conftest import IdentityProvider, RunningEdge, Spy, bearer

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

GOAL = {"goal": "run a marathon", "horizon_days": 90}
CREATE = "/v1/commands/plan.create"


# What the token says (sub alice, roles planner), and nothing any client wrote.
ALICE_AT_THE_WORKER = Principal.user("alice", ["planner"], entered_by="edge")


def seen_by_a_worker(message: AbstractIncomingMessage) -> Principal:
    """The principal a worker rebuilds from the message, as its consumer does."""
    return decode_principal(message.headers)


async def only_the_good_command_arrives(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy
) -> None:
    good = await edge.client.post(CREATE, json=GOAL, headers=bearer(idp.token("alice")))
    assert good.status_code == 202
    [message] = await spy.take(1)
    assert message.message_id == good.json()["command_id"]
    assert seen_by_a_worker(message) == ALICE_AT_THE_WORKER


@pytest.mark.parametrize(
    "name",
    [
        "X-User-Id",
        "x-user-id",
        "X-USER-ID",
        "X_User_Id",
        "x_user_id",
        "X-Internal-Call",
        "x_internal_call",
        "X-Internal",
        "X-Roles",
        "X-User-Roles",
        "X-Tenant-Id",
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "X-Auth-Request-User",
        "X-Impersonate-User",
        "X-Remote-User",
        "Remote-User",
        "baton-subject",
        "Baton-Internal",
        "BATON_ROLES",
        "baton-anything-else",
        "X-Baton-Subject",
        "X-InternalCall",
        "X.User.Id",
        "x.internal_call",
        "User-Id",
        "USER_ID",
        "Internal-Call",
        "XUserId",
        "X--User--Id",
        "X-Consumer-Username",
        "X-MS-CLIENT-PRINCIPAL-NAME",
        "X-Goog-Authenticated-User-Email",
        "X-Amzn-Oidc-Identity",
        "X-Admin",
    ],
)
async def test_a_header_claiming_identity_is_refused_and_nothing_is_sent(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy, name: str
) -> None:
    headers = {**bearer(idp.token("alice")), name: "mallory"}

    response = await edge.client.post(CREATE, json=GOAL, headers=headers)

    assert response.status_code == 400
    assert "identity comes only from the token" in response.json()["detail"]
    await only_the_good_command_arrives(edge, idp, spy)


@pytest.mark.parametrize(
    "name",
    [
        "X-User-Agent",
        "User-Agent",
        "X-Forwarded-For",
        "X-Internal-Trace",
        "X-Subscription",
        "X-Userid-Hash",
        "Batonic",
        "X-Rolesync",
    ],
)
async def test_a_header_that_only_resembles_an_identity_header_is_ignored(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy, name: str
) -> None:
    headers = {**bearer(idp.token("alice")), name: "mallory"}

    response = await edge.client.post(CREATE, json=GOAL, headers=headers)

    assert response.status_code == 202
    [message] = await spy.take(1)
    assert seen_by_a_worker(message) == ALICE_AT_THE_WORKER
    assert "mallory" not in repr(message.headers)


async def test_a_repeated_spoofing_header_hidden_among_allowed_ones_is_refused(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy
) -> None:
    headers = [
        ("Authorization", f"Bearer {idp.token('alice')}"),
        ("X-Request-Id", "req-1"),
        ("X-Trace", "one"),
        ("X-Trace", "two"),
        ("x-internal-call", "false"),
        ("x-internal-call", "true"),
    ]

    response = await edge.client.post(CREATE, json=GOAL, headers=headers)

    assert response.status_code == 400
    await only_the_good_command_arrives(edge, idp, spy)


@pytest.mark.parametrize(
    "field",
    ["user_id", "subject", "sub", "internal", "roles", "tenant", "baton-subject"],
)
async def test_a_body_carrying_identity_fields_is_refused(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy, field: str
) -> None:
    body = {**GOAL, field: "mallory"}

    response = await edge.client.post(
        CREATE, json=body, headers=bearer(idp.token("alice"))
    )

    assert response.status_code == 422
    assert field in json.dumps(response.json())
    await only_the_good_command_arrives(edge, idp, spy)


@pytest.mark.parametrize("subject", ["bob", "alice"])
async def test_a_profile_request_naming_any_user_is_refused_and_nothing_is_sent(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy, subject: str
) -> None:
    response = await edge.client.post(
        "/v1/commands/profile.get",
        json={"subject": subject},
        headers=bearer(idp.token("alice")),
    )

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["type"], error["loc"]) == ("extra_forbidden", ["body", "subject"])
    await only_the_good_command_arrives(edge, idp, spy)


async def test_only_the_token_identity_and_no_client_header_reaches_the_broker(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy
) -> None:
    token = idp.token("alice", ["planner"])
    headers = {
        **bearer(token),
        "X-Forwarded-For": "10.0.0.1",
        "X-Custom-Note": "mallory",
        "Accept-Language": "mallory",
        "User-Agent": "mallory-agent",
    }

    response = await edge.client.post(CREATE, json=GOAL, headers=headers)

    assert response.status_code == 202
    [message] = await spy.take(1)
    table = dict(message.headers or {})
    assert table[h.SUBJECT] == "alice"
    assert table[h.ROLES] == ["planner"]
    assert table[h.ACTORS] == ["edge"]
    assert table[h.INTERNAL] is False
    assert all(key.startswith(h.NAMESPACE) for key in table)
    assert seen_by_a_worker(message) == ALICE_AT_THE_WORKER
    assert "mallory" not in repr(table)
    signature = token.rsplit(".", 1)[1]
    assert signature not in repr(table) and signature.encode() not in message.body
    assert message.user_id == edge_broker_user(edge)
    assert json.loads(message.body) == GOAL


def edge_broker_user(edge: RunningEdge) -> str:
    return str(edge.app.state.edge.gateway.link.user)


async def test_a_valid_correlation_id_becomes_the_amqp_correlation_id(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy
) -> None:
    headers = {**bearer(idp.token()), "X-Correlation-Id": "checkout-42.a:b"}

    response = await edge.client.post(CREATE, json=GOAL, headers=headers)

    assert response.status_code == 202
    assert response.json()["correlation_id"] == "checkout-42.a:b"
    [message] = await spy.take(1)
    assert message.correlation_id == "checkout-42.a:b"


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Correlation-Id", "has spaces")],
        [("X-Correlation-Id", "-leading-dash")],
        [("X-Correlation-Id", "x" * 200)],
        [("X-Correlation-Id", "a"), ("X-Correlation-Id", "b")],
        [("X-Correlation-Id", "a"), ("X-Request-Id", "b")],
    ],
)
async def test_a_malformed_or_ambiguous_correlation_id_is_refused(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy, headers: list[tuple[str, str]]
) -> None:
    sent = [("Authorization", f"Bearer {idp.token()}"), *headers]

    response = await edge.client.post(CREATE, json=GOAL, headers=sent)

    assert response.status_code == 400
    await only_the_good_command_arrives(edge, idp, spy)


async def test_a_forged_token_sends_nothing_and_says_why(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy
) -> None:
    head, _, signature = idp.token("alice").split(".")
    from tests.edge.conftest import b64

    claims = idp.claims("admin", ["planner", "maintenance"])
    forged = f"{head}.{b64(json.dumps(claims).encode())}.{signature}"

    response = await edge.client.post(CREATE, json=GOAL, headers=bearer(forged))

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        'Bearer realm="baton", error="invalid_token", '
        'error_description="the token\'s signature does not verify"'
    )
    await only_the_good_command_arrives(edge, idp, spy)
