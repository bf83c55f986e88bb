"""Request bodies are read as untrusted JSON: no repeated keys, no crushing depth.

FastAPI reads a JSON body with :func:`json.loads`, which keeps the last of two
equal keys (``{"horizon_days": 3, "horizon_days": 400}`` would pass a model that
never saw the 3) and lets a deeply nested body end as a generic 400. Routes of
:class:`UntrustedJsonRoute` read it with :func:`edge_api.untrusted_json.parse`
instead; its error is a :class:`json.JSONDecodeError`, which FastAPI answers
with 422 ``json_invalid`` and the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from edge_api.untrusted_json import parse


class UntrustedJsonRequest(Request):
    """A request whose JSON body is parsed strictly."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse(await self.body())
        return self._json


class UntrustedJsonRoute(APIRoute):
    """An API route that hands its endpoint an :class:`UntrustedJsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_json(request: Request) -> Response:
            return await handler(UntrustedJsonRequest(request.scope, request.receive))

        return strict_json
