"""What a service declares about itself, from which its broker rights follow.

A declaration lists what the service consumes (its handlers), what it publishes
(events and commands), which requests it sends, whether it may introduce a user
into the system, and the roles it holds when it acts as itself. The consumer's
queues and bindings, the broker account's permissions and the consumers' trust
map are all derived from declarations, so a service can do nothing it has not
declared.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from messaging.handlers import HandlerSpec
from messaging.topology import Binding, Route


@dataclass(frozen=True, slots=True)
class Emit:
    """A message type a service publishes, and on which exchange."""

    route: Route
    message_type: str


@dataclass(frozen=True)
class ServiceDeclaration:
    """Everything a service may consume and publish."""

    name: str
    handlers: tuple[HandlerSpec[Any], ...] = ()
    emits: frozenset[Emit] = frozenset()
    requests: frozenset[str] = frozenset()
    # Only the entry points (the edge, the scheduler) start work for a user who
    # is not already carried by a message they received.
    introduces_users: bool = False
    # The roles the service holds when it acts as itself (a service principal):
    # consumers refuse a service principal with any other.
    roles: frozenset[str] = frozenset()

    def bindings(self) -> list[Binding]:
        return [Binding(spec.route, spec.message_type) for spec in self.handlers]

    def handled_types(self) -> frozenset[str]:
        return frozenset(spec.message_type for spec in self.handlers)

    def publishes(self, route: Route, message_type: str) -> bool:
        """Whether this service declared that it publishes `message_type` there."""
        if route is Route.COMMAND and message_type in self.requests:
            return True
        return Emit(route, message_type) in self.emits


def senders_of(
    declarations: Iterable[ServiceDeclaration], route: Route, message_type: str
) -> frozenset[str]:
    """The services allowed to publish `message_type` on `route`."""
    return frozenset(d.name for d in declarations if d.publishes(route, message_type))
