"""What a service's handler is given: the delivery, its principal, and guarded ways on.

:class:`ServiceContext` is the messaging library's :class:`~messaging.handlers.Context`
with the rules of a declared service added:

- it publishes and requests only the message types the service declared, and
  says so at publish time when it is asked for anything else;
- it passes on exactly the principal it received, with this service appended to
  the actor chain, and refuses to publish when that principal was swapped;
- its publishes get ids derived from the delivery's id, so a redelivered message
  republishes the same ids and downstream inboxes drop the copies;
- :meth:`ServiceContext.once` runs the side effect in an inbox transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, fields
from typing import Any, Final, TypeVar

from pydantic import BaseModel

from contracts import Contract
from messaging.declaration import ServiceDeclaration
from messaging.errors import ChainTooDeep, SchemaError
from messaging.handlers import Context, current_context
from messaging.identity import MAX_ACTORS, Origin, Principal
from messaging.publisher import Publisher
from messaging.rpc import Requester
from messaging.topology import Route
from workers.errors import IdentityChanged, UndeclaredMessage
from workers.inbox import Inbox

R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")

# Namespace of the ids of messages a handler publishes (see ServiceContext).
PUBLISHED_IDS: Final = uuid.UUID("6f1f3c4e-7b1a-5c55-9d0e-2a4b8c9e1d01")


@dataclass
class ServiceContext(Context):
    """The delivery being handled by a declared service."""

    declaration: ServiceDeclaration = field(
        default_factory=lambda: ServiceDeclaration(name="-"), repr=False
    )
    _admitted: Principal | None = field(default=None, init=False, repr=False)
    _published: int = field(default=0, init=False, repr=False)
    _requests_via: Requester | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._admitted = self.principal

    @classmethod
    def adopt(cls, context: Context, declaration: ServiceDeclaration) -> ServiceContext:
        """The consumer's context, bound to what `declaration` allows.

        The raw requester is kept private: a handler asks other services through
        :meth:`request`, which always sends the principal it was given.
        """
        values: dict[str, Any] = {
            f.name: getattr(context, f.name) for f in fields(Context)
        }
        values["requester"] = None
        adopted = cls(
            **values, declaration=declaration, _requests_via=context.requester
        )
        adopted.publisher = GuardedPublisher(context.publisher, adopted)
        return adopted

    async def publish_event(
        self, event_type: Contract | str, payload: BaseModel
    ) -> str:
        """Publish a declared event for the same principal; returns its message id."""
        return await self._send(
            Route.EVENT, _name(event_type, Route.EVENT, payload), payload
        )

    async def send_command(
        self, command_type: Contract | str, payload: BaseModel
    ) -> str:
        """Send a declared command for the same principal; returns its message id."""
        name = _name(command_type, Route.COMMAND, payload)
        return await self._send(Route.COMMAND, name, payload)

    async def request(
        self,
        request_type: Contract | str,
        payload: BaseModel,
        reply_model: type[R],
        *,
        timeout: float | None = None,
    ) -> R:
        """Ask another service, for the same principal; its errors raise RemoteError."""
        name = _name(request_type, Route.COMMAND, payload)
        if isinstance(request_type, Contract) and request_type.reply is not reply_model:
            raise TypeError(
                f"{name} replies with {_model_name(request_type.reply)}, "
                f"not {reply_model.__name__}"
            )
        if name not in self.declaration.requests:
            raise UndeclaredMessage(
                f"{self.service} sends request {name} but does not declare it: "
                f"add it with requests()"
            )
        if self._requests_via is None:
            raise RuntimeError("this context has no requester")
        return await self._requests_via.request(
            name,
            payload,
            principal=self.passed_on(Origin.REQUEST),
            reply_model=reply_model,
            timeout=timeout or self.request_timeout,
            correlation_id=self.correlation_id,
        )

    def once(self, inbox: Inbox[T]) -> AbstractAsyncContextManager[T]:
        """A transaction in which this delivery's side effect happens at most once.

        Entering it raises :class:`~workers.errors.AlreadyHandled` for a message
        id the inbox has seen from the same publisher (when publishers are
        checked); the service runtime acks such a duplicate.
        """
        if not self.message_id:
            raise SchemaError(
                f"{self.message_type} has no message id, so it cannot be handled "
                "exactly once"
            )
        # A publisher picks its message ids (the scheduler's are predictable):
        # keyed by publisher too, one cannot use up another's.
        key = f"{self.sent_by}/{self.message_id}" if self.sent_by else self.message_id
        return inbox.once(self.service, key)

    def passed_on(self, origin: Origin) -> Principal:
        """The principal this service passes on: the one it received, one hop longer.

        The service is appended even when it is already last in the chain, so a
        service that keeps feeding itself reaches the depth limit like any loop.
        """
        admitted = self._admitted
        if admitted is None or self.principal != admitted:
            raise IdentityChanged(
                f"{self.service} may only pass on the principal it received "
                f"({_who(admitted)}), not {_who(self.principal)}"
            )
        if len(admitted.actors) >= MAX_ACTORS:
            # The receiver would refuse it anyway; saying so here names the loop.
            raise ChainTooDeep(
                f"{self.service} cannot pass on work that already passed through "
                f"{' > '.join(admitted.actors)}: the protocol allows {MAX_ACTORS} hops"
            )
        return Principal(
            subject=admitted.subject,
            kind=admitted.kind,
            roles=admitted.roles,
            origin=origin,
            internal=True,
            actors=(*admitted.actors, self.service),
            tenant=admitted.tenant,
        )

    async def _send(self, route: Route, message_type: str, payload: BaseModel) -> str:
        if not self.declaration.publishes(route, message_type):
            raise UndeclaredMessage(
                f"{self.service} publishes {route.value} {message_type} but does not "
                f"declare it: add it with emits()"
            )
        principal = self.passed_on(Origin.EVENT)
        self._published += 1
        return await self.publisher.publish(
            self.topology.exchange_for(route),
            message_type,
            message_type=message_type,
            body=payload,
            principal=principal,
            message_id=self._next_id(message_type),
            correlation_id=self.correlation_id,
        )

    def _next_id(self, message_type: str) -> str:
        # Derived from the delivery's id: a redelivery that repeats the handler
        # publishes the same ids, and the receivers' inboxes keep one copy.
        if not self.message_id:
            return uuid.uuid4().hex
        seed = f"{self.service}/{self.message_id}/{self._published}/{message_type}"
        return uuid.uuid5(PUBLISHED_IDS, seed).hex


class GuardedPublisher(Publisher):
    """The publisher a handler sees: it sends only the principal the hop may send.

    A handler could reach for ``ctx.publisher`` and pass a principal it built by
    hand. This wrapper checks every principal against the one the delivery
    passes on, so changing the subject, the roles or the chain fails at publish
    time with :class:`~workers.errors.IdentityChanged`.
    """

    def __init__(self, inner: Publisher, context: ServiceContext) -> None:
        # Wraps an open publisher; it has no channel of its own to set up.
        self._inner = inner
        self._context = context
        self.signer = inner.signer

    @property
    def broker_user(self) -> str:
        return self._inner.broker_user

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        *,
        message_type: str,
        body: BaseModel | bytes,
        principal: Principal | None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        headers: Mapping[str, Any] | None = None,
        expiration: float | None = None,
    ) -> str:
        self._check(principal)
        return await self._inner.publish(
            exchange,
            routing_key,
            message_type=message_type,
            body=body,
            principal=principal,
            message_id=message_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
            headers=headers,
            expiration=expiration,
        )

    async def republish(self, *args: Any, **kwargs: Any) -> None:
        raise IdentityChanged("a handler may not republish a raw message")

    async def close(self) -> None:
        """The consumer owns the channel; a handler cannot close it."""

    def _check(self, principal: Principal | None) -> None:
        expected = self._context.passed_on(Origin.EVENT)
        if principal is None or _identity(principal) != _identity(expected):
            raise IdentityChanged(
                f"{self._context.service} may only publish as {_who(expected)}, "
                f"not {_who(principal)}"
            )


def current_service_context() -> ServiceContext:
    """The declared service's context of the delivery being handled."""
    context = current_context()
    if not isinstance(context, ServiceContext):
        raise LookupError("not inside a handler of a declared Service")
    return context


def _identity(principal: Principal) -> tuple[Any, ...]:
    # Everything but the origin, which says how the hop sends it on.
    return (
        principal.subject,
        principal.kind,
        principal.roles,
        principal.tenant,
        principal.internal,
        principal.actors,
    )


def _name(target: Contract | str, route: Route, payload: BaseModel) -> str:
    if isinstance(target, str):
        return target
    if target.route is not route:
        raise TypeError(f"{target.name} is sent as a {target.route.value}, not {route}")
    if not isinstance(payload, target.payload):
        raise TypeError(
            f"{target.name} carries {target.payload.__name__}, "
            f"not {type(payload).__name__}"
        )
    return target.name


def _who(principal: Principal | None) -> str:
    if principal is None:
        return "no principal"
    roles = ",".join(sorted(principal.roles)) or "no roles"
    chain = " > ".join(principal.actors)
    return f"{principal.kind.value} {principal.subject!r} ({roles}; via {chain})"


def _model_name(model: type[BaseModel] | None) -> str:
    return "nothing" if model is None else model.__name__
