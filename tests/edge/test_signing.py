"""The edge signs the identity of what it publishes when the deployment asks it to."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_api.app import create_app
from edge_api.settings import EdgeSettings
from messaging import headers as h
from messaging.errors import TrustConfigError
from messaging.identity import decode_principal
from messaging.settings import BrokerSettings
from messaging.signing import Destination, Envelope, KeyRing, SigningKey
from messaging.verifier import Verifier
from tests.edge.conftest import IdentityProvider, Spy, bearer, run_edge

GOAL = {"goal": "run a marathon", "horizon_days": 90}


@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_command_from_a_signing_edge_verifies_as_introduced_by_the_edge(
    edge_settings: EdgeSettings,
    settings: BrokerSettings,
    idp: IdentityProvider,
    spy: Spy,
    tmp_path: Path,
) -> None:
    key = SigningKey.generate("edge")
    key.save(tmp_path / "edge.key")
    signing = settings.model_copy(update={"signing_key_file": tmp_path / "edge.key"})

    async for running in run_edge(edge_settings, signing):
        response = await running.client.post(
            "/v1/commands/plan.create", json=GOAL, headers=bearer(idp.token("alice"))
        )

    assert response.status_code == 202
    [message] = await spy.take(1)
    table = dict(message.headers or {})
    assert h.SIGNATURE in table and h.ORIGIN_ASSERTION in table
    verifier = Verifier(KeyRing([key.public()]), introducers=frozenset({"edge"}))
    principal = decode_principal(table)
    delivery = Envelope(
        publisher="edge",
        route=Destination(settings.topology().commands, "plan.create", "plan.create"),
        message_id=message.message_id or "",
        correlation_id=message.correlation_id or "",
        reply_to=message.reply_to or "",
        body=message.body,
    )
    verifier.verify(table, delivery, principal)
    assert principal.subject == "alice"


def test_an_edge_that_must_sign_without_a_key_refuses_to_start(
    edge_settings: EdgeSettings, settings: BrokerSettings
) -> None:
    strict = settings.model_copy(
        update={"trust_publishers": True, "require_signatures": True}
    )

    with pytest.raises(TrustConfigError, match="no signing key"):
        create_app(edge_settings, strict)
