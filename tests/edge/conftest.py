"""The tests play the identity provider: real keys, real tokens, a real JWKS server.

:class:`IdentityProvider` signs tokens with keys generated here and serves their
public halves from a JWKS endpoint on 127.0.0.1 (a thread with the standard
library's HTTP server), counting every fetch. The ``edge`` fixture runs the edge
app with its lifespan against the shared broker, under the test's own prefix.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
from aio_pika.abc import AbstractIncomingMessage
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi import FastAPI

from edge_api.app import create_app
from edge_api.settings import EdgeSettings
from messaging.settings import BrokerSettings
from tests.conftest import Broker
from tests.messaging.conftest import StartConsumer, start_consumer

ISSUER = "https://idp.test/"
AUDIENCE = "baton-edge"


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, alg=self.algorithm, use="sig")
        return jwk


def new_key(algorithm: str = "ES256", kid: str | None = None) -> SigningKey:
    if algorithm == "ES256":
        private: Any = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(kid or f"k-{uuid.uuid4().hex[:8]}", algorithm, private)


class JwksServer:
    """A JWKS endpoint on loopback that counts fetches and can fail on demand."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        # Served instead of the document when set: what no JSON encoder writes.
        self.raw: bytes | None = None
        self.failing = False
        self.fetches = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.fetches += 1
                    failing, raw = server.failing, server.raw
                    payload = raw or json.dumps(server.document).encode()
                if failing:
                    self.send_response(503)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._http.server_port}/jwks.json"

    def publish(self, *keys: SigningKey) -> None:
        with self._lock:
            self.document = {"keys": [key.public_jwk() for key in keys]}

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)


class IdentityProvider:
    """Signs tokens for the tests, with keys it publishes on its JWKS server."""

    def __init__(self, server: JwksServer, keys: list[SigningKey]) -> None:
        self.server = server
        self.key = keys[0]
        self.keys = list(keys)
        server.publish(*self.keys)

    def claims(
        self, sub: str = "alice", roles: list[str] | None = None
    ) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + 300,
            "roles": ["planner"] if roles is None else roles,
        }

    def sign(
        self,
        claims: dict[str, Any] | None = None,
        *,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        key = key or self.key
        return jwt.encode(
            self.claims() if claims is None else claims,
            key.private,
            algorithm=key.algorithm,
            headers={"kid": key.kid, **(headers or {})},
        )

    def token(
        self, sub: str = "alice", roles: list[str] | None = None, **extra: Any
    ) -> str:
        claims = self.claims(sub, roles)
        claims.update(extra)
        return self.sign(claims)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    """A token assembled by hand, as an attacker would."""
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(signature)


def forge_hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    mac = hmac.new(secret, head.encode(), hashlib.sha256).digest()
    return head + "." + b64(mac)


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def idp_keys() -> list[SigningKey]:
    """The provider's keys: made once, since an RSA key takes a while to make."""
    return [new_key("ES256"), new_key("EdDSA"), new_key("RS256")]


@pytest.fixture
def idp(jwks_server: JwksServer, idp_keys: list[SigningKey]) -> IdentityProvider:
    return IdentityProvider(jwks_server, idp_keys)


@pytest.fixture
def edge_settings(idp: IdentityProvider) -> EdgeSettings:
    return EdgeSettings(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url=idp.server.url,
        jwks_refresh_cooldown=30,
        reply_timeout=3,
        publish_timeout=3,
        startup_wait=5,
    )


@dataclass
class RunningEdge:
    app: FastAPI
    client: httpx.AsyncClient


async def run_edge(
    edge_settings: EdgeSettings, broker_settings: BrokerSettings
) -> AsyncIterator[RunningEdge]:
    app = create_app(edge_settings, broker_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://edge"
        ) as client:
            yield RunningEdge(app, client)


@pytest_asyncio.fixture
async def edge(
    edge_settings: EdgeSettings, settings: BrokerSettings, broker: Broker
) -> AsyncIterator[RunningEdge]:
    """The edge app, started, with a client; `broker` cleans up its exchanges."""
    async for running in run_edge(edge_settings, settings):
        yield running


async def wait_ready(client: httpx.AsyncClient, timeout: float = 60.0) -> None:
    """Poll an edge running in another process until its readiness says 200."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                if (await client.get("/health/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# The worker side: a real consumer, started and stopped by the messaging tests'
# own fixture (re-exported here so the edge tests can ask for it by name).
__all__ = ["StartConsumer", "start_consumer"]


@pytest_asyncio.fixture
async def spy(broker: Broker, prefix: str) -> AsyncIterator[Spy]:
    """A queue bound to every command: what the edge really put on the wire."""
    name = f"{prefix}.spy"
    broker.extra_queues.add(name)
    channel = await broker.connection.channel()
    try:
        await broker.topology.declare_exchanges(channel)
        queue = await channel.declare_queue(name, durable=False)
        await queue.bind(broker.topology.commands, routing_key="#")
    finally:
        await channel.close()
    yield Spy(broker, name)


@dataclass
class Spy:
    broker: Broker
    queue: str

    async def take(self, expect: int = 1) -> list[AbstractIncomingMessage]:
        taken = await self.broker.drain(self.queue, expect=expect, timeout=10)
        assert len(taken) == expect, f"expected {expect} commands, got {len(taken)}"
        return taken
