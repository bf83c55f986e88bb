"""The one client header that travels onward: a correlation id, strictly shaped.

``X-Correlation-Id`` (or ``X-Request-Id``) lets a client find its request in our
logs and in the AMQP message; it becomes the message's correlation id. Anything
not matching :data:`CORRELATION_ID_PATTERN`, a repeated header, or two headers
that disagree is refused with 400 rather than dropped, so the client knows.
"""

from __future__ import annotations

import re
from typing import Final

from fastapi import HTTPException, Request, status

CORRELATION_HEADERS: Final = ("x-correlation-id", "x-request-id")
CORRELATION_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")


def correlation_id(request: Request) -> str | None:
    """The client's correlation id, validated; None when it sent none."""
    found: set[str] = set()
    for name in CORRELATION_HEADERS:
        values = request.headers.getlist(name)
        if len(values) > 1:
            raise _bad(f"header {name!r} is repeated")
        found.update(values)
    if not found:
        return None
    if len(found) > 1:
        raise _bad("X-Correlation-Id and X-Request-Id disagree")
    value = found.pop()
    if CORRELATION_ID_PATTERN.fullmatch(value) is None:
        raise _bad(
            "the correlation id must be 1-128 characters of letters, digits "
            "and ._:-, starting with a letter or digit"
        )
    return value


def _bad(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail=reason)
