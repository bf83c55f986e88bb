"""The edge application: ``create_app(settings)`` builds it, its lifespan wires it.

The lifespan opens the broker link (without failing when the broker is down:
the edge then answers 503 and readiness says why), warms the signing-key cache
and closes everything on shutdown. Middleware runs outermost first: identity
headers are refused before the body is read, and the body is capped before
anything parses it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from contracts import CATALOGUE, Contract
from edge_api.body_limit import BodyLimit
from edge_api.declaration import edge_declaration
from edge_api.gateway import CommandGateway
from edge_api.header_guard import IdentityHeaderGuard
from edge_api.keys import JwksKeys, KeySource, StaticKeys, VerificationKey
from edge_api.receipts import Receipts
from edge_api.routes import commands_router, health_router
from edge_api.settings import EdgeSettings
from edge_api.state import Edge
from edge_api.tokens import EDGE_SERVICE, TokenVerifier
from messaging.selfcheck import verify_startup
from messaging.settings import BrokerSettings
from messaging.signing import Signer

logger = logging.getLogger(__name__)


def create_app(
    settings: EdgeSettings,
    broker: BrokerSettings | None = None,
    *,
    catalogue: Iterable[Contract] | None = None,
    signer: Signer | None = None,
) -> FastAPI:
    """The edge as an ASGI app; the broker settings default to the environment.

    `signer` signs the identity of every command (see ``messaging.signing``);
    without one, the broker settings' signing key is used when they name one,
    and a deployment that requires signatures without a key refuses to start.
    """
    broker = broker or BrokerSettings()
    contracts = list(CATALOGUE.values() if catalogue is None else catalogue)
    if signer is None:
        # The same startup self-check as every service: settings, and the
        # broker account's rights when a management URL is given.
        _policy, signer = verify_startup(
            broker, EDGE_SERVICE, [edge_declaration(contracts)]
        )
    # Keys given up front are read now, so that a missing or unfit PEM file
    # stops the edge before it serves; a JWKS client belongs to the lifespan.
    static_keys = key_source(settings) if settings.jwks_url is None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys = static_keys or key_source(settings)
        gateway = CommandGateway(
            broker,
            publish_timeout=settings.publish_timeout,
            heartbeat=settings.heartbeat,
            signer=signer,
        )
        receipts = Receipts(
            max_entries=settings.receipts_max, ttl=settings.receipts_ttl
        )
        app.state.edge = Edge(
            settings, TokenVerifier(settings, keys), gateway, receipts
        )
        try:
            await gateway.start(wait=settings.startup_wait)
            if not gateway.is_ready:
                logger.warning("edge started without a broker connection")
            if isinstance(keys, JwksKeys):
                await keys.prefetch()
            yield
        finally:
            await gateway.stop()
            await keys.aclose()

    app = FastAPI(
        title="Baton edge",
        summary="Commands over HTTP, acting for the user of a verified bearer token.",
        version="1",
        lifespan=lifespan,
    )
    app.include_router(commands_router(contracts))
    app.include_router(health_router())
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(IdentityHeaderGuard)
    return app


def key_source(settings: EdgeSettings) -> KeySource:
    """The key source the settings name (they allow exactly one)."""
    if settings.jwks_url is not None:
        return JwksKeys(
            settings.jwks_url,
            algorithms=settings.algorithms,
            timeout=settings.jwks_timeout,
            cache_ttl=settings.jwks_cache_ttl,
            refresh_cooldown=settings.jwks_refresh_cooldown,
        )
    if settings.hs256_secret is not None:
        secret = settings.hs256_secret.get_secret_value().encode()
        return StaticKeys([VerificationKey(None, "HS256", secret)])
    return StaticKeys.from_pem_files(settings.public_keys, settings.algorithms)
