"""Signed identity: which service published a message, for whom, and that nothing moved.

A broker account proves which connection published a message, but not that the
identity headers are the ones that service wrote for this body on this route. The
publishing service therefore signs an *assertion* (Ed25519) that binds together:

    the message id, the correlation id and reply_to, a SHA-256 of the exact body
    bytes, the exchange, the routing key, the message type, a digest of the
    identity headers, the issue time and an expiry.

A consumer verifies it with the publisher's public key (a key ring: key id ->
service and key) before it trusts anything else. Replaying a delivery within its
expiry is caught by a cache of the deliveries admitted and settled, by publisher,
message id and attempt; after expiry the assertion is refused outright. Moving a
valid assertion onto another body or route, or pointing its reply elsewhere,
breaks the body hash or the property it names.

A second assertion, the *origin*, says who the work is for. Only an entry point
(a declaration with ``introduces_users``) may sign one for a user; a service may
sign one only for itself, with no role it did not declare. Every hop copies the
origin it received, unchanged, and the consumer checks that its subject, kind,
roles and tenant equal the principal in the headers: a worker can pass a user on,
but cannot mint one.

The wire form of both is ``base64url(JSON claims) "." base64url(signature)``
(messaging/assertion.py); the replay cache is messaging/replay.py.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

from messaging import headers as h
from messaging.assertion import (
    ASSERTION_VERSION,
    claims_text,
    seal,
    sha256_hex,
    unseal,
)
from messaging.errors import (
    InvalidSignature,
    ReplayedMessage,
    UnprovenPrincipal,
)
from messaging.identity import Principal, PrincipalKind, encode_principal
from messaging.keyring import KeyRing, KeyRingFile, RingKey, SigningKey
from messaging.replay import Copy, ReplayKey, SeenMessages
from messaging.sealing import BatchSealer, RootCache

__all__ = [
    "ASSERTION_VERSION",
    "Destination",
    "Envelope",
    "KeyRing",
    "KeyRingFile",
    "OriginAssertion",
    "RingKey",
    "SeenMessages",
    "Signer",
    "SigningKey",
    "Verifier",
    "carried_origin",
    "carry",
    "carrying",
    "identity_digest",
]

# Clocks of two hosts disagree a little; an assertion issued this far in the
# future is still accepted.
CLOCK_SKEW: Final = 30.0
# No honest signer makes an assertion valid for longer (the defaults are 5 minutes
# for a message and an hour for an origin); a longer one would also pin its
# message id in the replay cache for that long.
MAX_LIFETIME: Final = 86_400.0

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class OriginAssertion:
    """A verified origin assertion: who the work is for, and who vouched for it."""

    subject: str
    kind: PrincipalKind
    roles: frozenset[str]
    tenant: str | None
    issuer: str
    expires_at: float
    token: str

    def vouches_for(self, principal: Principal) -> bool:
        return (
            self.subject == principal.subject
            and self.kind is principal.kind
            and self.roles == principal.roles
            and self.tenant == principal.tenant
        )


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a message was published and what it is: what a signature binds."""

    exchange: str
    routing_key: str
    message_type: str


@dataclass(frozen=True, slots=True)
class Envelope:
    """A delivery as the verifier sees it: what its signature must bind, and how
    it came (the publisher and attempt are established by the trust policy)."""

    publisher: str
    route: Destination
    message_id: str
    correlation_id: str
    reply_to: str
    body: bytes
    attempt: int = 0
    redelivered: bool = False
    # Which copy the broker handed over (consumer tag, delivery tag): only the
    # copy that was admitted settles its key.
    copy: Copy = ("", 0)

    @property
    def replay_key(self) -> ReplayKey:
        return (self.publisher, self.message_id, self.attempt)


_carried: ContextVar[OriginAssertion | None] = ContextVar(
    "baton_carried_origin", default=None
)


