"""Cap the size of request bodies before anything parses them.

The cap is checked twice: against ``Content-Length`` when the client sends one,
and against the bytes actually received, so a chunked body (no length) or a
lying length cannot slip past. The body is read into memory up to the cap and
replayed to the application; anything larger is answered with 413 at once.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_api.refusal import refuse

logger = logging.getLogger(__name__)


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(send)
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break

        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, send: Send) -> None:
        logger.info("refused a request body over %d bytes", self.max_bytes)
        detail = f"the request body is over {self.max_bytes} bytes"
        await refuse(send, 413, detail, close=True)


def _content_length(scope: Scope) -> int | None:
    values = [v for k, v in scope["headers"] if k.lower() == b"content-length"]
    if not values:
        return None
    try:
        return max(int(value) for value in values)
    except ValueError:
        return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
