"""``baton edge`` and ``baton token``: serve the HTTP edge, mint development tokens.

``baton edge`` serves the edge with uvicorn, with settings from ``BATON_EDGE_*``
(and the broker from ``AMQP_URL``). With no key source configured it trusts the
development key of ``baton token``, generated under ``.baton/`` on first use.

``baton token --sub alice --roles planner`` prints a token that edge accepts.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from messaging.connection import redacted
from messaging.errors import TrustConfigError
from messaging.logcontext import configure_logging
from messaging.settings import BrokerSettings

if TYPE_CHECKING:
    from edge_api.dev_issuer import DevIssuer
    from edge_api.settings import EdgeSettings

# edge_api is imported only when one of these commands runs: a deployment of the
# services alone has no need of the edge package for the rest of ``baton``.


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``edge`` and ``token`` to the ``baton`` command."""
    edge = commands.add_parser("edge", help="serve the HTTP edge")
    edge.add_argument("--host", help="address to listen on (BATON_EDGE_HOST)")
    edge.add_argument("--port", type=int, help="port to listen on (BATON_EDGE_PORT)")
    edge.set_defaults(run=_serve_edge)

    token = commands.add_parser(
        "token", help="mint a development token the local edge accepts"
    )
    token.add_argument("--sub", required=True, help="the user the token is for")
    token.add_argument(
        "--roles", default="", help="comma-separated roles, e.g. planner,reader"
    )
    token.add_argument("--tenant", help="the tenant (needs BATON_EDGE_TENANT_CLAIM)")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(run=_mint_token)


def _serve_edge(args: argparse.Namespace) -> int:
    import uvicorn

    from edge_api.app import create_app
    from edge_api.dev_issuer import DevIssuer

    issuer = DevIssuer.from_environment()
    settings = edge_settings(issuer)
    if settings is None:
        return 2
    configure_logging()
    overrides = {
        name: value
        for name, value in (("host", args.host), ("port", args.port))
        if value is not None
    }
    settings = settings.model_copy(update=overrides)
    broker = BrokerSettings()

    try:
        app = create_app(settings, broker)
    except (OSError, ValueError, TrustConfigError) as exc:
        print(f"baton edge: cannot start: {exc}", file=sys.stderr)
        return 2

    announce_dev_key(issuer)
    print(f"edge: broker {redacted(broker.amqp_url)} (prefix {broker.prefix!r})")
    print(f"edge: listening on http://{settings.host}:{settings.port}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)
    return 0


def _mint_token(args: argparse.Namespace) -> int:
    from edge_api.dev_issuer import DevIssuer, uses_dev_key

    issuer = DevIssuer.from_environment()
    settings = edge_settings(issuer)
    if settings is None:
        return 2
    if not uses_dev_key():
        print(
            "baton token: BATON_EDGE_* names another key source, so the edge will "
            "not accept this development token",
            file=sys.stderr,
        )
    roles = [role.strip() for role in args.roles.split(",") if role.strip()]
    try:
        token = issuer.mint(settings, args.sub, roles, tenant=args.tenant, ttl=args.ttl)
    except (OSError, ValueError) as exc:
        print(f"baton token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def announce_dev_key(issuer: DevIssuer) -> None:
    """Say that the edge trusts the development key, when it does."""
    from edge_api.dev_issuer import uses_dev_key

    if uses_dev_key():
        print(f"edge: trusting the development key {issuer.public_key_file}")
        print("edge: mint a token with: baton token --sub alice --roles planner")


def edge_settings(issuer: DevIssuer) -> EdgeSettings | None:
    """The edge's settings, trusting the dev key when no key source is set.

    None after saying on stderr why there are none.
    """
    from pydantic import ValidationError

    try:
        return issuer.edge_settings()
    except ValidationError as exc:
        problems = "; ".join(str(err["msg"]) for err in exc.errors())
        print(f"baton: the edge settings are invalid: {problems}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(
            f"baton: no development key in {issuer.directory} ({exc}); set "
            "BATON_EDGE_DEV_KEY_DIR to a writable directory, or configure a key "
            "source (BATON_EDGE_JWKS_URL, _PUBLIC_KEYS or _HS256_SECRET)",
            file=sys.stderr,
        )
    return None
