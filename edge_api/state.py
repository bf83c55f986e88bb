"""What a running edge holds, wired once in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from edge_api.gateway import CommandGateway
from edge_api.receipts import Receipts
from edge_api.settings import EdgeSettings
from edge_api.tokens import TokenVerifier


@dataclass
class Edge:
    """The edge's collaborators, shared by every request."""

    settings: EdgeSettings
    verifier: TokenVerifier
    gateway: CommandGateway
    receipts: Receipts


def edge_of(request: Request) -> Edge:
    """The running edge serving `request`."""
    edge: Edge = request.app.state.edge
    return edge
