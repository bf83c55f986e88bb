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

Both are seals, ``claims.signature.path`` (messaging/assertion.py,
messaging/sealing.py): one signature may cover a batch. The consumer side, the
verifier, is messaging/verifier.py; its replay cache is messaging/replay.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

from messaging import headers as h
from messaging.assertion import (
    ASSERTION_VERSION,
    claims_text,
    seal,
    sha256_hex,
)
from messaging.errors import (
    UnprovenPrincipal,
)
from messaging.identity import Principal, PrincipalKind, encode_principal
from messaging.keyring import KeyRing, KeyRingFile, RingKey, SigningKey
from messaging.replay import Copy, ReplayKey
from messaging.sealing import BatchSealer, seal_batch

__all__ = [
    "ASSERTION_VERSION",
    "Destination",
    "Envelope",
    "KeyRing",
    "KeyRingFile",
    "OriginAssertion",
    "RingKey",
    "Signer",
    "SigningKey",
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
        claims, origin = self._prepare(
            route, message_id, body, principal, correlation_id, reply_to
        )
        [token] = seal_batch(self.key, [claims])
        return {h.SIGNATURE: token, **origin}

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
        claims, origin = self._prepare(
            route, message_id, body, principal, correlation_id, reply_to
        )
        return {h.SIGNATURE: await self._batch.seal(claims), **origin}

    def _prepare(
        self,
        route: Destination,
        message_id: str,
        body: bytes,
        principal: Principal | None,
        correlation_id: str,
        reply_to: str,
    ) -> tuple[str, dict[str, str]]:
        """A message's claims, ready to seal, and its origin header.

        The origin comes first: a principal this signer may not vouch for
        raises before anything is sealed.
        """
        now = self._clock()
        origin = self._origin_header(principal, now)
        claims: dict[str, Any] = {
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
        return claims_text(claims, self.key), origin

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


MINTED_CACHE_SIZE: Final = 4096


def identity_digest(principal: Principal | None) -> str:
    """A SHA-256 of the identity headers in canonical form ('' without a principal)."""
    return "" if principal is None else _digest(principal)


# Principals are immutable and few at a time, and every message of a user needs
# the digest, on both sides: each one's is kept.
@functools.lru_cache(maxsize=4096)
def _digest(principal: Principal) -> str:
    canonical = json.dumps(
        encode_principal(principal), sort_keys=True, separators=(",", ":")
    )
    return sha256_hex(canonical.encode())