@contextlib.contextmanager
def carrying(origin: OriginAssertion | None) -> Iterator[None]:
    """Make `origin` the one every message published inside the block carries on."""
    token = _carried.set(origin)
    try:
        yield
    finally:
        _carried.reset(token)


def carry(origin: OriginAssertion | None) -> None:
    """Like :func:`carrying`, for the rest of the current task (see the consumer)."""
    _carried.set(origin)


def carried_origin() -> OriginAssertion | None:
    return _carried.get()


class Signer:
    """Signs what one service publishes, and vouches for who the work is for."""

    def __init__(
        self,
        key: SigningKey,
        *,
        introduces_users: bool,
        roles: frozenset[str] = frozenset(),
        ttl: float = 300.0,
        origin_ttl: float = 3600.0,
        clock: Clock = time.time,
    ) -> None:
        self.key = key
        self.introduces_users = introduces_users
        # The roles this service declared for acting as itself.
        self.roles = roles
        self._ttl = ttl
        self._origin_ttl = origin_ttl
        self._clock = clock
        # An origin says only who the work is for, nothing of one message: the
        # one minted for a principal serves its next messages too, until half
        # its lifetime is gone, so that consumers verify it once, not per message.
        self._minted: dict[tuple[Any, ...], tuple[str, float]] = {}
        self._batch = BatchSealer(key)

    @property
    def service(self) -> str:
        return self.key.service

    def sign(
        self,
        route: Destination,
        message_id: str,
        body: bytes,
        principal: Principal | None,
        *,
        correlation_id: str = "",
        reply_to: str = "",
    ) -> dict[str, str]:
        """The signature headers for one message (and its origin, given a principal).

        `correlation_id` and `reply_to` are the AMQP properties the message is
        published with ('' when it has none). The message is sealed alone; a
        publisher uses :meth:`sign_soon` to share one signature with the
        messages published beside it.
        """
        now = self._clock()
        claims = self._message_claims(
            route, message_id, body, principal, correlation_id, reply_to, now
        )
        return self._headers(seal(claims, self.key), principal, now)

    async def sign_soon(
        self,
        route: Destination,
        message_id: str,
        body: bytes,
        principal: Principal | None,
        *,
        correlation_id: str = "",
        reply_to: str = "",
    ) -> dict[str, str]:
        """Like :meth:`sign`, sealed with what else is signed in this loop turn."""
        now = self._clock()
        claims = self._message_claims(
            route, message_id, body, principal, correlation_id, reply_to, now
        )
        # The origin first: a principal this signer may not vouch for raises
        # before anything waits for the batch.
        origin = self._origin_header(principal, now)
        token = await self._batch.seal(claims_text(claims, self.key))
        return {h.SIGNATURE: token, **origin}

    def _message_claims(
        self,
        route: Destination,
        message_id: str,
        body: bytes,
        principal: Principal | None,
        correlation_id: str,
        reply_to: str,
        now: float,
    ) -> dict[str, Any]:
        return {
            "v": ASSERTION_VERSION,
            "iss": self.service,
            "mid": message_id,
            "cid": correlation_id,
            "rt": reply_to,
            "body": sha256_hex(body),
            "ex": route.exchange,
            "rk": route.routing_key,
            "type": route.message_type,
            "idh": identity_digest(principal),
            "iat": now,
            "exp": now + self._ttl,
        }

    def _headers(
        self, token: str, principal: Principal | None, now: float
    ) -> dict[str, str]:
        return {h.SIGNATURE: token, **self._origin_header(principal, now)}

    def _origin_header(self, principal: Principal | None, now: float) -> dict[str, str]:
        if principal is None:
            return {}
        return {h.ORIGIN_ASSERTION: self._origin_for(principal, now)}

    def _origin_for(self, principal: Principal, now: float) -> str:
        carried = carried_origin()
        if carried is not None and carried.vouches_for(principal):
            return carried.token
        if (
            principal.kind is PrincipalKind.SERVICE
            and principal.subject == self.service
        ):
            undeclared = principal.roles - self.roles
            if undeclared:
                raise UnprovenPrincipal(
                    f"{self.service} may not act as itself with roles "
                    f"{sorted(undeclared)}: it declares {sorted(self.roles)}"
                )
            return self._mint_origin(principal, now)
        if principal.kind is PrincipalKind.USER and self.introduces_users:
            return self._mint_origin(principal, now)
        raise UnprovenPrincipal(
            f"{self.service} may not introduce {principal.kind.value} "
            f"{principal.subject!r}: it only passes on principals it received"
        )

    def _mint_origin(self, principal: Principal, now: float) -> str:
        vouched = (principal.kind, principal.subject, principal.roles, principal.tenant)
        minted = self._minted.get(vouched)
        if minted is not None and minted[1] - now > self._origin_ttl / 2:
            return minted[0]
        if len(self._minted) >= MINTED_CACHE_SIZE:
            self._minted.clear()
        token = self._seal_origin(principal, now)
        self._minted[vouched] = (token, now + self._origin_ttl)
        return token

    def _seal_origin(self, principal: Principal, now: float) -> str:
        claims: dict[str, Any] = {
            "v": ASSERTION_VERSION,
            "iss": self.service,
            "sub": principal.subject,
            "kind": principal.kind.value,
            "roles": sorted(principal.roles),
            "tenant": principal.tenant,
            "iat": now,
            "exp": now + self._origin_ttl,
        }
        return seal(claims, self.key)


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
        # signature is checked once, its expiry and key on every use.
        self._origins: OrderedDict[str, tuple[dict[str, Any], RingKey]] = OrderedDict()
        self._vouched: dict[str, OriginAssertion] = {}
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
        claims = self._open(token, h.ORIGIN_ASSERTION, None, now)
        # What the origin vouches for depends on its token alone; the key and
        # the expiry were checked again just now.
        origin = self._vouched.get(str(token))
        if origin is None:
            origin = self._vouching(claims, token)
            if len(self._vouched) >= ORIGIN_CACHE_SIZE:
                self._vouched.clear()
            self._vouched[origin.token] = origin
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
        claims, key = self._unseal(token, header)
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
        return claims

    def keys(self) -> KeyRing:
        """The ring in use now: a ring file is followed as it changes."""
        ring = self.ring
        return ring.current() if isinstance(ring, KeyRingFile) else ring

    def _unseal(self, token: object, header: str) -> tuple[dict[str, Any], RingKey]:
        ring = self.keys()
        if header != h.ORIGIN_ASSERTION or type(token) is not str:
            return unseal(token, header, ring, self._roots)
        # A cached origin stands only while its key is the one in the ring now.
        cached = self._origins.get(token)
        if cached is not None and ring.get(cached[1].kid) is cached[1]:
            self._origins.move_to_end(token)
            return cached
        opened = unseal(token, header, ring)
        self._origins[token] = opened
        if len(self._origins) > ORIGIN_CACHE_SIZE:
            self._origins.popitem(last=False)
        return opened


ORIGIN_CACHE_SIZE: Final = 4096
MINTED_CACHE_SIZE: Final = 4096
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


def identity_digest(principal: Principal | None) -> str:
    """A SHA-256 of the identity headers in canonical form ('' without a principal)."""
    if principal is None:
        return ""
    # Principals are immutable and few at a time: each one's digest is kept,
    # as every message of a user, on both sides, needs it.
    digest = _DIGESTS.get(principal)
    if digest is None:
        canonical = json.dumps(
            encode_principal(principal), sort_keys=True, separators=(",", ":")
        )
        digest = sha256_hex(canonical.encode())
        if len(_DIGESTS) >= DIGEST_CACHE_SIZE:
            _DIGESTS.clear()
        _DIGESTS[principal] = digest
    return digest


DIGEST_CACHE_SIZE: Final = 4096
_DIGESTS: dict[Principal, str] = {}


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
