"""The consumer's side of signed identity: is this message what its publisher sent?

A :class:`Verifier` opens a message's seal with the publisher's public key (the
key ring), checks that its claims bind this very delivery (message id,
correlation id, reply_to, body, exchange, routing key, type, identity headers),
checks the origin (who the work is for, vouched for by an introducer, or by a
service for itself with its declared roles), and admits the delivery once to
the replay cache (messaging/replay.py). What the signer puts in, and the rules
behind them, are in messaging/signing.py.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from messaging import headers as h
from messaging.assertion import sha256_hex, unseal
from messaging.errors import InvalidSignature, ReplayedMessage, UnprovenPrincipal
from messaging.identity import Principal, PrincipalKind
from messaging.keyring import KeyRing, KeyRingFile, RingKey
from messaging.replay import Copy, ReplayKey, SeenMessages
from messaging.sealing import RootCache
from messaging.signing import (
    CLOCK_SKEW,
    MAX_LIFETIME,
    Clock,
    Envelope,
    OriginAssertion,
    identity_digest,
)

ORIGIN_CACHE_SIZE: Final = 4096


class Verifier:
    """Checks signatures and origins against the key ring and the introducers."""

    def __init__(
        self,
        ring: KeyRing | KeyRingFile,
        *,
        introducers: frozenset[str],
        service_roles: Mapping[str, frozenset[str]] | None = None,
        seen: SeenMessages | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.ring = ring
        self.introducers = introducers
        # A service vouching for itself may name only the roles it declared.
        self.service_roles = service_roles or {}
        self._seen = seen or SeenMessages()
        self._clock = clock
        # Every hop of a piece of work carries the same origin assertion: its
        # signature and what it vouches for are worked out once, its expiry and
        # key checked on every use.
        self._origins: OrderedDict[str, _OpenedOrigin] = OrderedDict()
        # The messages of one batch share a signature: it is checked once.
        self._roots = RootCache()

    def verify(
        self, headers: Mapping[str, Any], envelope: Envelope, principal: Principal
    ) -> OriginAssertion:
        """Check the message's signature and origin; returns the verified origin."""
        now = self._clock()
        route = envelope.route
        claims = self._open(
            headers.get(h.SIGNATURE), h.SIGNATURE, envelope.publisher, now
        )
        actual = (
            envelope.message_id,
            envelope.correlation_id,
            envelope.reply_to,
            sha256_hex(envelope.body),
            route.exchange,
            route.routing_key,
            route.message_type,
            identity_digest(principal),
        )
        if tuple(claims[name] for name, _ in _BOUND) != actual:
            for (name, what), value in zip(_BOUND, actual, strict=True):
                _expect(claims, name, value, what)

        origin = self._origin(headers.get(h.ORIGIN_ASSERTION), principal, now)
        if not self._seen.admit(
            envelope.replay_key,
            claims["exp"],
            now,
            redelivered=envelope.redelivered,
            copy=envelope.copy,
        ):
            raise ReplayedMessage(
                f"message {envelope.message_id} from {envelope.publisher} (attempt "
                f"{envelope.attempt}) was already admitted here"
            )
        return origin

    def settled(self, key: ReplayKey, copy: Copy = ("", 0)) -> None:
        """The consumer settled this copy of a delivery: the same again is a replay."""
        self._seen.settle(key, copy)

    def _origin(
        self, token: object, principal: Principal, now: float
    ) -> OriginAssertion:
        opened = self._open_origin(token)
        self._check_use(opened.claims, opened.key, h.ORIGIN_ASSERTION, None, now)
        if opened.vouched is None:
            opened.vouched = self._vouching(opened.claims, token)
        origin = opened.vouched
        if not origin.vouches_for(principal):
            raise UnprovenPrincipal(
                f"the headers act for {principal.kind.value} {principal.subject!r} "
                f"with roles {sorted(principal.roles)}, but {origin.issuer} vouched "
                f"for {origin.kind.value} {origin.subject!r} with roles "
                f"{sorted(origin.roles)}"
            )
        return origin

    def _vouching(self, claims: dict[str, Any], token: object) -> OriginAssertion:
        """The origin `claims` assert, if their issuer may vouch for it."""
        issuer = claims["iss"]
        kind = claims.get("kind")
        if kind == PrincipalKind.SERVICE.value:
            if claims.get("sub") != issuer:
                raise UnprovenPrincipal(
                    f"{issuer} vouched for service {claims.get('sub')!r}: a service "
                    "may only vouch for itself"
                )
        elif kind == PrincipalKind.USER.value:
            if issuer not in self.introducers:
                raise UnprovenPrincipal(
                    f"{issuer} vouched for a user but does not introduce users"
                )
        else:
            raise InvalidSignature(f"{h.ORIGIN_ASSERTION}: unknown kind {kind!r}")
        origin = _origin_from(claims, token)
        if origin.kind is PrincipalKind.SERVICE:
            self._check_own_roles(origin)
        return origin

    def _check_own_roles(self, origin: OriginAssertion) -> None:
        declared = self.service_roles.get(origin.issuer, frozenset())
        undeclared = origin.roles - declared
        if undeclared:
            raise UnprovenPrincipal(
                f"{origin.issuer} vouched for itself with roles "
                f"{sorted(undeclared)}, but declares only {sorted(declared)}"
            )

    def _open(
        self, token: object, header: str, publisher: str | None, now: float
    ) -> dict[str, Any]:
        claims, key = unseal(token, header, self.keys(), self._roots)
        self._check_use(claims, key, header, publisher, now)
        return claims

    def _check_use(
        self,
        claims: dict[str, Any],
        key: RingKey,
        header: str,
        publisher: str | None,
        now: float,
    ) -> None:
        """What is checked on every use: the key, the issuer, the time."""
        if not key.usable_at(now):
            raise InvalidSignature(f"{header}: key {key.kid} was retired")
        if claims.get("iss") != key.service:
            raise InvalidSignature(
                f"{header}: key {key.kid} belongs to {key.service}, not to "
                f"{claims.get('iss')!r}"
            )
        if publisher is not None and key.service != publisher:
            raise InvalidSignature(
                f"{header}: signed by {key.service}, but published by {publisher}"
            )
        if claims["iat"] > now + CLOCK_SKEW:
            raise InvalidSignature(f"{header}: issued in the future")
        if claims["exp"] < now:
            raise InvalidSignature(f"{header}: expired {now - claims['exp']:.0f}s ago")
        if claims["exp"] - claims["iat"] > MAX_LIFETIME:
            raise InvalidSignature(
                f"{header}: valid for longer than {MAX_LIFETIME:.0f}s"
            )

    def keys(self) -> KeyRing:
        """The ring in use now: a ring file is followed as it changes."""
        ring = self.ring
        return ring.current() if isinstance(ring, KeyRingFile) else ring

    def _open_origin(self, token: object) -> _OpenedOrigin:
        ring = self.keys()
        if type(token) is not str:
            return _OpenedOrigin(*unseal(token, h.ORIGIN_ASSERTION, ring))
        # A cached origin stands only while its key is the one in the ring now.
        cached = self._origins.get(token)
        if cached is not None and ring.get(cached.key.kid) is cached.key:
            self._origins.move_to_end(token)
            return cached
        opened = _OpenedOrigin(*unseal(token, h.ORIGIN_ASSERTION, ring, self._roots))
        self._origins[token] = opened
        if len(self._origins) > ORIGIN_CACHE_SIZE:
            self._origins.popitem(last=False)
        return opened


