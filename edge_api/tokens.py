"""Bearer token verification: from a JWT to a Principal, or a reason it is refused.

Only claims that survived every check become identity. The header is read
before any key is looked up: at most 1024 characters, parsed with no repeated
keys and no nesting deep enough to crash the parser. It is refused when it asks
us to fetch or trust key material it names itself (``jku``, ``x5u``, ``jwk``,
``x5c``) or demands extensions we do not implement (``crit``). The algorithm
must be one the verifier allows and the one the key was issued for, so a public
key can never be used as an HMAC secret. Issuer and audience are compared
exactly; ``exp``, ``iat`` and ``sub`` are required, and claim types are checked
strictly (a boolean is not a timestamp, a number is not a subject). Reasons are
short and never contain the token.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Mapping
from typing import Any, Final

import jwt

from edge_api.errors import InvalidToken
from edge_api.keys import KeySource, check_kid
from edge_api.settings import EdgeSettings
from edge_api.untrusted_json import UntrustedJsonError, parse
from messaging.errors import IdentityError
from messaging.identity import MAX_ROLES, ROLE_PATTERN, Principal

logger = logging.getLogger(__name__)

EDGE_SERVICE: Final = "edge"
MAX_TOKEN_BYTES: Final = 8 * 1024
# A real JOSE header (alg, kid, typ) is under 200 characters; the cap keeps
# what we parse before any signature check small.
MAX_HEADER_CHARS: Final = 1024
FORBIDDEN_HEADERS: Final = ("jku", "x5u", "jwk", "x5c", "crit")
REQUIRED_CLAIMS: Final = ("exp", "iat", "sub", "iss", "aud")
TIME_CLAIMS: Final = ("exp", "iat", "nbf")
TOKEN_SHAPE: Final = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+")


class TokenVerifier:
    """Checks bearer tokens against one issuer, one audience and one key source."""

    def __init__(self, settings: EdgeSettings, keys: KeySource) -> None:
        self._settings = settings
        self._keys = keys
        self._algorithms = frozenset(settings.algorithms)

    async def principal(self, token: str) -> Principal:
        """The principal the token's verified claims describe."""
        claims = await self.claims(token)
        return self._principal(claims)

    async def claims(self, token: str) -> dict[str, Any]:
        """The token's claims, after signature, header and claim checks."""
        algorithm, kid = self._checked_header(token)
        key = await self._keys.key_for(kid)
        if key.algorithm != algorithm:
            raise InvalidToken("the token's algorithm does not match its key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": False},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(_reason(exc)) from None
        _check_types(claims)
        return claims

    def _checked_header(self, token: str) -> tuple[str, str | None]:
        """The token's algorithm and key id, once its header is found acceptable."""
        if len(token) > MAX_TOKEN_BYTES or TOKEN_SHAPE.fullmatch(token) is None:
            raise InvalidToken("the token is not a compact JWS")
        header = _header(token)
        algorithm = header.get("alg")
        if type(algorithm) is not str or algorithm not in self._algorithms:
            raise InvalidToken("the token's algorithm is not accepted")
        for name in FORBIDDEN_HEADERS:
            if name in header:
                raise InvalidToken(f"the token's header carries {name!r}")
        return algorithm, check_kid(header.get("kid"))

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        roles = _roles(claims.get(self._settings.roles_claim, []))
        tenant = None
        if self._settings.tenant_claim is not None:
            tenant = claims.get(self._settings.tenant_claim)
            if tenant is not None and type(tenant) is not str:
                raise InvalidToken("the tenant claim must be a string")
        try:
            return Principal.user(
                claims["sub"], roles, entered_by=EDGE_SERVICE, tenant=tenant
            )
        except IdentityError as exc:
            raise InvalidToken(f"the claims make no valid principal: {exc}") from None


def _header(token: str) -> dict[str, Any]:
    # Parsed here rather than by PyJWT so that every refusal has our reason,
    # and a header that names a key twice ("alg" twice) is not guessed at.
    segment = token.split(".", 1)[0]
    if len(segment) > MAX_HEADER_CHARS:
        raise InvalidToken(f"the token's header is over {MAX_HEADER_CHARS} characters")
    try:
        header = parse(base64.urlsafe_b64decode(_padded(segment)))
    except (UntrustedJsonError, binascii.Error):
        raise InvalidToken("the token's header is not valid JSON") from None
    if not isinstance(header, dict):
        raise InvalidToken("the token's header is not a JSON object")
    return header


def _padded(segment: str) -> bytes:
    return (segment + "=" * (-len(segment) % 4)).encode("ascii")


def _check_types(claims: Mapping[str, Any]) -> None:
    for name in TIME_CLAIMS:
        value = claims.get(name)
        if name in claims and (type(value) not in (int, float) or value != value):
            raise InvalidToken(f"the {name} claim must be a number")
    if type(claims.get("sub")) is not str:
        raise InvalidToken("the sub claim must be a string")


def _roles(value: object) -> list[str]:
    if type(value) is not list:
        raise InvalidToken("the roles claim must be a list of strings")
    if len(value) > MAX_ROLES:
        raise InvalidToken(f"the roles claim lists more than {MAX_ROLES} roles")
    for role in value:
        if type(role) is not str or ROLE_PATTERN.fullmatch(role) is None:
            raise InvalidToken("the roles claim holds a value that is not a role name")
    return value


_REASONS: Final[dict[type[jwt.PyJWTError], str]] = {
    jwt.ExpiredSignatureError: "the token has expired",
    jwt.ImmatureSignatureError: "the token is not valid yet",
    jwt.InvalidIssuerError: "the token's issuer is not trusted",
    jwt.InvalidAudienceError: "the token is not meant for this audience",
    jwt.InvalidSignatureError: "the token's signature does not verify",
    jwt.InvalidAlgorithmError: "the token's algorithm is not accepted",
    jwt.InvalidIssuedAtError: "the iat claim must be a number",
}


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the token lacks the {exc.claim} claim"
    for kind, reason in _REASONS.items():
        if isinstance(exc, kind):
            return reason
    return "the token is malformed"
