"""The edge: a command POST with JWT verification and a confirmed publish.

The real edge app is served by uvicorn in a subprocess (:mod:`bench.edge_server`)
and loaded from this process over a fixed number of keep-alive connections, one
request in flight on each (:mod:`bench.http_load`, which costs the client far
less than the server, so the server is what is measured). The same app also
answers right after JWT verification on ``/bench/verified``; both routes are
loaded in interleaved repetitions, so the ratio of their rates is what
publishing a command costs a request.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.http_load import post_load, request_bytes
from bench.workload import (
    BODY,
    SERVICE,
    bench_prefix,
    declare_service,
    delete_names,
)
from messaging.settings import BrokerSettings

ROOT = Path(__file__).resolve().parent.parent
READY_WITHIN = 30.0
STOP_WITHIN = 15.0


@dataclass(frozen=True)
class EdgeLoad:
    """How hard and how long each route is loaded."""

    requests: int
    concurrency: int
    repeat: int


def edge_unavailable() -> str | None:
    """Why the edge cannot be measured here, or None when it can."""
    try:
        module = importlib.import_module("edge_api.app")
    except ImportError as exc:
        return f"edge_api.app cannot be imported: {exc}"
    if not callable(getattr(module, "create_app", None)):
        return "edge_api.app has no create_app"
    return None


async def edge_figures(amqp_url: str, base: str, load: EdgeLoad) -> dict[str, Any]:
    """Requests per second and latency of both routes, and their paired ratio."""
    from bench.edge_server import ISSUER, PUBLISH_PATH, VERIFY_ONLY_PATH

    settings = BrokerSettings(amqp_url=amqp_url, prefix=bench_prefix(base))
    topology = settings.topology()
    routes = {"publish": PUBLISH_PATH, "verify_only": VERIFY_ONLY_PATH}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in routes}
    try:
        # Publishes are mandatory: a bound queue must take them (nobody drains it).
        await declare_service(amqp_url, settings)
        with tempfile.TemporaryDirectory(prefix="baton-bench-") as keys:
            token = _token_and_public_key(Path(keys), ISSUER)
            served = ServedEdge(amqp_url, settings.prefix, Path(keys))
            async with served:
                headers = {
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json",
                }
                requests = {
                    name: request_bytes("127.0.0.1", path, headers, BODY)
                    for name, path in routes.items()
                }
                for request in requests.values():
                    await _load(served.port, request, 50, load.concurrency)
                names = list(routes)
                for repetition in range(load.repeat):
                    shift = repetition % len(names)
                    for name in names[shift:] + names[:shift]:
                        runs[name].append(
                            await _load(
                                served.port,
                                requests[name],
                                load.requests,
                                load.concurrency,
                            )
                        )
    finally:
        await delete_names(
            amqp_url,
            topology.service_queues(SERVICE),
            [*topology.exchanges(), *topology.service_exchanges(SERVICE)],
        )

    publish, verify_only = runs["publish"], runs["verify_only"]
    ratios = [
        p["requests_per_s"] / v["requests_per_s"]
        for p, v in zip(publish, verify_only, strict=True)
    ]
    return {
        "requests": load.requests,
        "concurrency": load.concurrency,
        "publish": _summary(publish),
        "verify_only": _summary(verify_only),
        "ratio": round(statistics.median(ratios), 3),
    }


def _token_and_public_key(directory: Path, issuer: str) -> str:
    """A signing key whose public half the edge trusts, and a token it signed."""
    from bench.edge_server import AUDIENCE

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (directory / "bench.pem").write_bytes(public)
    now = int(time.time())
    claims = {
        "sub": "user-4711",
        "iss": issuer,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 3600,
        "roles": ["planner", "reader"],
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})


class ServedEdge:
    """The edge server subprocess and a client for it, both closed on exit."""

    def __init__(self, amqp_url: str, prefix: str, keys: Path) -> None:
        self._argv = [
            sys.executable,
            "-m",
            "bench.edge_server",
            "--amqp-url",
            amqp_url,
            "--prefix",
            prefix,
            "--public-key",
            str(keys / "bench.pem"),
            "--port",
        ]
        self._server: asyncio.subprocess.Process | None = None
        self._client: httpx.AsyncClient | None = None
        self.port = 0

    async def __aenter__(self) -> httpx.AsyncClient:
        self.port = port = _free_port()
        self._server = await asyncio.create_subprocess_exec(
            *self._argv,
            str(port),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30.0,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
        )
        await self._wait_ready(self._client, self._server)
        return self._client

    async def __aexit__(self, *_exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._server is not None and self._server.returncode is None:
            await _stop(self._server)

    @staticmethod
    async def _wait_ready(
        client: httpx.AsyncClient, server: asyncio.subprocess.Process
    ) -> None:
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            if server.returncode is not None:
                break
            try:
                if (await client.get("/health/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        _, stderr = (
            await server.communicate() if server.returncode is not None else (b"", b"")
        )
        raise RuntimeError(
            f"the edge did not become ready within {READY_WITHIN}s: "
            f"{(stderr or b'').decode()[-2000:]}"
        )


async def _stop(server: asyncio.subprocess.Process) -> bytes:
    """Close the server's stdin, which asks it to stop; kill it if it lingers."""
    try:
        _, stderr = await asyncio.wait_for(server.communicate(), STOP_WITHIN)
    except TimeoutError:
        server.kill()
        _, stderr = await server.communicate()
    return stderr or b""


async def _load(
    port: int, request: bytes, requests: int, concurrency: int
) -> dict[str, float]:
    """Send `requests` POSTs with `concurrency` in flight; rate and latencies."""
    result = await post_load(
        "127.0.0.1",
        port,
        request,
        requests=requests,
        concurrency=concurrency,
        expect_status=202,
    )
    return {
        "requests_per_s": result.requests_per_s,
        "p50_ms": result.percentile_ms(0.50),
        "p99_ms": result.percentile_ms(0.99),
    }


def _summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "requests_per_s": round(
            statistics.median(r["requests_per_s"] for r in runs), 1
        ),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 2),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 2),
        "runs": [round(r["requests_per_s"], 1) for r in runs],
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
