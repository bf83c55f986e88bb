"""Who is calling: the bearer token, verified, as a FastAPI dependency.

A missing, repeated or non-bearer ``Authorization`` header, and any token the
verifier refuses, is answered with 401 and a ``WWW-Authenticate`` challenge
(RFC 6750): ``error="invalid_token"`` with a short reason when a token was
given, a bare ``Bearer`` challenge when none was. When the keys cannot be
fetched at all the fault is ours, so the answer is 503 with ``Retry-After``.
The token itself is never logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Final

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from contracts import Contract
from edge_api.errors import InvalidToken, KeysUnavailable
from edge_api.state import edge_of
from messaging.identity import Principal

logger = logging.getLogger(__name__)

REALM: Final = "baton"
_UNSAFE_DESCRIPTION: Final = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    bearerFormat="JWT",
    description="A JWT from the configured issuer, for the configured audience.",
)


async def authenticate(
    request: Request,
    _documented: Annotated[
        HTTPAuthorizationCredentials | None, Security(bearer_scheme)
    ],
) -> Principal:
    """The principal of the request's verified bearer token."""
    values = request.headers.getlist("authorization")
    if not values:
        raise _challenge(None)
    if len(values) > 1:
        raise _challenge("more than one Authorization header")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _challenge("the Authorization header is not a bearer token")

    edge = edge_of(request)
    try:
        return await edge.verifier.principal(token.strip())
    except InvalidToken as exc:
        logger.info("refused a bearer token: %s", exc.reason)
        raise _challenge(exc.reason) from None
    except KeysUnavailable as exc:
        logger.warning("cannot verify tokens, no signing keys: %s", exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="tokens cannot be verified right now: signing keys unavailable",
            headers={"Retry-After": str(edge.settings.retry_after)},
        ) from None


def authorized(contract: Contract) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller's principal, when it holds `contract`'s roles."""

    async def check(
        principal: Annotated[Principal, Depends(authenticate)],
    ) -> Principal:
        missing = ", ".join(sorted(contract.roles - principal.roles))
        if missing:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"{contract.name} requires the roles: {missing}",
            )
        return principal

    return check


def _challenge(reason: str | None) -> HTTPException:
    if reason is None:
        challenge = f'Bearer realm="{REALM}"'
        detail = "a bearer token is required"
    else:
        description = _UNSAFE_DESCRIPTION.sub("?", reason)[:200]
        challenge = (
            f'Bearer realm="{REALM}", error="invalid_token", '
            f'error_description="{description}"'
        )
        detail = reason
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": challenge},
    )
