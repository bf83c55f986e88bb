"""The edge's declaration: what broker rights and trust it is given follow from it."""

from __future__ import annotations

from contracts import CATALOGUE, Mode
from edge_api.declaration import edge_declaration
from messaging.declaration import Emit
from messaging.topology import Route


def test_the_edge_publishes_exactly_the_commands_and_requests_it_exposes() -> None:
    declaration = edge_declaration()

    exposed = [c for c in CATALOGUE.values() if c.route is Route.COMMAND and c.http]
    assert declaration.name == "edge"
    assert declaration.introduces_users is True
    assert declaration.handlers == ()
    assert declaration.emits == {
        Emit(Route.COMMAND, c.name) for c in exposed if c.mode is Mode.ACCEPTED
    }
    assert declaration.requests == {c.name for c in exposed if c.mode is Mode.REQUEST}


def test_a_service_only_command_and_events_are_not_the_edge_s_to_publish() -> None:
    declaration = edge_declaration()

    assert not declaration.publishes(Route.COMMAND, "plan.prune")
    assert not declaration.publishes(Route.EVENT, "plan.changed")
    assert declaration.publishes(Route.COMMAND, "plan.create")
    assert declaration.publishes(Route.COMMAND, "plan.get")
