"""Signing and verification without a broker: forgeries, expiry, rotation, replays."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from messaging import headers as h
from messaging.errors import (
    InvalidSignature,
    ReplayedMessage,
    SigningConfigError,
    UnprovenPrincipal,
)
from messaging.identity import Origin, Principal, PrincipalKind, encode_principal
from messaging.signing import (
    ASSERTION_VERSION,
    Destination,
    KeyRing,
    OriginAssertion,
    SeenMessages,
    Signer,
    SigningKey,
    Verifier,
    _seal,
    carrying,
)

BODY = b'{"item":"book"}'
TO_CORE = Destination("baton.commands", "order.place", "order.place")
ALICE = Principal.user("alice", ["buyer"], entered_by="edge")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def edge_key() -> SigningKey:
    return SigningKey.generate("edge")


def make_verifier(clock: Clock, *keys: SigningKey) -> Verifier:
    return Verifier(
        KeyRing(k.public() for k in keys), introducers=frozenset({"edge"}), clock=clock
    )


def sign(key: SigningKey, clock: Clock, principal: Principal = ALICE, **kw: Any):
    signer = Signer(key, introduces_users=key.service == "edge", ttl=60, clock=clock)
    headers: dict[str, Any] = dict(encode_principal(principal))
    headers.update(
        signer.sign(kw.get("to", TO_CORE), kw.get("mid", "m1"), BODY, principal)
    )
    return headers


def verify(verifier: Verifier, headers: dict[str, Any], **kw: Any):
    return verifier.verify(
        headers,
        publisher=kw.get("publisher", "edge"),
        route=TO_CORE,
        message_id=kw.get("mid", "m1"),
        body=BODY,
        principal=kw.get("principal", ALICE),
        first_delivery=kw.get("first", True),
    )


def reseal(token: str, **changes: Any) -> str:
    """The same signature over claims changed by an attacker."""
    payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    return f"{forged.decode()}.{signature}"


def test_a_signed_message_verifies_and_yields_its_origin(
    edge_key: SigningKey, clock: Clock
) -> None:
    origin = verify(make_verifier(clock, edge_key), sign(edge_key, clock))

    assert (origin.subject, origin.issuer, origin.roles) == (
        "alice",
        "edge",
        frozenset({"buyer"}),
    )


@pytest.mark.parametrize(
    "token",
    [
        None,
        42,
        b"bytes",
        "no-dot",
        "!!!.!!!",
        "a" * 5000,
    ],
)
def test_malformed_signatures_are_refused(
    edge_key: SigningKey, clock: Clock, token: object
) -> None:
    headers = sign(edge_key, clock)
    headers[h.SIGNATURE] = token

    with pytest.raises(InvalidSignature):
        verify(make_verifier(clock, edge_key), headers)


@pytest.mark.parametrize(
    "change",
    [{"exp": 9e18}, {"iss": "core"}, {"mid": "m2"}, {"extra": 1}, {"v": 2}],
)
def test_claims_changed_under_a_valid_signature_are_refused(
    edge_key: SigningKey, clock: Clock, change: dict[str, Any]
) -> None:
    headers = sign(edge_key, clock)
    headers[h.SIGNATURE] = reseal(headers[h.SIGNATURE], **change)

    with pytest.raises(InvalidSignature):
        verify(make_verifier(clock, edge_key), headers)


def test_non_finite_numbers_in_claims_are_refused(
    edge_key: SigningKey, clock: Clock
) -> None:
    headers = sign(edge_key, clock)
    payload, signature = headers[h.SIGNATURE].split(".")
    text = base64.urlsafe_b64decode(payload + "==").decode()
    text = text.replace(f'"exp":{clock.now + 60}', '"exp":Infinity')
    forged = base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()
    headers[h.SIGNATURE] = f"{forged}.{signature}"

    with pytest.raises(InvalidSignature, match="cannot be decoded"):
        verify(make_verifier(clock, edge_key), headers)


def test_an_assertion_is_refused_once_expired(
    edge_key: SigningKey, clock: Clock
) -> None:
    headers = sign(edge_key, clock)
    clock.now += 61

    with pytest.raises(InvalidSignature, match="expired"):
        verify(make_verifier(clock, edge_key), headers)


def test_an_assertion_from_the_future_is_refused(
    edge_key: SigningKey, clock: Clock
) -> None:
    headers = sign(edge_key, Clock(clock.now + 120))

    with pytest.raises(InvalidSignature, match="future"):
        verify(make_verifier(clock, edge_key), headers)


def test_a_replay_is_refused_but_a_redelivery_is_not(
    edge_key: SigningKey, clock: Clock
) -> None:
    verifier = make_verifier(clock, edge_key)
    headers = sign(edge_key, clock)
    verify(verifier, headers)

    verify(verifier, headers, first=False)
    with pytest.raises(ReplayedMessage):
        verify(verifier, headers)


def test_the_replay_cache_forgets_ids_once_they_expire() -> None:
    seen = SeenMessages(capacity=2)

    assert seen.admit("a", expires_at=10, now=0)
    assert not seen.admit("a", expires_at=10, now=5)
    assert seen.admit("b", expires_at=20, now=11)
    assert len(seen) == 1


def test_keys_rotate_with_a_grace_period(clock: Clock, tmp_path: Path) -> None:
    old, new = SigningKey.generate("edge"), SigningKey.generate("edge")
    ring_file = tmp_path / "ring.json"
    KeyRing([old.public(), new.public()]).retiring(old.kid, clock.now + 30).save(
        ring_file
    )
    verifier = Verifier(
        KeyRing.load(ring_file), introducers=frozenset({"edge"}), clock=clock
    )

    verify(verifier, sign(old, clock, mid="m1"), mid="m1")
    verify(verifier, sign(new, clock, mid="m2"), mid="m2")
    clock.now += 31
    verify(verifier, sign(new, clock, mid="m3"), mid="m3")
    with pytest.raises(InvalidSignature, match="retired"):
        verify(verifier, sign(old, clock, mid="m4"), mid="m4")


def test_a_key_file_round_trips_and_keeps_its_owner(
    edge_key: SigningKey, tmp_path: Path
) -> None:
    path = tmp_path / "edge.key"
    edge_key.save(path)

    loaded = SigningKey.load(path)
    assert (loaded.service, loaded.kid) == ("edge", edge_key.kid)
    assert path.stat().st_mode & 0o077 == 0
    path.write_bytes(path.read_bytes().split(b"\n", 1)[1])
    with pytest.raises(SigningConfigError):
        SigningKey.load(path)


def test_a_worker_signer_refuses_to_introduce_a_user(clock: Clock) -> None:
    signer = Signer(SigningKey.generate("core"), introduces_users=False, clock=clock)

    with pytest.raises(UnprovenPrincipal, match="only passes on"):
        signer.sign(TO_CORE, "m1", BODY, ALICE.handed_to("core", Origin.EVENT))


def test_a_worker_passes_on_the_origin_it_received(
    edge_key: SigningKey, clock: Clock
) -> None:
    core_key = SigningKey.generate("core")
    verifier = make_verifier(clock, edge_key, core_key)
    origin = verify(verifier, sign(edge_key, clock))
    passed = ALICE.handed_to("core", Origin.EVENT)

    with carrying(origin):
        headers = sign(core_key, clock, passed, mid="m2")

    assert headers[h.ORIGIN_ASSERTION] == origin.token
    again = verify(verifier, headers, publisher="core", mid="m2", principal=passed)
    assert again.issuer == "edge"


def test_a_cached_origin_still_expires(edge_key: SigningKey, clock: Clock) -> None:
    verifier = Verifier(
        KeyRing([edge_key.public()]), introducers=frozenset({"edge"}), clock=clock
    )
    signer = Signer(
        edge_key, introduces_users=True, ttl=600, origin_ttl=60, clock=clock
    )
    headers = dict(encode_principal(ALICE))
    headers.update(signer.sign(TO_CORE, "m1", BODY, ALICE))
    verify(verifier, headers)
    clock.now += 61

    with pytest.raises(InvalidSignature, match="baton-origin-assertion: expired"):
        verify(verifier, headers, first=False)


def test_a_service_may_vouch_only_for_itself(clock: Clock) -> None:
    core_key = SigningKey.generate("core")
    verifier = make_verifier(clock, core_key)
    itself = Principal.service("core", ["maintenance"], origin=Origin.SCHEDULE)
    verify(verifier, sign(core_key, clock, itself), publisher="core", principal=itself)

    # core's own key, honestly used, vouching for another service.
    users = Principal.service("users", ["maintenance"], origin=Origin.SCHEDULE)
    claims = {
        "v": ASSERTION_VERSION,
        "iss": "core",
        "sub": "users",
        "kind": "service",
        "roles": ["maintenance"],
        "tenant": None,
        "iat": clock.now,
        "exp": clock.now + 60,
    }
    vouched = OriginAssertion(
        "users",
        PrincipalKind.SERVICE,
        frozenset({"maintenance"}),
        None,
        "core",
        clock.now + 60,
        _seal(claims, core_key),
    )
    with carrying(vouched):
        headers = sign(core_key, clock, users, mid="m2")

    with pytest.raises(UnprovenPrincipal, match="may only vouch for itself"):
        verify(verifier, headers, publisher="core", principal=users, mid="m2")


def test_an_assertion_valid_for_too_long_is_refused(
    edge_key: SigningKey, clock: Clock
) -> None:
    signer = Signer(edge_key, introduces_users=True, ttl=2 * 86_400, clock=clock)
    headers = dict(encode_principal(ALICE))
    headers.update(signer.sign(TO_CORE, "m1", BODY, ALICE))

    with pytest.raises(InvalidSignature, match="valid for longer than"):
        verify(make_verifier(clock, edge_key), headers)
