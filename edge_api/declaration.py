"""The edge as a service declaration: what it publishes, and that it introduces users.

Broker permissions, the consumers' trust map and signature checks are derived
from declarations. The edge consumes nothing; it publishes every command it
exposes, sends every request it exposes, and is an entry point: the one place a
user enters the system from outside.
"""

from __future__ import annotations

from collections.abc import Iterable

from contracts import CATALOGUE, Contract, Mode
from edge_api.routes import http_contracts
from edge_api.tokens import EDGE_SERVICE
from messaging.declaration import Emit, ServiceDeclaration
from messaging.topology import Route


def edge_declaration(
    catalogue: Iterable[Contract] | None = None, *, name: str = EDGE_SERVICE
) -> ServiceDeclaration:
    """The declaration of an edge exposing `catalogue` (by default, all of it)."""
    exposed = http_contracts(CATALOGUE.values() if catalogue is None else catalogue)
    return ServiceDeclaration(
        name=name,
        emits=frozenset(
            Emit(Route.COMMAND, c.name) for c in exposed if c.mode is Mode.ACCEPTED
        ),
        requests=frozenset(c.name for c in exposed if c.mode is Mode.REQUEST),
        introduces_users=True,
    )
