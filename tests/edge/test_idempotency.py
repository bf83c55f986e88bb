"""Idempotency-Key: a command sent again under the same key is the same message.

The services' inboxes drop a message id they have handled, so what the edge
must guarantee is the id: the same for a retry, different for anyone else.
"""

from __future__ import annotations

import json

import pytest

from tests.edge.conftest import IdentityProvider, RunningEdge, Spy, bearer

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

CREATE = "/v1/commands/plan.create"
GOAL = {"goal": "run a marathon", "horizon_days": 90}


def keyed(token: str, key: str) -> dict[str, str]:
    return {**bearer(token), "Idempotency-Key": key}


async def test_two_posts_with_the_same_key_publish_the_same_message_id(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy
) -> None:
    headers = keyed(idp.token("alice"), "order-7f3a")

    first = await edge.client.post(CREATE, json=GOAL, headers=headers)
    again = await edge.client.post(CREATE, json=GOAL, headers=headers)
    # The same payload written differently is the same command.
    spaced = json.dumps(GOAL, indent=4).encode()
    third = await edge.client.post(
        CREATE, content=spaced, headers={**headers, "Content-Type": "application/json"}
    )

    assert [r.status_code for r in (first, again, third)] == [202, 202, 202]
    command_id = first.json()["command_id"]
    assert again.json()["command_id"] == third.json()["command_id"] == command_id
    taken = await spy.take(3)
    assert [m.message_id for m in taken] == [command_id] * 3
    status = await edge.client.get(
        first.headers["location"], headers=bearer(idp.token("alice"))
    )
    assert status.status_code == 200


async def test_the_same_key_from_another_subject_or_for_another_payload_differs(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy
) -> None:
    key = "shared-key-1"
    alice = await edge.client.post(
        CREATE, json=GOAL, headers=keyed(idp.token("alice"), key)
    )
    bob = await edge.client.post(
        CREATE, json=GOAL, headers=keyed(idp.token("bob"), key)
    )
    other_goal = await edge.client.post(
        CREATE,
        json={**GOAL, "horizon_days": 30},
        headers=keyed(idp.token("alice"), key),
    )
    unkeyed = await edge.client.post(CREATE, json=GOAL, headers=bearer(idp.token()))

    ids = [r.json()["command_id"] for r in (alice, bob, other_goal, unkeyed)]
    assert len(set(ids)) == 4
    taken = await spy.take(4)
    assert [m.message_id for m in taken] == ids
    bobs_status = await edge.client.get(
        alice.headers["location"], headers=bearer(idp.token("bob"))
    )
    assert bobs_status.status_code == 404


@pytest.mark.parametrize(
    "headers",
    [
        [("Idempotency-Key", "has spaces")],
        [("Idempotency-Key", "")],
        [("Idempotency-Key", "k" * 129)],
        [("Idempotency-Key", "a"), ("Idempotency-Key", "a")],
    ],
    ids=["spaces", "empty", "too-long", "repeated"],
)
async def test_a_malformed_or_repeated_idempotency_key_is_refused(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy, headers: list[tuple[str, str]]
) -> None:
    sent = [("Authorization", f"Bearer {idp.token()}"), *headers]

    refused = await edge.client.post(CREATE, json=GOAL, headers=sent)
    good = await edge.client.post(CREATE, json=GOAL, headers=bearer(idp.token()))

    assert refused.status_code == 400
    assert "idempotency-key" in refused.json()["detail"].lower()
    [message] = await spy.take(1)
    assert message.message_id == good.json()["command_id"]
