"""The client headers that travel onward, strictly shaped: nothing else does.

``X-Correlation-Id`` (or ``X-Request-Id``) lets a client find its request in our
logs and in the AMQP message; it becomes the message's correlation id.

``Idempotency-Key`` makes a command safe to send again. A 503 after a late
confirm cannot say whether the broker took the command; a client that retries
with the same key publishes the same message id, so the services' inboxes drop
the copy instead of acting twice. The id is derived from the tenant, subject,
command type, key and payload (:func:`command_id`): two users cannot collide
with one key, and a key reused for another payload is another command, never a
command silently dropped. Requests (answered 200) ignore the key: they are
answered directly, and asking again only asks again.

Both take values matching :data:`CLIENT_ID_PATTERN`; anything else, a repeated
header, or two correlation headers that disagree is refused with 400 rather
than dropped, so the client knows.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from typing import Annotated, Final

from fastapi import Header, HTTPException, Request, status
from pydantic import BaseModel

from contracts import Contract
from messaging.identity import Principal

CORRELATION_HEADERS: Final = ("x-correlation-id", "x-request-id")
IDEMPOTENCY_HEADER: Final = "idempotency-key"
CLIENT_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
# Namespace of the message ids derived from idempotency keys (uuid5).
IDEMPOTENT_IDS: Final = uuid.UUID("9a4f3c1e-6b2d-5e8a-9c7f-2d1b0e4a6f83")


# The dependencies are coroutines although nothing in them waits: FastAPI runs a
# plain function dependency in a worker thread, a hop that cost more than the
# whole publish of the command.
async def correlation_id(
    request: Request,
    _documented: Annotated[
        str | None,
        Header(
            alias="X-Correlation-Id",
            description="Your id for this request, 1-128 of A-Z a-z 0-9 ._:-; "
            "it becomes the AMQP correlation id (X-Request-Id is read as well).",
        ),
    ] = None,
) -> str | None:
    """The client's correlation id, validated; None when it sent none."""
    return _client_id(request, CORRELATION_HEADERS, "the correlation id")


async def idempotency_key(
    request: Request,
    _documented: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="1-128 of A-Z a-z 0-9 ._:-. Send a command again under "
            "the same key and it is the same message: it cannot run twice. "
            "Requests ignore it.",
        ),
    ] = None,
) -> str | None:
    """The client's idempotency key, validated; None when it sent none."""
    return _client_id(request, (IDEMPOTENCY_HEADER,), "the Idempotency-Key")


def command_id(
    principal: Principal, contract: Contract, payload: BaseModel, key: str
) -> str:
    """The message id of `contract` sent by `principal` under `key`, always the same."""
    material = json.dumps(
        [
            principal.tenant,
            principal.subject,
            contract.name,
            key,
            hashlib.sha256(payload.model_dump_json().encode()).hexdigest(),
        ]
    )
    return uuid.uuid5(IDEMPOTENT_IDS, material).hex


def _client_id(request: Request, names: Iterable[str], what: str) -> str | None:
    found: set[str] = set()
    for name in names:
        values = request.headers.getlist(name)
        if len(values) > 1:
            raise _bad(f"header {name!r} is repeated")
        found.update(values)
    if not found:
        return None
    if len(found) > 1:
        raise _bad("X-Correlation-Id and X-Request-Id disagree")
    value = found.pop()
    if CLIENT_ID_PATTERN.fullmatch(value) is None:
        raise _bad(
            f"{what} must be 1-128 characters of letters, digits and ._:-, "
            "starting with a letter or digit"
        )
    return value


def _bad(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail=reason)
