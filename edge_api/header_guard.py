"""Refuse requests whose headers claim an identity or an internal status.

Identity comes only from the verified bearer token. A header such as
``X-User-Id`` or ``X-Internal-Call`` can only be an attempt to be someone else,
or a proxy that should not be in front of us, so the request is refused with
400 instead of quietly ignored: the client learns at once that it cannot work.
Names are compared after normalising (lowercase, ``_`` read as ``-``), so
``X_User_ID`` is refused like ``x-user-id``. Every value of a repeated header is
seen, because the raw ASGI header list is read, not a folded mapping.

Refused:

- any name in :data:`IDENTITY_HEADERS`;
- any name starting with ``baton-`` or ``x-baton-`` (our AMQP namespace);
- any ``x-`` name with a word that speaks of identity (``x-forwarded-user``,
  ``x-impersonate``, ``x-auth-request-email``, ``x-tenant-id``...).

Nothing a client sends in a header travels further, except the correlation id
read by :mod:`edge_api.correlation`.
"""

from __future__ import annotations

import logging
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from edge_api.refusal import refuse

security_log = logging.getLogger("baton.security")

IDENTITY_HEADERS: Final = frozenset(
    {
        "remote-user",
        "remote-addr-user",
        "forwarded-user",
        "on-behalf-of",
        "impersonate-user",
        "impersonate-group",
    }
)
REFUSED_PREFIXES: Final = ("baton-", "x-baton-")
IDENTITY_WORDS: Final = frozenset(
    {
        "user",
        "userid",
        "username",
        "uid",
        "sub",
        "subject",
        "principal",
        "identity",
        "internal",
        "role",
        "roles",
        "group",
        "groups",
        "tenant",
        "actor",
        "actors",
        "impersonate",
        "impersonation",
        "behalf",
        "email",
        "account",
        "consumer",
        "credential",
        "claims",
        "userinfo",
        "service",
        "admin",
        "sudo",
    }
)


def normalised(name: bytes) -> str:
    """A header name as the guard compares it: lowercase, ``_`` read as ``-``."""
    return name.decode("latin-1").strip().lower().replace("_", "-")


def claims_identity(name: str) -> bool:
    """True when a (normalised) header name claims identity or internal status."""
    if name in IDENTITY_HEADERS or name.startswith(REFUSED_PREFIXES):
        return True
    return name.startswith("x-") and not IDENTITY_WORDS.isdisjoint(name.split("-"))


class IdentityHeaderGuard:
    """ASGI middleware: 400 for any request carrying an identity-claiming header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for raw_name, _value in scope["headers"]:
                name = normalised(raw_name)
                if claims_identity(name):
                    await _refuse(scope, send, name)
                    return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, name: str) -> None:
    security_log.warning(
        "refused %s %s: header %r claims identity", scope["method"], scope["path"], name
    )
    detail = f"header {name!r} is not accepted: identity comes only from the token"
    await refuse(send, 400, detail)
