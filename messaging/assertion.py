"""The wire form of a signed assertion, and the exact shape its claims must have.

An assertion is ``base64url(JSON claims) "." base64url(Ed25519 signature)``, the
signature taken over the ASCII bytes of the first part, base64url unpadded. The
claims JSON carries the key id (``kid``) beside the claims. Unsealing checks the
size and the encoding, that the claims are exactly the expected set with the
expected JSON types (no ``NaN``, no extra claim), the version, and the signature
against the key ring. What the claims must *say* is the verifier's business
(messaging/signing.py).
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature

from messaging import headers as h
from messaging.errors import InvalidSignature
from messaging.keyring import KeyRing, RingKey, SigningKey, b64, unb64

# 2: the message assertion binds the correlation id and reply_to too.
ASSERTION_VERSION: Final = 2
MAX_TOKEN_CHARS: Final = 4096


def seal(claims: Mapping[str, Any], key: SigningKey) -> str:
    """The assertion `key` makes over `claims`."""
    payload = b64(
        json.dumps({**claims, "kid": key.kid}, separators=(",", ":")).encode()
    )
    signature = key.private.sign(payload.encode("ascii"))
    return f"{payload}.{b64(signature)}"


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


def unseal(token: object, header: str, ring: KeyRing) -> tuple[dict[str, Any], RingKey]:
    """The claims of `token` and the ring key that signed it, or InvalidSignature."""
    if token is None:
        raise InvalidSignature(f"{header}: missing")
    if type(token) is not str:
        raise InvalidSignature(
            f"{header}: must be a string, got {type(token).__name__}"
        )
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidSignature(f"{header}: longer than {MAX_TOKEN_CHARS} characters")
    payload, dot, signature = token.partition(".")
    if not dot:
        raise InvalidSignature(f"{header}: not of the form claims.signature")
    try:
        claims = json.loads(unb64(payload), parse_constant=_no_constants)
        raw_signature = unb64(signature)
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise InvalidSignature(f"{header}: cannot be decoded: {exc}") from None
    if not isinstance(claims, dict):
        raise InvalidSignature(f"{header}: claims must be a JSON object")
    _check_shape(claims, header)

    key = ring.get(claims["kid"])
    if key is None:
        raise InvalidSignature(f"{header}: unknown key id {claims['kid']!r}")
    try:
        key.key.verify(raw_signature, payload.encode("ascii"))
    except _CryptoInvalidSignature:
        raise InvalidSignature(f"{header}: signature does not verify") from None
    return claims, key


def _check_shape(claims: dict[str, Any], header: str) -> None:
    shape = _ORIGIN_CLAIMS if header == h.ORIGIN_ASSERTION else _MESSAGE_CLAIMS
    if set(claims) != set(shape):
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
