"""The broker's management HTTP API, as the tests use it to look and to interfere.

It works the same for the broker at ``AMQP_URL`` and for a testcontainers
broker, unlike ``rabbitmqctl``, which talks to whatever node runs on this
machine. Queue lists and connection closes are immediate; message counts are
statistics the broker refreshes only every few seconds, so no test waits on them.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx


class ManagementApi:
    """An administrator's view of one vhost through the management API."""

    def __init__(self, url: str, vhost: str) -> None:
        parts = urlsplit(url)
        self.vhost = vhost
        self._client = httpx.AsyncClient(
            base_url=f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}",
            auth=(unquote(parts.username or ""), unquote(parts.password or "")),
            timeout=10.0,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def get(self, path: str) -> Any:
        response = await self._client.get(path)
        response.raise_for_status()
        return response.json()

    async def queue(self, name: str) -> dict[str, Any]:
        """The broker's record of queue `name`: type, arguments, and so on."""
        found: dict[str, Any] = await self.get(
            f"/api/queues/{_q(self.vhost)}/{_q(name)}"
        )
        return found

    async def names(self, kind: str) -> list[str]:
        """The names of every queue or exchange (`kind`) in the vhost."""
        listed = await self.get(f"/api/{kind}/{_q(self.vhost)}?columns=name")
        return [item["name"] for item in listed]

    async def close_connection(self, client_name: str, timeout: float = 20.0) -> None:
        """Close, from the broker side, the one connection the client named so."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # A new connection shows up in the API only after a statistics round.
        while (found := await self._connections(client_name)) == []:
            if loop.time() > deadline:
                raise AssertionError(f"no connection named {client_name}")
            await asyncio.sleep(0.1)
        assert len(found) == 1, f"expected one connection {client_name}: {found}"
        response = await self._client.delete(
            f"/api/connections/{_q(found[0])}",
            headers={"X-Reason": "closed by a Baton test"},
        )
        response.raise_for_status()

    async def _connections(self, client_name: str) -> list[str]:
        listed = await self.get("/api/connections?columns=name,client_properties")
        return [
            item["name"]
            for item in listed
            if item.get("client_properties", {}).get("connection_name") == client_name
        ]


def _q(part: str) -> str:
    return quote(part, safe="")
