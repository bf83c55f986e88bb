"""Refuse requests whose headers claim an identity or an internal status.

Identity comes only from the verified bearer token. A header such as
``X-User-Id`` or ``X-Internal-Call`` can only be an attempt to be someone else,
or a proxy that should not be in front of us, so the request is refused with
400 instead of quietly ignored: the client learns at once that it cannot work.

The rule, exactly. A header name is split into words at ``-``, ``_`` and
``.``, lowercased, a first word ``x`` is dropped, and the words are joined
without separators: ``X_User.ID``, ``x-userid`` and ``XUserId`` all become
``userid``. The request is refused when that compact name is in
:data:`IDENTITY_HEADERS`, or when its first word is ``baton`` (our AMQP
namespace, ``Baton-Subject``, ``X-Baton-Roles``). Nothing else is refused:
``X-User-Agent`` (``useragent``) or ``X-Forwarded-For`` pass, and are ignored
like every other header. Every value of a repeated header is seen, because the
raw ASGI header list is read, not a folded mapping.

Nothing a client sends in a header travels further, except the correlation id
and the idempotency key, read and validated by :mod:`edge_api.client_headers`.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from edge_api.refusal import refuse

security_log = logging.getLogger("baton.security")

SEPARATORS: Final = re.compile(r"[-_.]+")
NAMESPACE_WORD: Final = "baton"
# Compact names (see the module docstring): what identity-aware proxies and
# gateways use to pass a user on (oauth2-proxy, Kong, Azure and Google
# front ends, AWS load balancers), and the names an attacker would try.
IDENTITY_HEADERS: Final = frozenset(
    {
        # a user, by id, name, mail or group
        "user",
        "userid",
        "username",
        "useremail",
        "userroles",
        "usergroups",
        "uid",
        "sub",
        "subject",
        "principal",
        "principalid",
        "principalname",
        "identity",
        "email",
        "role",
        "roles",
        "group",
        "groups",
        "tenant",
        "tenantid",
        "claims",
        "userinfo",
        "remoteuser",
        "remoteaddruser",
        "authuser",
        "authuserid",
        "authenticateduser",
        "authenticateduserid",
        "authrequestuser",
        "authrequestemail",
        "authrequestgroups",
        "authrequestpreferredusername",
        "forwardeduser",
        "forwardedemail",
        "forwardedgroups",
        "forwardedpreferredusername",
        "consumerid",
        "consumerusername",
        "consumercustomid",
        "credentialidentifier",
        "credentialusername",
        "msclientprincipal",
        "msclientprincipalid",
        "msclientprincipalname",
        "msclientprincipalidp",
        "googauthenticateduserid",
        "googauthenticateduseremail",
        "amznoidcidentity",
        "amznoidcdata",
        # acting for someone else
        "actor",
        "actors",
        "impersonate",
        "impersonateuser",
        "impersonategroup",
        "onbehalfof",
        "runas",
        "sudo",
        # internal status or privilege
        "internal",
        "internalcall",
        "internalrequest",
        "isinternal",
        "admin",
        "isadmin",
    }
)


def compact(name: bytes | str) -> tuple[str, str]:
    """A header name as the guard compares it: (first word, compact name)."""
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    words = [word for word in SEPARATORS.split(text.strip().lower()) if word]
    if words and words[0] == "x":
        words = words[1:]
    joined = "".join(words)
    if len(words) == 1 and joined.startswith("x") and joined[1:] in IDENTITY_HEADERS:
        # "XUserId": the x prefix without a separator.
        joined = joined[1:]
    return (words[0] if words else ""), joined


def claims_identity(name: bytes | str) -> bool:
    """True when a header name claims identity or internal status."""
    first, joined = compact(name)
    return first == NAMESPACE_WORD or joined in IDENTITY_HEADERS


class IdentityHeaderGuard:
    """ASGI middleware: 400 for any request carrying an identity-claiming header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for raw_name, _value in scope["headers"]:
                if claims_identity(raw_name):
                    await _refuse(scope, send, raw_name.decode("latin-1"))
                    return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, name: str) -> None:
    security_log.warning(
        "refused %s %s: header %r claims identity", scope["method"], scope["path"], name
    )
    detail = f"header {name!r} is not accepted: identity comes only from the token"
    await refuse(send, 400, detail)
