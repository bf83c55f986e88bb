"""The services the trust tests provision and run: an entry point and two workers.

    edge   introduces users; sends order.place and order.cancel, asks order.status
    core   handles those three and audit.flag; emits the event order.placed; acts
           as itself with the role maintenance
    audit  handles order.placed (from users and services); may only send audit.flag

The handlers here do nothing; a test builds the same declarations around handlers
that record what they saw (:func:`declarations`), so provisioning and the running
services agree on every message type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from messaging.declaration import Emit, ServiceDeclaration
from messaging.handlers import Context, HandlerSpec
from messaging.identity import PrincipalKind
from messaging.topology import Route

PLACE = "order.place"
CANCEL = "order.cancel"
PLACED = "order.placed"
FLAG = "audit.flag"
EVERYONE = frozenset({PrincipalKind.USER, PrincipalKind.SERVICE})
STATUS = "order.status"


class Order(BaseModel):
    """The payload every test message carries."""

    model_config = ConfigDict(extra="forbid")

    item: str


Handler = Callable[[str, Context, Order], Awaitable[None]]


async def _ignore(_service: str, _context: Context, _payload: Order) -> None:
    return None


def declarations(handler: Handler = _ignore) -> list[ServiceDeclaration]:
    """The three services, each handler calling `handler(service, context, payload)`."""

    def spec(
        service: str,
        message_type: str,
        route: Route,
        kinds: frozenset[PrincipalKind] = frozenset({PrincipalKind.USER}),
    ) -> HandlerSpec[Any]:
        async def handle(context: Context, payload: Order) -> None:
            await handler(service, context, payload)

        return HandlerSpec(
            message_type, Order, handle, route=route, allowed_kinds=kinds
        )

    return [
        ServiceDeclaration(
            name="edge",
            emits=frozenset({Emit(Route.COMMAND, PLACE), Emit(Route.COMMAND, CANCEL)}),
            requests=frozenset({STATUS}),
            introduces_users=True,
        ),
        ServiceDeclaration(
            name="core",
            handlers=(
                spec("core", PLACE, Route.COMMAND),
                spec("core", CANCEL, Route.COMMAND),
                spec("core", STATUS, Route.COMMAND),
                spec("core", FLAG, Route.COMMAND),
            ),
            emits=frozenset({Emit(Route.EVENT, PLACED)}),
            roles=frozenset({"maintenance"}),
        ),
        ServiceDeclaration(
            name="audit",
            handlers=(spec("audit", PLACED, Route.EVENT, EVERYONE),),
            emits=frozenset({Emit(Route.COMMAND, FLAG)}),
        ),
    ]


DECLARATIONS = declarations()
