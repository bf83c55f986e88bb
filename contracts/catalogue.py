"""What a contract is, and the catalogue of every contract the system knows."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from messaging.topology import Route


class Strict(BaseModel):
    """Base of every payload: unknown fields refused, no coercion, immutable values.

    Refusing unknown fields is what keeps identity out of bodies: a client that
    adds ``user_id`` or ``internal`` to a payload gets a validation error. Strict
    types mean ``true``, ``"3"`` or ``3.0`` is not an integer: a client's mistake
    is an error it can see, not a value it did not mean.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, str_strip_whitespace=True, strict=True
    )


class Mode(StrEnum):
    """How the sender waits: not at all, or for the handler's reply."""

    ACCEPTED = "accepted"
    REQUEST = "request"


@dataclass(frozen=True)
class Contract:
    """One message type: its payload, its reply, and who may send it."""

    name: str
    payload: type[BaseModel]
    reply: type[BaseModel] | None = None
    route: Route = Route.COMMAND
    roles: frozenset[str] = frozenset()
    summary: str = ""
    # False keeps a command off the public edge: only services may send it.
    http: bool = True

    @property
    def mode(self) -> Mode:
        return Mode.REQUEST if self.reply is not None else Mode.ACCEPTED


def catalogue(*contracts: Contract) -> dict[str, Contract]:
    """Index contracts by name, refusing two with the same name."""
    found: dict[str, Any] = {}
    for contract in contracts:
        if contract.name in found:
            raise ValueError(f"contract {contract.name!r} is declared twice")
        found[contract.name] = contract
    return found
