"""Payloads are taken as written: no coercion, no repeated keys, nothing sent on doubt.

Each refused body is answered 422 with what was wrong, and publishes nothing: a
spy bound to every command sees only the good command sent after it.
"""

from __future__ import annotations

import json

import pytest

from tests.edge.conftest import IdentityProvider, RunningEdge, Spy, bearer

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

CREATE = "/v1/commands/plan.create"
GOAL = {"goal": "run a marathon", "horizon_days": 90}


async def only_a_good_command_follows(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy
) -> None:
    good = await edge.client.post(CREATE, json=GOAL, headers=bearer(idp.token()))
    assert good.status_code == 202
    [message] = await spy.take(1)
    assert message.message_id == good.json()["command_id"]
    assert json.loads(message.body) == GOAL


@pytest.mark.parametrize(
    "horizon", [True, "3", 3.0, "90", None, [90], {"days": 90}], ids=repr
)
async def test_a_value_of_another_json_type_is_refused_not_coerced(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy, horizon: object
) -> None:
    body = {"goal": "run a marathon", "horizon_days": horizon}

    response = await edge.client.post(CREATE, json=body, headers=bearer(idp.token()))

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "horizon_days"]
    assert error["type"] == "int_type"
    await only_a_good_command_follows(edge, idp, spy)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'{"goal": "run", "horizon_days": 3, "horizon_days": 300}', "horizon_days"),
        (b'{"goal": "run", "goal": "walk", "horizon_days": 3}', "goal"),
    ],
)
async def test_a_key_given_twice_is_refused(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy, raw: bytes, key: str
) -> None:
    headers = {**bearer(idp.token()), "Content-Type": "application/json"}

    response = await edge.client.post(CREATE, content=raw, headers=headers)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["type"] == "json_invalid"
    assert error["ctx"]["error"] == f"the key {key!r} appears twice"
    await only_a_good_command_follows(edge, idp, spy)


async def test_a_body_nested_too_deep_for_the_parser_is_422(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy
) -> None:
    headers = {**bearer(idp.token()), "Content-Type": "application/json"}
    raw = b'{"goal": ' + b"[" * 20_000 + b"]" * 20_000 + b', "horizon_days": 3}'

    response = await edge.client.post(CREATE, content=raw, headers=headers)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["ctx"]["error"] == "the JSON is nested too deeply"
    await only_a_good_command_follows(edge, idp, spy)
