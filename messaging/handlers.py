"""What a handler is given, and how a service declares one.

A handler is an ``async def`` taking a :class:`Context` and the validated payload.
The context carries the principal the work acts for; whatever the handler
publishes through it, or through :func:`current_context` from a task it spawned,
carries that same principal with this service appended to the actor chain.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from messaging.errors import Forbidden, TooManyPublishes
from messaging.identity import Origin, Principal, PrincipalKind
from messaging.publisher import Publisher
from messaging.rpc import Requester
from messaging.topology import Route, Topology

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)
HandlerFunc = Callable[["Context", Any], Awaitable[BaseModel | None]]


@dataclass(frozen=True)
class HandlerSpec(Generic[P]):
    """One message type a service handles, and who may send it (deny by default)."""

    message_type: str
    model: type[P]
    func: HandlerFunc
    route: Route = Route.COMMAND
    required_roles: frozenset[str] = frozenset()
    allowed_kinds: frozenset[PrincipalKind] = frozenset({PrincipalKind.USER})

    def authorize(self, principal: Principal) -> None:
        """Raise Forbidden unless `principal` may send this message type."""
        if principal.kind not in self.allowed_kinds:
            raise Forbidden(
                f"{self.message_type} does not accept {principal.kind.value} "
                f"principals (accepts: {_listed(k.value for k in self.allowed_kinds)})"
            )
        missing = self.required_roles - principal.roles
        if missing:
            raise Forbidden(
                f"{self.message_type} requires roles {_listed(missing)}, "
                f"which {principal.subject!r} lacks"
            )


@dataclass
class Context:
    """The delivery being handled: who it is for, and how to pass work on."""

    principal: Principal
    service: str
    message_id: str
    correlation_id: str
    message_type: str
    attempt: int
    publisher: Publisher = field(repr=False)
    topology: Topology = field(repr=False)
    requester: Requester | None = field(default=None, repr=False)
    request_timeout: float = 10.0
    max_publishes: int = 100
    # The service that published the delivery, as the trust policy established
    # it; '' when publishers are not checked. Message ids are the publisher's
    # choice, so whatever is keyed by one is keyed by this too.
    sent_by: str = ""
    _publishes: int = field(default=0, init=False, repr=False)

    def count_publish(self) -> None:
        """Count one more message sent for this delivery; refuse one past the cap.

        The chain's depth limit stops a loop; this stops a handler (or a loop
        inside one) that fans out without end. The delivery is quarantined
        with the reason; what it published before the cap stays published.
        """
        if self._publishes >= self.max_publishes:
            raise TooManyPublishes(
                f"{self.service} handling {self.message_type} {self.message_id} "
                f"tried to publish more than {self.max_publishes} messages "
                "(BATON_MAX_PUBLISHES_PER_DELIVERY)"
            )
        self._publishes += 1

    async def publish_event(self, event_type: str, payload: BaseModel) -> str:
        """Publish an event for the same principal; returns its message id."""
        return await self._send(Route.EVENT, event_type, payload)

    async def send_command(self, command_type: str, payload: BaseModel) -> str:
        """Send a command for the same principal; returns its message id."""
        return await self._send(Route.COMMAND, command_type, payload)

    async def request(
        self,
        request_type: str,
        payload: BaseModel,
        reply_model: type[R],
        *,
        timeout: float | None = None,
    ) -> R:
        """Ask another service for something, on behalf of the same principal."""
        if self.requester is None:
            raise RuntimeError("this context has no requester")
        self.count_publish()
        return await self.requester.request(
            request_type,
            payload,
            principal=self.passed_on(Origin.REQUEST),
            reply_model=reply_model,
            timeout=timeout or self.request_timeout,
            correlation_id=self.correlation_id,
        )

    def passed_on(self, origin: Origin) -> Principal:
        """The principal as this service passes it to the next hop."""
        return self.principal.handed_to(self.service, origin)

    async def _send(self, route: Route, message_type: str, payload: BaseModel) -> str:
        self.count_publish()
        return await self.publisher.publish(
            self.topology.exchange_for(route),
            message_type,
            message_type=message_type,
            body=payload,
            principal=self.passed_on(Origin.EVENT),
            correlation_id=self.correlation_id,
        )


_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "baton_handler_context", default=None
)


def current_context() -> Context:
    """The context of the delivery being handled, also inside spawned tasks."""
    context = _current.get()
    if context is None:
        raise LookupError("not inside a Baton handler")
    return context


def enter_context(context: Context) -> contextvars.Token[Context | None]:
    return _current.set(context)


def leave_context(token: contextvars.Token[Context | None]) -> None:
    _current.reset(token)


def _listed(items: Iterable[str]) -> str:
    return ", ".join(sorted(items)) or "none"
