"""An entry point vouches for a user once per stretch of time, not once per message."""

from __future__ import annotations

import pytest

from messaging import headers as h
from messaging.errors import InvalidSignature
from messaging.identity import Principal, encode_principal
from messaging.signing import (
    Destination,
    Envelope,
    KeyRing,
    Signer,
    SigningKey,
)
from messaging.verifier import Verifier

BODY = b'{"item":"book"}'
TO_CORE = Destination("baton.commands", "order.place", "order.place")
ALICE = Principal.user("alice", ["buyer"], entered_by="edge")
ORIGIN_TTL = 3600.0


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def edge(clock: Clock) -> Signer:
    key = SigningKey.generate("edge")
    return Signer(key, introduces_users=True, origin_ttl=ORIGIN_TTL, clock=clock)


def _origin(signer: Signer, principal: Principal, message_id: str) -> str:
    return signer.sign(TO_CORE, message_id, BODY, principal)[h.ORIGIN_ASSERTION]


def test_the_same_user_gets_the_same_origin_until_half_its_lifetime_is_gone(
    edge: Signer, clock: Clock
) -> None:
    first = _origin(edge, ALICE, "m1")
    clock.now += ORIGIN_TTL / 2 - 1
    again = _origin(edge, ALICE, "m2")
    clock.now += 2
    renewed = _origin(edge, ALICE, "m3")

    assert again == first
    assert renewed != first


def test_another_role_set_or_tenant_gets_its_own_origin(edge: Signer) -> None:
    planner = Principal.user("alice", ["buyer", "planner"], entered_by="edge")
    tenant = Principal.user("alice", ["buyer"], entered_by="edge", tenant="acme")
    bob = Principal.user("bob", ["buyer"], entered_by="edge")

    origins = {_origin(edge, p, "m1") for p in (ALICE, planner, tenant, bob)}

    assert len(origins) == 4


def envelope(message_id: str) -> Envelope:
    return Envelope("edge", TO_CORE, message_id, "", "", BODY)


def test_a_reused_origin_still_verifies_and_still_vouches_only_for_its_user(
    edge: Signer, clock: Clock
) -> None:
    verifier = Verifier(
        KeyRing([edge.key.public()]), introducers=frozenset({"edge"}), clock=clock
    )
    for message_id in ("m1", "m2"):
        headers = {
            **encode_principal(ALICE),
            **edge.sign(TO_CORE, message_id, BODY, ALICE),
        }
        origin = verifier.verify(headers, envelope(message_id), ALICE)
        assert origin.subject == "alice"

    # The cached origin is alice's: it cannot be stretched over another message
    # that claims different roles.
    mallory = Principal.user("alice", ["buyer", "admin"], entered_by="edge")
    forged = {**encode_principal(mallory), **edge.sign(TO_CORE, "m3", BODY, ALICE)}
    with pytest.raises(InvalidSignature, match="other identity headers"):
        verifier.verify(forged, envelope("m3"), mallory)
