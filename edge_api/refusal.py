"""A JSON error answer sent straight from ASGI middleware, before any route runs."""

from __future__ import annotations

import json

from starlette.types import Send


async def refuse(send: Send, status: int, detail: str, *, close: bool = False) -> None:
    """Answer with `status` and ``{"detail": ...}``, as FastAPI's own errors do."""
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
