"""Signing and verification without a broker: forgeries, expiry, rotation, replays."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from messaging import headers as h
from messaging.assertion import seal
from messaging.errors import (
    InvalidSignature,
    ReplayedMessage,
    SigningConfigError,
    UnprovenPrincipal,
)
from messaging.identity import Origin, Principal, PrincipalKind, encode_principal
from messaging.replay import SeenMessages
from messaging.signing import (
    ASSERTION_VERSION,
    Destination,
    Envelope,
    KeyRing,
    KeyRingFile,
    OriginAssertion,
    Signer,
    SigningKey,
    carrying,
)
from messaging.verifier import Verifier

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
        KeyRing(k.public() for k in keys),
        introducers=frozenset({"edge"}),
        service_roles={"core": frozenset({"maintenance"})},
        clock=clock,
    )


def sign(key: SigningKey, clock: Clock, principal: Principal = ALICE, **kw: Any):
    entry = key.service in ("edge", "scheduler")
    signer = Signer(
        key, introduces_users=entry, roles=principal.roles, ttl=60, clock=clock
    )
    headers: dict[str, Any] = dict(encode_principal(principal))
    headers.update(
        signer.sign(kw.get("to", TO_CORE), kw.get("mid", "m1"), BODY, principal)
    )
    return headers


def verify(verifier: Verifier, headers: dict[str, Any], **kw: Any):
    delivery = Envelope(
        publisher=kw.get("publisher", "edge"),
        route=TO_CORE,
        message_id=kw.get("mid", "m1"),
        correlation_id=kw.get("cid", ""),
        reply_to=kw.get("reply_to", ""),
        body=BODY,
        attempt=kw.get("attempt", 0),
        redelivered=kw.get("redelivered", False),
        copy=kw.get("copy", ("", 0)),
    )
    return verifier.verify(headers, delivery, kw.get("principal", ALICE))


def reseal(token: str, **changes: Any) -> str:
    """The same signature over claims changed by an attacker."""
    payload, signature, path = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    return f"{forged.decode()}.{signature}.{path}"


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
    payload, signature, path = headers[h.SIGNATURE].split(".")
    text = base64.urlsafe_b64decode(payload + "==").decode()
    text = text.replace(f'"exp":{clock.now + 60}', '"exp":Infinity')
    forged = base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()
    headers[h.SIGNATURE] = f"{forged}.{signature}.{path}"

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


def test_a_redelivery_of_a_message_in_flight_passes_but_a_second_publish_does_not(
    edge_key: SigningKey, clock: Clock
) -> None:
    verifier = make_verifier(clock, edge_key)
    headers = sign(edge_key, clock)
    verify(verifier, headers)

    verify(verifier, headers, redelivered=True)
    with pytest.raises(ReplayedMessage):
        verify(verifier, headers)


def test_a_settled_message_is_a_replay_even_when_flagged_redelivered(
    edge_key: SigningKey, clock: Clock
) -> None:
    verifier = make_verifier(clock, edge_key)
    headers = sign(edge_key, clock)
    verify(verifier, headers)
    verifier.settled(("edge", "m1", 0))

    for redelivered in (False, True):
        with pytest.raises(ReplayedMessage, match="already admitted"):
            verify(verifier, headers, redelivered=redelivered)


def test_only_the_admitted_copy_settles_its_message(
    edge_key: SigningKey, clock: Clock
) -> None:
    # A forged copy under the same id is refused before the replay check, and
    # its settlement must not make the broker's redelivery of the real one a
    # replay.
    verifier = make_verifier(clock, edge_key)
    headers = sign(edge_key, clock)
    verify(verifier, headers, copy=("ctag-1", 1))
    verifier.settled(("edge", "m1", 0), ("ctag-1", 2))

    verify(verifier, headers, redelivered=True, copy=("ctag-2", 1))
    verifier.settled(("edge", "m1", 0), ("ctag-2", 1))
    with pytest.raises(ReplayedMessage):
        verify(verifier, headers, redelivered=True, copy=("ctag-2", 2))


def test_each_retry_attempt_is_admitted_once_after_the_one_before_settled(
    edge_key: SigningKey, clock: Clock
) -> None:
    verifier = make_verifier(clock, edge_key)
    headers = sign(edge_key, clock)
    verify(verifier, headers)
    verifier.settled(("edge", "m1", 0))

    verify(verifier, headers, attempt=1)
    verifier.settled(("edge", "m1", 1))
    with pytest.raises(ReplayedMessage):
        verify(verifier, headers, attempt=1, redelivered=True)
    verify(verifier, headers, attempt=2)


def test_the_same_message_id_from_another_publisher_is_no_replay(
    edge_key: SigningKey, clock: Clock
) -> None:
    scheduler_key = SigningKey.generate("scheduler")
    verifier = Verifier(
        KeyRing([edge_key.public(), scheduler_key.public()]),
        introducers=frozenset({"edge", "scheduler"}),
        clock=clock,
    )
    as_scheduler = Principal.user("alice", ["buyer"], entered_by="scheduler")
    verify(verifier, sign(edge_key, clock))
    verifier.settled(("edge", "m1", 0))

    origin = verify(
        verifier,
        sign(scheduler_key, clock, as_scheduler),
        publisher="scheduler",
        principal=as_scheduler,
    )

    assert origin.issuer == "scheduler"


def test_the_replay_cache_forgets_deliveries_once_they_expire() -> None:
    seen = SeenMessages(capacity=2)
    a, b = ("edge", "a", 0), ("edge", "b", 0)

    assert seen.admit(a, expires_at=10, now=0, redelivered=False)
    seen.settle(a)
    assert not seen.admit(a, expires_at=10, now=5, redelivered=True)
    assert seen.admit(b, expires_at=20, now=11, redelivered=False)
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"reply_to": "baton.audit.replies.0123456789ab"}, "another reply_to"),
        ({"cid": "another"}, "another correlation id"),
    ],
)
def test_a_signature_binds_reply_to_and_correlation_id(
    edge_key: SigningKey, clock: Clock, change: dict[str, str], expected: str
) -> None:
    signer = Signer(edge_key, introduces_users=True, clock=clock)
    headers: dict[str, Any] = dict(encode_principal(ALICE))
    headers.update(
        signer.sign(
            TO_CORE,
            "m1",
            BODY,
            ALICE,
            correlation_id="c1",
            reply_to="baton.edge.replies.0123456789ab",
        )
    )
    sent = {"cid": "c1", "reply_to": "baton.edge.replies.0123456789ab"}
    verifier = make_verifier(clock, edge_key)

    with pytest.raises(InvalidSignature, match=expected):
        verify(verifier, headers, **{**sent, **change})
    verify(verifier, headers, **sent)


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


def test_a_ring_file_is_read_again_when_it_changes(
    clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="messaging.keyring")
    old, new = SigningKey.generate("edge"), SigningKey.generate("edge")
    ring_file = tmp_path / "ring.json"
    KeyRing([old.public()]).save(ring_file)
    ring = KeyRingFile.open(ring_file, interval=1.0, clock=clock)
    verifier = Verifier(ring, introducers=frozenset({"edge"}), clock=clock)
    verify(verifier, sign(old, clock, mid="m1"), mid="m1")

    KeyRing([old.public(), new.public()]).retiring(old.kid, clock.now).save(ring_file)
    with pytest.raises(InvalidSignature, match="unknown key id"):
        verify(verifier, sign(new, clock, mid="m2"), mid="m2")
    clock.now += 1.5

    verify(verifier, sign(new, clock, mid="m3"), mid="m3")
    with pytest.raises(InvalidSignature, match="retired"):
        verify(verifier, sign(old, clock, mid="m4"), mid="m4")
    assert "reloaded the key ring" in caplog.text


@pytest.mark.parametrize("broken", ["{not json", '{"keys": []}', None])
def test_a_ring_file_that_breaks_keeps_the_ring_in_use(
    edge_key: SigningKey,
    clock: Clock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    broken: str | None,
) -> None:
    ring_file = tmp_path / "ring.json"
    KeyRing([edge_key.public()]).save(ring_file)
    ring = KeyRingFile.open(ring_file, interval=1.0, clock=clock)
    verifier = Verifier(ring, introducers=frozenset({"edge"}), clock=clock)

    if broken is None:
        ring_file.unlink()
    else:
        ring_file.write_text(broken)
    clock.now += 1.5

    verify(verifier, sign(edge_key, clock))
    assert "keeping the key ring in use" in caplog.text


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
        verify(verifier, headers, redelivered=True)


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
        seal(claims, core_key),
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


def test_a_service_may_vouch_for_itself_only_with_the_roles_it_declared(
    clock: Clock,
) -> None:
    core_key = SigningKey.generate("core")
    verifier = make_verifier(clock, core_key)
    # core's own key and signer; the signer is told it may hold admin, which
    # core's declaration (maintenance only) does not say.
    promoted = Principal.service(
        "core", ["maintenance", "admin"], origin=Origin.SCHEDULE
    )
    headers = sign(core_key, clock, promoted)

    with pytest.raises(UnprovenPrincipal, match=r"roles \['admin'\], but declares"):
        verify(verifier, headers, publisher="core", principal=promoted)


def test_a_signer_refuses_to_act_as_itself_with_an_undeclared_role(
    clock: Clock,
) -> None:
    signer = Signer(
        SigningKey.generate("core"),
        introduces_users=False,
        roles=frozenset({"maintenance"}),
        clock=clock,
    )
    promoted = Principal.service(
        "core", ["maintenance", "admin"], origin=Origin.SCHEDULE
    )

    with pytest.raises(UnprovenPrincipal, match=r"roles \['admin'\]: it declares"):
        signer.sign(TO_CORE, "m1", BODY, promoted)


@pytest.mark.asyncio
async def test_messages_signed_in_one_loop_turn_share_a_signature_and_each_verifies(
    edge_key: SigningKey, clock: Clock
) -> None:
    signer = Signer(edge_key, introduces_users=True, ttl=60, clock=clock)
    verifier = make_verifier(clock, edge_key)
    ids = [f"m{i}" for i in range(10)]

    signed = await asyncio.gather(
        *(signer.sign_soon(TO_CORE, mid, BODY, ALICE) for mid in ids)
    )

    assert len({s[h.SIGNATURE].split(".")[1] for s in signed}) == 1
    for mid, signature in zip(ids, signed, strict=True):
        headers = {**encode_principal(ALICE), **signature}
        assert verify(verifier, headers, mid=mid).subject == "alice"
    # Each message is bound to its own id even though the signature is shared.
    moved = {**encode_principal(ALICE), **signed[0]}
    with pytest.raises(InvalidSignature, match="another message id"):
        verify(verifier, moved, mid="m1")


ORIGIN_TTL = 3600.0


@pytest.fixture
def edge(edge_key: SigningKey, clock: Clock) -> Signer:
    return Signer(edge_key, introduces_users=True, origin_ttl=ORIGIN_TTL, clock=clock)


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


def test_a_reused_origin_still_verifies_and_still_vouches_only_for_its_user(
    edge: Signer, edge_key: SigningKey, clock: Clock
) -> None:
    verifier = make_verifier(clock, edge_key)
    for message_id in ("m1", "m2"):
        headers = {
            **encode_principal(ALICE),
            **edge.sign(TO_CORE, message_id, BODY, ALICE),
        }
        assert verify(verifier, headers, mid=message_id).subject == "alice"

    # The cached origin is alice's: it cannot be stretched over another message
    # that claims different roles.
    mallory = Principal.user("alice", ["buyer", "admin"], entered_by="edge")
    forged = {**encode_principal(mallory), **edge.sign(TO_CORE, "m3", BODY, ALICE)}
    with pytest.raises(InvalidSignature, match="other identity headers"):
        verify(verifier, forged, mid="m3", principal=mallory)
