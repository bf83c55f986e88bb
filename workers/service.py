"""Declaring a service: the handlers it runs, what it publishes, whom it asks.

Declaring is all a developer writes::

    core = Service("core")
    core.emits(PLAN_CHANGED)
    core.requests(PROFILE_GET)

    @core.handles(PLAN_CREATE)
    async def create(ctx: ServiceContext, cmd: PlanCreate) -> None: ...

Queues and bindings follow from the handlers; the broker account's permissions
and the consumers' trust maps follow from :meth:`Service.declaration`. Access is
denied by default: a handler accepts user principals holding the contract's
roles unless it says otherwise, and everything else is quarantined.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from contracts import Contract
from messaging.declaration import Emit, ServiceDeclaration
from messaging.handlers import (
    Context,
    HandlerFunc,
    HandlerSpec,
    enter_context,
    leave_context,
)
from messaging.identity import SERVICE_PATTERN, PrincipalKind
from messaging.topology import Route
from workers.context import ServiceContext
from workers.errors import AlreadyHandled

logger = logging.getLogger(__name__)

ServiceHandler = Callable[[ServiceContext, Any], Awaitable[BaseModel | None]]
H = TypeVar("H", bound=ServiceHandler)


@dataclass(frozen=True)
class Handler:
    """One declared handler: the contract it serves and who may send it."""

    contract: Contract
    func: ServiceHandler
    roles: frozenset[str]
    kinds: frozenset[PrincipalKind]


class Service:
    """A named service and everything it declares about itself."""

    def __init__(self, name: str, *, introduces_users: bool = False) -> None:
        if SERVICE_PATTERN.fullmatch(name) is None:
            raise ValueError(
                f"service name {name!r} must match {SERVICE_PATTERN.pattern}"
            )
        self.name = name
        self.introduces_users = introduces_users
        self._handlers: dict[str, Handler] = {}
        self._emits: set[Emit] = set()
        self._requests: set[str] = set()
        self._roles: set[str] = set()
        self._declaration: ServiceDeclaration | None = None

    def handles(
        self,
        contract: Contract,
        *,
        roles: Iterable[str] | None = None,
        kinds: Iterable[PrincipalKind] = (PrincipalKind.USER,),
    ) -> Callable[[H], H]:
        """Declare the handler of `contract`.

        `roles` defaults to the roles the contract requires; `kinds` to users
        only. A principal of another kind, or missing a role, is quarantined.
        """
        if contract.name in self._handlers:
            raise ValueError(f"{self.name} already handles {contract.name}")
        allowed = frozenset(kinds)
        if not allowed:
            raise ValueError(f"{contract.name}: a handler must accept some kind")

        def register(func: H) -> H:
            required = contract.roles if roles is None else frozenset(roles)
            self._handlers[contract.name] = Handler(contract, func, required, allowed)
            self._declaration = None
            return func

        return register

    def emits(self, *contracts: Contract) -> None:
        """Declare events (or commands) this service publishes."""
        self._emits.update(Emit(c.route, c.name) for c in contracts)
        self._declaration = None

    def requests(self, *contracts: Contract) -> None:
        """Declare requests this service sends and waits for a reply to."""
        for contract in contracts:
            if contract.reply is None:
                raise ValueError(f"{contract.name} has no reply: declare it in emits()")
            self._requests.add(contract.name)
        self._declaration = None

    def acts_with(self, roles: Iterable[str]) -> None:
        """Declare roles this service holds when it acts as itself.

        Consumers refuse a service principal of this service with any other
        role, and so does its own signer.
        """
        self._roles.update(roles)
        self._declaration = None

    @property
    def handlers(self) -> tuple[Handler, ...]:
        return tuple(self._handlers.values())

    def declaration(self) -> ServiceDeclaration:
        """What this service consumes and publishes, with runnable handler specs."""
        if self._declaration is None:
            self._declaration = ServiceDeclaration(
                name=self.name,
                handlers=tuple(self._spec(h) for h in self._handlers.values()),
                emits=frozenset(self._emits),
                requests=frozenset(self._requests),
                introduces_users=self.introduces_users,
                roles=frozenset(self._roles),
            )
        return self._declaration

    def publishes(self, route: Route, message_type: str) -> bool:
        return self.declaration().publishes(route, message_type)

    def _spec(self, handler: Handler) -> HandlerSpec[Any]:
        return HandlerSpec(
            message_type=handler.contract.name,
            model=handler.contract.payload,
            func=self._dispatcher(handler),
            route=handler.contract.route,
            required_roles=handler.roles,
            allowed_kinds=handler.kinds,
        )

    def _dispatcher(self, handler: Handler) -> HandlerFunc:
        async def dispatch(context: Context, payload: Any) -> BaseModel | None:
            service_context = ServiceContext.adopt(context, self.declaration())
            token = enter_context(service_context)
            try:
                result = await handler.func(service_context, payload)
            except AlreadyHandled as duplicate:
                service_context.raise_if_refused()
                logger.info("skipped a duplicate: %s", duplicate)
                return None
            except Exception:
                # A refusal the handler ran into outranks whatever it raised
                # after it; otherwise its own error goes on, unchanged.
                service_context.raise_if_refused()
                raise
            finally:
                leave_context(token)
            # A handler that caught its refusal is refused all the same.
            service_context.raise_if_refused()
            return result

        dispatch.__name__ = f"{self.name}:{handler.contract.name}"
        return dispatch
