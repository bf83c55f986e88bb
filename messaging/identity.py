"""The principal a message acts for, and its strict encoding into AMQP headers.

The rules are the wire contract documented in ``docs/protocol.md``. Decoding
checks exact AMQP types: a header that should be a boolean must be a boolean,
never the string ``"false"`` or the bytes ``b"true"``; an integer must not be a
boolean in disguise. Every refusal is a typed :class:`~messaging.errors.IdentityError`
that names the header and says what was wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, TypeVar

from messaging import headers as h
from messaging.errors import (
    DuplicateHeader,
    HeaderSetTooLarge,
    HeaderTypeError,
    HeaderValueError,
    MissingHeader,
    UnknownHeader,
    UnsupportedVersion,
)

SUBJECT_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@|+\-]{0,127}")
ROLE_PATTERN: Final = re.compile(r"[A-Za-z][A-Za-z0-9._:\-]{0,63}")
TENANT_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}")
SERVICE_PATTERN: Final = re.compile(r"[a-z][a-z0-9\-]{0,31}")

MAX_SUBJECT_LENGTH: Final = 128
MAX_ROLE_LENGTH: Final = 64
MAX_TENANT_LENGTH: Final = 64
MAX_SERVICE_LENGTH: Final = 32
MAX_ROLES: Final = 32
MAX_ACTORS: Final = 16
MAX_IDENTITY_BYTES: Final = 2048
IDENTITY_SET: Final = "baton-*"
"""The header an error names when the identity headers as a whole are refused."""

_AMQP_TYPE_NAMES: Final[dict[type, str]] = {
    str: "longstr",
    bytes: "longstr that is not UTF-8",
    bytearray: "byte array",
    bool: "boolean",
    int: "integer",
    float: "float",
    Decimal: "decimal",
    datetime: "timestamp",
    dict: "table",
    list: "array",
    type(None): "void",
}

Headers = Mapping[str, Any]
E = TypeVar("E", bound=StrEnum)


class PrincipalKind(StrEnum):
    """Whether a principal is a person or one of our services."""

    USER = "user"
    SERVICE = "service"


class Origin(StrEnum):
    """How the work entered the system, or how it reached this hop."""

    HTTP = "http"
    EVENT = "event"
    SCHEDULE = "schedule"
    REQUEST = "request"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a piece of work acts for, and the services it has passed through."""

    subject: str
    kind: PrincipalKind
    roles: frozenset[str]
    origin: Origin
    internal: bool
    actors: tuple[str, ...] = ()
    tenant: str | None = None

    def __post_init__(self) -> None:
        # A str is iterable too: roles "admin" would encode as the roles a, d,
        # i, m, n, and actors "edge" as a chain e > d > g > e.
        if not isinstance(self.roles, frozenset):
            raise TypeError(f"roles must be a frozenset, got {self.roles!r}")
        if not isinstance(self.actors, tuple):
            raise TypeError(f"actors must be a tuple, got {self.actors!r}")
        # Building a principal in code obeys the same rules as reading one off
        # the wire, so nothing we publish can be refused by our own decoder.
        decode_principal(encode_principal(self))

    @classmethod
    def user(
        cls,
        subject: str,
        roles: Iterable[str] = (),
        *,
        entered_by: str,
        origin: Origin = Origin.HTTP,
        tenant: str | None = None,
    ) -> Principal:
        """A user whose work enters the system through the service `entered_by`.

        Only work that comes straight from the user's own HTTP request is external;
        anything a service starts for the user (a scheduled job) is internal.
        """
        return cls(
            subject=subject,
            kind=PrincipalKind.USER,
            roles=_role_set(roles),
            origin=origin,
            internal=origin is not Origin.HTTP,
            actors=(entered_by,),
            tenant=tenant,
        )

    @classmethod
    def service(
        cls, name: str, roles: Iterable[str] = (), *, origin: Origin
    ) -> Principal:
        """One of our own services, acting under its own name and roles."""
        return cls(
            subject=name,
            kind=PrincipalKind.SERVICE,
            roles=_role_set(roles),
            origin=origin,
            internal=True,
            actors=(name,),
        )

    def has_roles(self, required: Iterable[str]) -> bool:
        """True when this principal holds every role in `required`."""
        return self.roles.issuperset(required)

    def handed_to(self, service: str, origin: Origin) -> Principal:
        """The same principal, as passed on by `service`: one more actor, internal.

        Subject, kind, roles and tenant never change on a hop. The service is
        appended even when it is already last, so a service that keeps feeding
        itself reaches the chain limits like any other loop.
        """
        if origin is Origin.HTTP:
            raise ValueError("a service passes work on by event, request or schedule")
        actors = (*self.actors, service)
        return replace(self, actors=actors, origin=origin, internal=True)


