"""The edge app as the benchmark serves it: the real app, plus one route for contrast.

Started by :mod:`bench.edge` as ``python -m bench.edge_server``; it stops when
its stdin closes, so it never outlives the benchmark. The extra route
``POST /bench/verified`` runs the same middleware, JWT verification, role check
and body validation as ``POST /v1/commands/plan.create``, then answers at once
without publishing: the difference between the two is what the publish costs.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Annotated, Final

import uvicorn
from fastapi import Depends, FastAPI, status

from contracts.plans import PLAN_CREATE, PlanCreate
from edge_api.app import create_app
from edge_api.auth import authorized
from edge_api.json_body import UntrustedJsonRoute
from edge_api.settings import EdgeSettings
from messaging.identity import Principal
from messaging.settings import BrokerSettings

VERIFY_ONLY_PATH: Final = "/bench/verified"
PUBLISH_PATH: Final = f"/v1/commands/{PLAN_CREATE.name}"
ISSUER: Final = "bench-issuer"
AUDIENCE: Final = "baton"


async def verified(
    payload: PlanCreate,
    principal: Annotated[Principal, Depends(authorized(PLAN_CREATE))],
) -> dict[str, str]:
    """Answer as soon as the caller and the body are known good."""
    return {"status": "verified", "subject": principal.subject, "goal": payload.goal}


def build_app(amqp_url: str, prefix: str, public_key: Path) -> FastAPI:
    settings = EdgeSettings(
        issuer=ISSUER,
        audience=AUDIENCE,
        public_keys=(public_key,),
        algorithms=("RS256",),
    )
    app = create_app(settings, BrokerSettings(amqp_url=amqp_url, prefix=prefix))
    app.router.add_api_route(
        VERIFY_ONLY_PATH,
        verified,
        methods=["POST"],
        status_code=status.HTTP_202_ACCEPTED,
        # Read as untrusted JSON, as the command routes read their bodies.
        route_class_override=UntrustedJsonRoute,
    )
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--public-key", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = build_app(args.amqp_url, args.prefix, args.public_key)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    threading.Thread(target=_stop_with_parent, args=(server,), daemon=True).start()
    server.run()


def _stop_with_parent(server: uvicorn.Server) -> None:
    """Shut down once stdin closes: the benchmark ended, or died without a word."""
    sys.stdin.buffer.read()
    server.should_exit = True


if __name__ == "__main__":
    main()