@dataclass(slots=True)
class _OpenedOrigin:
    """An origin assertion whose signature verified, and once known, what it
    vouches for (which depends on the token alone)."""

    claims: dict[str, Any]
    key: RingKey
    vouched: OriginAssertion | None = None


# What a message assertion binds, in the order verify() compares it, and what
# a mismatch means.
_BOUND: Final = (
    ("mid", "another message id"),
    ("cid", "another correlation id"),
    ("rt", "another reply_to"),
    ("body", "another body"),
    ("ex", "another exchange"),
    ("rk", "another routing key"),
    ("type", "another message type"),
    ("idh", "other identity headers"),
)


def _origin_from(claims: dict[str, Any], token: object) -> OriginAssertion:
    roles = claims["roles"]
    if not all(type(role) is str for role in roles):
        raise InvalidSignature(f"{h.ORIGIN_ASSERTION}: roles must be strings")
    return OriginAssertion(
        subject=claims["sub"],
        kind=PrincipalKind(claims["kind"]),
        roles=frozenset(roles),
        tenant=claims["tenant"],
        issuer=claims["iss"],
        expires_at=float(claims["exp"]),
        token=str(token),
    )


def _expect(claims: Mapping[str, Any], name: str, actual: str, what: str) -> None:
    if claims[name] != actual:
        raise InvalidSignature(f"{h.SIGNATURE}: signed for {what} ({name})")
