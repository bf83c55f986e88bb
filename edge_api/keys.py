"""Where the keys that verify tokens come from: a JWKS URL, PEM files, a secret.

A :class:`KeySource` answers one question: the key for this ``kid``. The JWKS
source keeps the last good key set. It refreshes it when it grows old, and when
a token names a ``kid`` it does not know, but at most once per cooldown: a flood
of tokens with random ``kid`` values costs the key server one fetch, not one per
token. When the key server is down, cached keys keep working; with nothing
cached there is nothing to verify with, which is our outage, not the caller's
fault (:class:`~edge_api.errors.KeysUnavailable`, answered with 503).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from edge_api.errors import InvalidToken, KeysUnavailable
from edge_api.untrusted_json import UntrustedJsonError, parse

logger = logging.getLogger(__name__)

KID_PATTERN: Final = re.compile(r"[A-Za-z0-9_\-.]{1,128}")
MAX_JWKS_BYTES: Final = 256 * 1024
MAX_JWKS_KEYS: Final = 64


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key (or secret) and the one algorithm it may verify."""

    kid: str | None
    algorithm: str
    key: Any


class KeySource(Protocol):
    """Finds the key a token names; raises InvalidToken or KeysUnavailable."""

    async def key_for(self, kid: str | None) -> VerificationKey: ...

    async def aclose(self) -> None: ...


def check_kid(kid: object) -> str | None:
    """A ``kid`` header value, refused unless it is a short plain name."""
    if kid is None:
        return None
    if type(kid) is not str or KID_PATTERN.fullmatch(kid) is None:
        raise InvalidToken("the kid header is not a plain key name")
    return kid


class StaticKeys:
    """Keys given up front (PEM files or a shared secret); never fetched."""

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self._keys = {key.kid: key for key in keys}

    @classmethod
    def from_pem_files(
        cls, paths: Iterable[Path], algorithms: Iterable[str]
    ) -> StaticKeys:
        """One key per file, named (``kid``) by the file name up to the first dot."""
        allowed = set(algorithms)
        keys = []
        for path in paths:
            public_key = load_pem_public_key(path.read_bytes())
            algorithm = _algorithm_of(public_key, allowed)
            keys.append(VerificationKey(path.name.split(".")[0], algorithm, public_key))
        return cls(keys)

    async def key_for(self, kid: str | None) -> VerificationKey:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("the token's kid names no key we trust")
        return key

    async def aclose(self) -> None:
        return None


class JwksKeys:
    """Keys from a JWKS URL, cached, refreshed with a cooldown."""

    def __init__(
        self,
        url: str,
        *,
        algorithms: Iterable[str],
        timeout: float,
        cache_ttl: float,
        refresh_cooldown: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self._allowed = frozenset(algorithms)
        self._cache_ttl = cache_ttl
        self._cooldown = refresh_cooldown
        self._client = httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, transport=transport
        )
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key_for(self, kid: str | None) -> VerificationKey:
        if kid is None:
            raise InvalidToken("the token has no kid header")
        if self._fetched_at is None or self._stale():
            await self._refresh(reason="cache empty or expired")
        key = self._keys.get(kid)
        if key is None:
            await self._refresh(reason=f"unknown kid {kid!r}")
            key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("the token's kid names no key we trust")
        return key

    async def prefetch(self) -> None:
        """Warm the cache at startup; a failure is logged, not raised."""
        try:
            await self._refresh(reason="startup")
        except KeysUnavailable as exc:
            logger.warning("could not load signing keys at startup: %s", exc)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _stale(self) -> bool:
        return self._fetched_at is not None and (
            time.monotonic() - self._fetched_at > self._cache_ttl
        )

    def _cooling_down(self) -> bool:
        return self._attempted_at is not None and (
            time.monotonic() - self._attempted_at < self._cooldown
        )

    async def _refresh(self, *, reason: str) -> None:
        async with self._lock:
            # Whoever waited for the lock finds the fetch already done.
            if self._cooling_down():
                if self._fetched_at is None:
                    raise KeysUnavailable("the signing keys could not be fetched")
                return
            self._attempted_at = time.monotonic()
            self.fetches += 1
            logger.info("fetching signing keys from %s (%s)", self.url, reason)
            try:
                keys = await self._fetch()
            except KeysUnavailable as exc:
                if self._fetched_at is None:
                    raise
                logger.warning(
                    "keeping %d cached signing keys: %s", len(self._keys), exc
                )
                return
            self._keys, self._fetched_at = keys, time.monotonic()

    async def _fetch(self) -> dict[str, VerificationKey]:
        try:
            response = await self._client.get(self.url)
        except httpx.HTTPError as exc:
            raise KeysUnavailable(f"the key server did not answer: {exc!r}") from None
        if response.status_code != httpx.codes.OK:
            raise KeysUnavailable(f"the key server answered {response.status_code}")
        if len(response.content) > MAX_JWKS_BYTES:
            raise KeysUnavailable(f"the key set is over {MAX_JWKS_BYTES} bytes")
        try:
            document = parse(response.content)
        except UntrustedJsonError as exc:
            raise KeysUnavailable(
                f"the key set is not usable JSON: {exc.reason}"
            ) from None
        return self._parse(document)

    def _parse(self, document: object) -> dict[str, VerificationKey]:
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise KeysUnavailable("the key set has no 'keys' list")
        keys: dict[str, VerificationKey] = {}
        for entry in entries[:MAX_JWKS_KEYS]:
            key = self._usable(entry)
            if key is not None and key.kid is not None:
                keys[key.kid] = key
        if not keys:
            raise KeysUnavailable("the key set holds no usable signing key")
        return keys

    def _usable(self, entry: object) -> VerificationKey | None:
        if not isinstance(entry, Mapping) or entry.get("use", "sig") != "sig":
            return None
        try:
            kid = check_kid(entry.get("kid"))
            parsed = jwt.PyJWK(dict(entry))
        # PyJWK raises TypeError, not a PyJWTError, for an "alg" that is a list.
        except (InvalidToken, jwt.PyJWTError, TypeError, ValueError) as exc:
            logger.warning("skipping a key of the key set: %s", exc)
            return None
        if kid is None or parsed.algorithm_name not in self._allowed:
            return None
        if parsed.algorithm_name.startswith("HS"):
            return None
        return VerificationKey(kid, parsed.algorithm_name, parsed.key)


def _algorithm_of(public_key: object, allowed: set[str]) -> str:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        candidates = ["EdDSA"]
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        candidates = [{256: "ES256", 384: "ES384"}.get(public_key.curve.key_size, "")]
    elif isinstance(public_key, rsa.RSAPublicKey):
        candidates = ["RS256", "PS256", "RS384", "PS384", "RS512", "PS512"]
    else:
        candidates = []
    for algorithm in candidates:
        if algorithm in allowed:
            return algorithm
    raise ValueError(
        f"a {type(public_key).__name__} fits none of the algorithms {sorted(allowed)}"
    )