def _role_set(roles: Iterable[str]) -> frozenset[str]:
    if isinstance(roles, str | bytes | bytearray):
        raise TypeError(
            f"roles must be a collection of role names, not the single value "
            f"{roles!r} (write [{roles!r}] for one role)"
        )
    return frozenset(roles)


def encode_principal(principal: Principal) -> dict[str, Any]:
    """The identity headers for `principal`, ready for an AMQP header table."""
    headers: dict[str, Any] = {
        h.VERSION: h.PROTOCOL_VERSION,
        h.SUBJECT: principal.subject,
        h.KIND: principal.kind.value,
        h.ROLES: sorted(principal.roles),
        h.ACTORS: list(principal.actors),
        h.ORIGIN: principal.origin.value,
        h.INTERNAL: principal.internal,
    }
    if principal.tenant is not None:
        headers[h.TENANT] = principal.tenant
    return headers


def decode_principal(headers: Headers | Sequence[tuple[str, Any]] | None) -> Principal:
    """Rebuild the principal from AMQP headers, refusing anything off-contract."""
    table = _as_table(headers)

    for key in table:
        # The set lookup first: every header of a well-formed message is known,
        # so the namespace check (a slice and lower()) runs only for the others.
        if key not in h.KNOWN_HEADERS and _in_namespace(key):
            raise UnknownHeader(
                _printable(key), "is in the baton- namespace but not defined"
            )

    version = _required(table, h.VERSION)
    if type(version) is not int:
        raise HeaderTypeError(h.VERSION, f"must be an integer, got {_kind(version)}")
    if version != h.PROTOCOL_VERSION:
        raise UnsupportedVersion(h.VERSION, f"version {version} is not supported")

    subject = _string(table, h.SUBJECT, SUBJECT_PATTERN, MAX_SUBJECT_LENGTH)
    kind = _enum(table, h.KIND, PrincipalKind)
    roles = _string_list(table, h.ROLES, ROLE_PATTERN, MAX_ROLES, MAX_ROLE_LENGTH)
    actors = _string_list(
        table, h.ACTORS, SERVICE_PATTERN, MAX_ACTORS, MAX_SERVICE_LENGTH
    )
    origin = _enum(table, h.ORIGIN, Origin)
    internal = _required(table, h.INTERNAL)
    if type(internal) is not bool:
        raise HeaderTypeError(h.INTERNAL, f"must be a boolean, got {_kind(internal)}")
    tenant = None
    if h.TENANT in table:
        tenant = _string(table, h.TENANT, TENANT_PATTERN, MAX_TENANT_LENGTH)

    if len(set(roles)) != len(roles):
        raise HeaderValueError(h.ROLES, "lists the same role twice")
    _check_invariants(kind, subject, actors, origin, internal)
    size = _size(subject, tenant, roles, actors)
    if size > MAX_IDENTITY_BYTES:
        raise HeaderSetTooLarge(
            IDENTITY_SET, f"values take {size} bytes, over {MAX_IDENTITY_BYTES}"
        )

    return _build(subject, kind, frozenset(roles), origin, internal, actors, tenant)


def _build(
    subject: str,
    kind: PrincipalKind,
    roles: frozenset[str],
    origin: Origin,
    internal: bool,
    actors: list[str],
    tenant: str | None,
) -> Principal:
    # Skips __post_init__: the values were just checked by the decoder itself.
    # One call per field, no loop over pairs: this runs for every message.
    principal = object.__new__(Principal)
    set_field = object.__setattr__
    set_field(principal, "subject", subject)
    set_field(principal, "kind", kind)
    set_field(principal, "roles", roles)
    set_field(principal, "origin", origin)
    set_field(principal, "internal", internal)
    set_field(principal, "actors", tuple(actors))
    set_field(principal, "tenant", tenant)
    return principal


def _as_table(headers: Headers | Sequence[tuple[str, Any]] | None) -> Headers:
    if headers is None:
        return {}
    if isinstance(headers, Mapping):
        return headers

    table: dict[str, Any] = {}
    for key, value in headers:
        if key in table:
            raise DuplicateHeader(
                _printable(key), "appears more than once in the header table"
            )
        table[key] = value
    return table


