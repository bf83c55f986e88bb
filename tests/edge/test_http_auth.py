"""Authentication as HTTP sees it: 401 with a challenge, 503 for our key outage."""

from __future__ import annotations

import logging
import time

import pytest

from edge_api.settings import EdgeSettings
from messaging.settings import BrokerSettings
from tests.conftest import Broker
from tests.edge.conftest import (
    IdentityProvider,
    RunningEdge,
    Spy,
    b64,
    bearer,
    run_edge,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

GOAL = {"goal": "run a marathon", "horizon_days": 90}
CREATE = "/v1/commands/plan.create"


async def test_no_token_is_401_with_a_bare_bearer_challenge(edge: RunningEdge) -> None:
    response = await edge.client.post(CREATE, json=GOAL)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="baton"'
    assert response.json() == {"detail": "a bearer token is required"}


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (["Basic YWxpY2U6c2VjcmV0"], "the Authorization header is not a bearer token"),
        (["Bearer "], "the Authorization header is not a bearer token"),
        (["Bearer not.a.jwt"], "the token's header is not valid JSON"),
        (["Bearer a", "Bearer b"], "more than one Authorization header"),
    ],
)
async def test_a_bad_authorization_header_is_401_invalid_token(
    edge: RunningEdge, authorization: list[str], reason: str
) -> None:
    headers = [("Authorization", value) for value in authorization]

    response = await edge.client.post(CREATE, json=GOAL, headers=headers)

    assert response.status_code == 401
    assert response.json() == {"detail": reason}
    assert response.headers["www-authenticate"] == (
        f'Bearer realm="baton", error="invalid_token", error_description="{reason}"'
    )


@pytest.mark.parametrize(
    "header",
    [b"[" * 1000, b'{"a":' * 1000],
    ids=["deep-array", "deep-object"],
)
async def test_a_deeply_nested_token_header_is_401_not_500(
    edge: RunningEdge, spy: Spy, idp: IdentityProvider, header: bytes
) -> None:
    token = b64(header) + ".e30.c2ln"

    response = await edge.client.post(CREATE, json=GOAL, headers=bearer(token))

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith(
        'Bearer realm="baton", error="invalid_token"'
    )
    good = await edge.client.post(CREATE, json=GOAL, headers=bearer(idp.token()))
    assert good.status_code == 202
    await spy.take(1)


async def test_an_expired_token_is_401_and_never_logged(
    edge: RunningEdge,
    idp: IdentityProvider,
    spy: Spy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    now = int(time.time())
    expired = idp.token("alice", iat=now - 7200, exp=now - 3600)
    good = idp.token("alice")

    refused = await edge.client.post(CREATE, json=GOAL, headers=bearer(expired))
    accepted = await edge.client.post(CREATE, json=GOAL, headers=bearer(good))

    assert refused.status_code == 401
    assert (
        'error_description="the token has expired"'
        in (refused.headers["www-authenticate"])
    )
    assert accepted.status_code == 202
    await spy.take(1)
    assert "refused a bearer token: the token has expired" in caplog.text
    for token in (expired, good):
        assert token.rsplit(".", 1)[1] not in caplog.text


async def test_a_sub_that_cannot_be_a_principal_is_401_not_500(
    edge: RunningEdge, idp: IdentityProvider
) -> None:
    response = await edge.client.post(
        CREATE, json=GOAL, headers=bearer(idp.token('quote"and\\backslash'))
    )

    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="baton", error="invalid_token"')
    description = challenge.split('error_description="', 1)[1]
    assert '"' not in description[:-1] and "\\" not in description


async def test_a_key_server_outage_with_a_cold_cache_is_503_with_retry_after(
    edge_settings: EdgeSettings,
    settings: BrokerSettings,
    broker: Broker,
    idp: IdentityProvider,
) -> None:
    # `broker` removes the exchanges this edge declares when it connects.
    idp.server.failing = True
    async for running in run_edge(edge_settings, settings):
        response = await running.client.post(
            CREATE, json=GOAL, headers=bearer(idp.token())
        )

    assert response.status_code == 503
    assert response.headers["retry-after"] == str(edge_settings.retry_after)
    assert "signing keys unavailable" in response.json()["detail"]


async def test_a_key_server_outage_with_a_warm_cache_keeps_serving(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy
) -> None:
    # The lifespan warmed the cache at startup.
    idp.server.failing = True

    response = await edge.client.post(CREATE, json=GOAL, headers=bearer(idp.token()))

    assert response.status_code == 202
    await spy.take(1)
