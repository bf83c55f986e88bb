"""The wire form of a signed assertion, and the exact shape its claims must have.

An assertion is a seal (messaging/sealing.py): ``base64url(JSON claims) "."
base64url(Ed25519 signature) "." base64url(Merkle path)``, base64url unpadded.
The signature covers the root of a batch of claims that the same key sealed
together; the path leads from these claims to that root, and is empty for a
batch of one. The claims JSON carries the key id (``kid``) beside the claims.
Unsealing checks the size and the encoding, that the claims are exactly the
expected set with the expected JSON types (no ``NaN``, no extra claim), the
version, and the signature against the key ring. What the claims must *say* is
the verifier's business (messaging/signing.py).
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from messaging import headers as h
from messaging.errors import InvalidSignature
from messaging.keyring import KeyRing, RingKey, SigningKey, b64, unb64
from messaging.sealing import (
    RootCache,
    SealError,
    leaf_hash,
    root_of,
    seal_batch,
    split,
)

# 2: the message assertion binds the correlation id and reply_to too.
# 3: a seal with a Merkle path, so that one signature can cover a batch.
ASSERTION_VERSION: Final = 3
MAX_TOKEN_CHARS: Final = 4096


def claims_text(claims: Mapping[str, Any], key: SigningKey) -> str:
    """The first part of an assertion: `claims` and the key id, as base64url JSON."""
    return b64(json.dumps({**claims, "kid": key.kid}, separators=(",", ":")).encode())


def seal(claims: Mapping[str, Any], key: SigningKey) -> str:
    """The assertion `key` makes over `claims` alone (a batch of one)."""
    [token] = seal_batch(key, [claims_text(claims, key)])
    return token


# The claims an assertion must carry, and the JSON type of each.
_NUMBER = (int, float)
_COMMON_CLAIMS: Final[dict[str, tuple[type, ...]]] = {
    "v": (int,),
    "kid": (str,),
    "iss": (str,),
    "iat": _NUMBER,
    "exp": _NUMBER,
}
_MESSAGE_CLAIMS: Final = {
    **_COMMON_CLAIMS,
    **{
        name: (str,) for name in ("mid", "cid", "rt", "body", "ex", "rk", "type", "idh")
    },
}
_ORIGIN_CLAIMS: Final[dict[str, tuple[type, ...]]] = {
    **_COMMON_CLAIMS,
    "sub": (str,),
    "kind": (str,),
    "roles": (list,),
    "tenant": (str, type(None)),
}


def unseal(
    token: object, header: str, ring: KeyRing, roots: RootCache | None = None
) -> tuple[dict[str, Any], RingKey]:
    """The claims of `token` and the ring key that signed it, or InvalidSignature.

    `roots` remembers the batch roots already checked, so that the other
    messages of a batch cost no second signature check.
    """
    if token is None:
        raise InvalidSignature(f"{header}: missing")
    if type(token) is not str:
        raise InvalidSignature(
            f"{header}: must be a string, got {type(token).__name__}"
        )
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidSignature(f"{header}: longer than {MAX_TOKEN_CHARS} characters")
    try:
        payload, raw_signature, path = split(token)
        claims = json.loads(unb64(payload), parse_constant=_no_constants)
    except SealError as exc:
        raise InvalidSignature(f"{header}: {exc}") from None
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise InvalidSignature(f"{header}: cannot be decoded: {exc}") from None
    if not isinstance(claims, dict):
        raise InvalidSignature(f"{header}: claims must be a JSON object")
    _check_shape(claims, header)

    key = ring.get(claims["kid"])
    if key is None:
        raise InvalidSignature(f"{header}: unknown key id {claims['kid']!r}")
    try:
        root = root_of(leaf_hash(payload), path)
        (roots or RootCache()).check(key.kid, key.key, root, raw_signature)
    except SealError as exc:
        raise InvalidSignature(f"{header}: {exc}") from None
    return claims, key


def _check_shape(claims: dict[str, Any], header: str) -> None:
    shape = _ORIGIN_CLAIMS if header == h.ORIGIN_ASSERTION else _MESSAGE_CLAIMS
    if claims.keys() != shape.keys():
        raise InvalidSignature(f"{header}: claims must be exactly {sorted(shape)}")
    for name, types in shape.items():
        value = claims[name]
        if not isinstance(value, types) or isinstance(value, bool):
            raise InvalidSignature(f"{header}: claim {name!r} has the wrong type")
    if claims["v"] != ASSERTION_VERSION:
        raise InvalidSignature(f"{header}: version {claims['v']} is not supported")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number an assertion may carry")


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256, as the body and identity digests are written."""
    return hashlib.sha256(data).hexdigest()
