"""What a service's handler is given: the delivery, its principal, and guarded ways on.

:class:`ServiceContext` is the messaging library's :class:`~messaging.handlers.Context`
with the rules of a declared service added:

- it publishes and requests only the message types the service declared, and
  says so at publish time when it is asked for anything else, also through
  ``ctx.publisher``;
- it passes on exactly the principal it received, with this service appended to
  the actor chain, and refuses to publish when that principal was swapped;
- its publishes get ids derived from the delivery and the content
  (:mod:`workers.publish_ids`), so a redelivered message republishes the same
  ids and downstream inboxes drop the copies;
- one delivery publishes at most ``BATON_MAX_PUBLISHES_PER_DELIVERY`` messages;
- :meth:`ServiceContext.once` runs the side effect in an inbox transaction.

A refusal a handler swallows still decides the delivery: the first
``IdentityChanged``, ``ChainTooDeep`` or ``TooManyPublishes`` raised while
handling it is raised again when the handler returns, so the delivery is
quarantined all the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from pydantic import BaseModel

from contracts import Contract
from messaging import headers as h
from messaging.declaration import ServiceDeclaration
from messaging.errors import ChainTooDeep, MessageRejected, SchemaError
from messaging.handlers import Context, current_context
from messaging.identity import MAX_ACTORS, Origin, Principal
from messaging.publisher import Publisher
from messaging.rpc import Requester
from messaging.topology import Route
from workers.errors import IdentityChanged, UndeclaredMessage
from workers.inbox import Inbox
from workers.publish_ids import PublishIds

R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")


@dataclass
class ServiceContext(Context):
    """The delivery being handled by a declared service."""

    declaration: ServiceDeclaration = field(
        default_factory=lambda: ServiceDeclaration(name="-"), repr=False
    )
    _admitted: Principal | None = field(default=None, init=False, repr=False)
    _ids: PublishIds | None = field(default=None, init=False, repr=False)
    _refusal: MessageRejected | None = field(default=None, init=False, repr=False)
    _requests_via: Requester | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._admitted = self.principal
        if self.message_id:
            self._ids = PublishIds(self.service, self.message_id)

    @classmethod
    def adopt(cls, context: Context, declaration: ServiceDeclaration) -> ServiceContext:
        """The consumer's context, bound to what `declaration` allows.

        The raw requester is kept private: a handler asks other services through
        :meth:`request`, which always sends the principal it was given.
        """
        values: dict[str, Any] = {
            f.name: getattr(context, f.name) for f in fields(Context) if f.init
        }
        values["requester"] = None
        adopted = cls(
            **values, declaration=declaration, _requests_via=context.requester
        )
        adopted.publisher = GuardedPublisher(context.publisher, adopted)
        return adopted

    async def publish_event(
        self,
        event_type: Contract | str,
        payload: BaseModel,
        *,
        key: str | None = None,
    ) -> str:
        """Publish a declared event for the same principal; returns its message id.

        `key` names the message for its id when its payload may differ between
        attempts (see :mod:`workers.publish_ids`).
        """
        name = _name(event_type, Route.EVENT, payload)
        return await self._send(Route.EVENT, name, payload, key)

    async def send_command(
        self,
        command_type: Contract | str,
        payload: BaseModel,
        *,
        key: str | None = None,
    ) -> str:
        """Send a declared command for the same principal; returns its message id."""
        name = _name(command_type, Route.COMMAND, payload)
        return await self._send(Route.COMMAND, name, payload, key)

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
        self.count_publish()
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
            raise self.refused(
                IdentityChanged(
                    f"{self.service} may only pass on the principal it received "
                    f"({_who(admitted)}), not {_who(self.principal)}"
                )
            )
        if len(admitted.actors) >= MAX_ACTORS:
            # The receiver would refuse it anyway; saying so here names the loop.
            raise self.refused(
                ChainTooDeep(
                    f"{self.service} cannot pass on work that already passed "
                    f"through {' > '.join(admitted.actors)}: the protocol allows "
                    f"{MAX_ACTORS} hops"
                )
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

    def count_publish(self) -> None:
        try:
            super().count_publish()
        except MessageRejected as exc:
            raise self.refused(exc) from None

    def refused(self, exc: MessageRejected) -> MessageRejected:
        """Remember the first refusal, so that swallowing it changes nothing."""
        if self._refusal is None:
            self._refusal = exc
        return exc

    def raise_if_refused(self) -> None:
        """Raise the refusal met while handling, if the handler swallowed it."""
        if self._refusal is not None:
            raise self._refusal

    def admit_publish(self, exchange: str, message_type: str, routing_key: str) -> None:
        """Refuse a publish the declaration does not allow, naming what to declare."""
        route = _route_of(self.topology.commands, self.topology.events, exchange)
        if route is None:
            raise UndeclaredMessage(
                f"{self.service} publishes to exchange {exchange!r}: a handler "
                "publishes events and commands only"
            )
        if routing_key != message_type:
            raise UndeclaredMessage(
                f"{self.service} publishes {message_type} with routing key "
                f"{routing_key!r}: the routing key must be the message type"
            )
        if not self.declaration.publishes(route, message_type):
            raise UndeclaredMessage(
                f"{self.service} publishes {route.value} {message_type} but does not "
                f"declare it: add it with emits()"
            )

    def message_id_for(
        self, message_type: str, body: BaseModel | bytes, key: str | None = None
    ) -> str:
        """The id of a message this delivery publishes: the same on every attempt."""
        if self._ids is None:
            return uuid.uuid4().hex
        raw = body if isinstance(body, bytes) else body.model_dump_json().encode()
        return self._ids.next(message_type, raw, key)

    async def _send(
        self,
        route: Route,
        message_type: str,
        payload: BaseModel,
        key: str | None = None,
    ) -> str:
        # The guarded publisher checks the declaration and counts the publish.
        return await self.publisher.publish(
            self.topology.exchange_for(route),
            message_type,
            message_type=message_type,
            body=payload,
            principal=self.passed_on(Origin.EVENT),
            message_id=self.message_id_for(message_type, payload, key),
            correlation_id=self.correlation_id,
        )


class GuardedPublisher(Publisher):
    """The publisher a handler sees: only what the service declared, as the hop.

    A handler could reach for ``ctx.publisher`` and pass a principal it built by
    hand, a type it never declared or headers of our protocol. This wrapper
    holds every publish to the rules of :meth:`ServiceContext.publish_event`:
    a declared type on its own route and routing key (else
    :class:`~workers.errors.UndeclaredMessage`), exactly the principal the
    delivery passes on, origin included, and no ``baton-`` header or
    ``reply_to`` of its own (else :class:`~workers.errors.IdentityChanged`).
    It also counts toward the publish cap and derives the message id when none
    is given.
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
        context = self._context
        context.admit_publish(exchange, message_type, routing_key)
        self._check(principal, reply_to, headers)
        context.count_publish()
        return await self._inner.publish(
            exchange,
            routing_key,
            message_type=message_type,
            body=body,
            principal=principal,
            message_id=message_id or context.message_id_for(message_type, body),
            correlation_id=correlation_id,
            reply_to=reply_to,
            headers=headers,
            expiration=expiration,
        )

    async def republish(self, *args: Any, **kwargs: Any) -> None:
        raise self._context.refused(
            IdentityChanged("a handler may not republish a raw message")
        )

    async def close(self) -> None:
        """The consumer owns the channel; a handler cannot close it."""

    def _check(
        self,
        principal: Principal | None,
        reply_to: str | None,
        headers: Mapping[str, Any] | None,
    ) -> None:
        context = self._context
        expected = context.passed_on(Origin.EVENT)
        if principal != expected:
            raise context.refused(
                IdentityChanged(
                    f"{context.service} may only publish as {_who(expected)}, "
                    f"not {_who(principal)}"
                )
            )
        ours = sorted(k for k in headers or {} if k.lower().startswith(h.NAMESPACE))
        if ours or reply_to is not None:
            # Transport and signing headers are the runtime's to write, and a
            # request goes through ctx.request, which owns the reply queue.
            named = ", ".join(ours) or f"reply_to {reply_to!r}"
            raise context.refused(
                IdentityChanged(f"{context.service} may not set {named} itself")
            )


def current_service_context() -> ServiceContext:
    """The declared service's context of the delivery being handled."""
    context = current_context()
    if not isinstance(context, ServiceContext):
        raise LookupError("not inside a handler of a declared Service")
    return context


def _route_of(commands: str, events: str, exchange: str) -> Route | None:
    return {commands: Route.COMMAND, events: Route.EVENT}.get(exchange)


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
    how = (
        f"{principal.origin.value}, {'internal' if principal.internal else 'external'}"
    )
    return f"{principal.kind.value} {principal.subject!r} ({roles}; via {chain}; {how})"


def _model_name(model: type[BaseModel] | None) -> str:
    return "nothing" if model is None else model.__name__