def _required(table: Headers, key: str) -> Any:
    try:
        return table[key]
    except KeyError:
        raise MissingHeader(key, "is required") from None


def _string(table: Headers, key: str, pattern: re.Pattern[str], limit: int) -> str:
    value = _required(table, key)
    if type(value) is not str:
        raise HeaderTypeError(key, f"must be a longstr, got {_kind(value)}")
    _check_text(key, value, pattern, limit)
    return value


def _string_list(
    table: Headers, key: str, pattern: re.Pattern[str], limit: int, length: int
) -> list[str]:
    value = _required(table, key)
    if type(value) is not list:
        raise HeaderTypeError(key, f"must be an array, got {_kind(value)}")
    if len(value) > limit:
        raise HeaderValueError(key, f"has {len(value)} items, over the limit {limit}")
    for item in value:
        if type(item) is not str:
            raise HeaderTypeError(key, f"items must be longstr, got {_kind(item)}")
        _check_text(key, item, pattern, length)
    return value


def _enum(table: Headers, key: str, enum: type[E]) -> E:
    value = _required(table, key)
    if type(value) is not str:
        raise HeaderTypeError(key, f"must be a longstr, got {_kind(value)}")
    # A dict lookup instead of enum(value): calling an Enum class costs about
    # a microsecond, twice per message; the members are the same.
    member = _members(enum).get(value)
    if member is None:
        allowed = ", ".join(option.value for option in enum)
        raise HeaderValueError(key, f"{_shown(value)} is not one of: {allowed}")
    return member


_MEMBERS: dict[type[StrEnum], dict[str, Any]] = {}


def _members(enum: type[E]) -> dict[str, E]:
    members: dict[str, E] | None = _MEMBERS.get(enum)
    if members is None:
        members = {member.value: member for member in enum}
        _MEMBERS[enum] = members
    return members


def _check_text(key: str, value: str, pattern: re.Pattern[str], limit: int) -> None:
    if not value:
        raise HeaderValueError(key, "must not be empty")
    if len(value) > limit:
        raise HeaderValueError(key, f"is {len(value)} characters, over {limit}")
    if pattern.fullmatch(value) is None:
        raise HeaderValueError(
            key, f"{_shown(value)} has characters outside {pattern.pattern}"
        )


def _check_invariants(
    kind: PrincipalKind,
    subject: str,
    actors: list[str],
    origin: Origin,
    internal: bool,
) -> None:
    if not actors:
        raise HeaderValueError(h.ACTORS, "must name at least the entering service")
    if kind is PrincipalKind.SERVICE:
        if not internal:
            raise HeaderValueError(h.INTERNAL, "a service principal is always internal")
        if actors[0] != subject:
            raise HeaderValueError(
                h.ACTORS, "a service principal's chain must start with the service"
            )
    # A user's own HTTP request is the only external work; a hop cannot arrive
    # by HTTP, so anything else a user's work does is an internal call.
    elif origin is Origin.HTTP and internal:
        raise HeaderValueError(h.INTERNAL, "a user's work from http is not internal")
    elif origin is not Origin.HTTP and not internal:
        raise HeaderValueError(
            h.INTERNAL, f"a user's work from {origin.value} is always internal"
        )
    if origin is Origin.HTTP and len(actors) > 1:
        raise HeaderValueError(
            h.ORIGIN, "work passed on by a service cannot have come from http"
        )


def _size(subject: str, tenant: str | None, roles: list[str], actors: list[str]) -> int:
    # Values are ASCII (the patterns allow nothing else), so len() is the byte size.
    size = len(subject) + len(tenant or "")
    size += sum(len(role) for role in roles) + sum(len(actor) for actor in actors)
    return size


def _in_namespace(key: object) -> bool:
    # ASCII case is ignored, so that "Baton-Subject" is refused rather than
    # skipped: a client library with case-insensitive header maps would read it.
    return isinstance(key, str) and key[: len(h.NAMESPACE)].lower() == h.NAMESPACE


def _printable(key: str) -> str:
    # A key is named in errors and log lines: one holding a line break or an
    # invisible character is shown escaped, so it cannot forge or hide a line.
    return key if key.isprintable() else ascii(key)


def _kind(value: object) -> str:
    """The AMQP name of the type pamqp decoded `value` from."""
    return _AMQP_TYPE_NAMES.get(type(value), type(value).__name__)


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")
