"""Reading the test vectors: typed JSON header sets, as AMQP would carry them.

A vector's headers are a list of ``[key, {"type": ..., "value": ...}]`` pairs
(``docs/protocol.md`` describes the format). They are turned into the exact
bytes of an AMQP field table, type tags included, and read back with pamqp's
own value decoder, so a test sees what aio-pika would hand a consumer. The top
level is read as pairs, keeping duplicate keys that a dict would merge.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pamqp import decode

from messaging.identity import Principal

VECTORS = Path(__file__).parent

TypedValue = dict[str, Any]
TypedPairs = list[tuple[str, TypedValue]]


@dataclass(frozen=True)
class Vector:
    """One header set and what decoding it must give: a principal or an error."""

    file: str
    name: str
    description: str
    headers: TypedPairs
    principal: dict[str, Any] | None
    error: dict[str, str] | None

    @property
    def id(self) -> str:
        return f"{self.file}:{self.name}"

    def has_duplicate_keys(self) -> bool:
        keys = [key for key, _ in self.headers]
        return len(set(keys)) != len(keys)


def load(suite: str) -> list[Vector]:
    """Every vector of every JSON file under ``tests/vectors/<suite>/``."""
    return [vector for path in files(suite) for vector in _read(path)]


def files(suite: str) -> list[Path]:
    return sorted((VECTORS / suite).glob("*.json"))


def _read(path: Path) -> Iterator[Vector]:
    document = json.loads(path.read_text(encoding="utf-8"))
    for item in document["vectors"]:
        expect = item["expect"]
        yield Vector(
            file=path.name,
            name=item["name"],
            description=item["description"],
            headers=[(key, value) for key, value in item["headers"]],
            principal=expect.get("principal"),
            error=expect.get("error"),
        )


def encode_table(pairs: TypedPairs) -> bytes:
    """The AMQP field table for `pairs`, each value with its own type tag."""
    body = b"".join(_short_string(key) + encode_value(value) for key, value in pairs)
    return struct.pack(">I", len(body)) + body


def encode_value(typed: TypedValue) -> bytes:
    """One tagged table value (the AMQP 0-9-1 field types RabbitMQ accepts)."""
    kind = typed["type"]
    expected = _JSON_TYPES.get(kind)
    if expected is not None and "value" in typed:
        value = typed["value"]
        # bool is an int in Python: insist on the exact JSON type, so that a
        # vector cannot say "bool" and carry 1, or "int" and carry true.
        if type(value) not in expected:
            raise ValueError(f"{kind} vector value has the wrong JSON type: {value!r}")
    return _ENCODERS[kind](typed)


def decode_pairs(table: bytes) -> list[tuple[str, Any]]:
    """The top level of a field table as pairs; values as pamqp decodes them."""
    (length,) = struct.unpack_from(">I", table)
    offset, end = 4, 4 + length
    pairs: list[tuple[str, Any]] = []
    while offset < end:
        key_length = table[offset]
        key = table[offset + 1 : offset + 1 + key_length].decode("utf-8")
        offset += 1 + key_length
        consumed, value = decode.embedded_value(table[offset:end])
        offset += consumed
        pairs.append((key, value))
    return pairs


def decode_dict(table: bytes) -> dict[str, Any]:
    """The table as aio-pika hands it to a consumer: pamqp's dict."""
    return decode.field_table(table)[1]


def principal_as_json(principal: Principal) -> dict[str, Any]:
    """A principal in the vectors' JSON shape, to compare with an expectation."""
    return {
        "subject": principal.subject,
        "kind": principal.kind.value,
        "roles": sorted(principal.roles),
        "origin": principal.origin.value,
        "internal": principal.internal,
        "actors": list(principal.actors),
        "tenant": principal.tenant,
    }


def _short_string(key: str) -> bytes:
    raw = key.encode("utf-8")
    return struct.pack(">B", len(raw)) + raw


def _long_string(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def _longstr(typed: TypedValue) -> bytes:
    raw = bytes.fromhex(typed["hex"]) if "hex" in typed else typed["value"].encode()
    return b"S" + _long_string(raw)


def _integer(typed: TypedValue) -> bytes:
    value = typed["value"]
    if "tag" in typed:
        pinned: str = typed["tag"]
        return pinned.encode() + struct.pack(_INTEGER_TAGS[pinned], value)
    for tag, fmt, low, high in _INTEGER_WIDTHS:
        if low <= value <= high:
            return tag + struct.pack(fmt, value)
    raise ValueError(f"{value} does not fit a signed 64-bit integer")


def _decimal(typed: TypedValue) -> bytes:
    sign, digits, exponent = Decimal(typed["value"]).as_tuple()
    assert isinstance(exponent, int)
    unscaled = int("".join(map(str, digits))) * (-1 if sign else 1)
    if exponent > 0:
        unscaled, exponent = unscaled * 10**exponent, 0
    return b"D" + struct.pack(">Bi", -exponent, unscaled)


def _table(typed: TypedValue) -> bytes:
    pairs = [(key, value) for key, value in typed["value"]]
    return b"F" + encode_table(pairs)


def _array(typed: TypedValue) -> bytes:
    body = b"".join(encode_value(item) for item in typed["value"])
    return b"A" + struct.pack(">I", len(body)) + body


# Smallest first, the same choice pamqp makes when it encodes a Python int.
_INTEGER_WIDTHS = (
    (b"b", ">b", -(2**7), 2**7 - 1),
    (b"s", ">h", -(2**15), 2**15 - 1),
    (b"I", ">i", -(2**31), 2**31 - 1),
    (b"l", ">q", -(2**63), 2**63 - 1),
)

# Every integer tag RabbitMQ accepts, for a vector that pins one with "tag".
_INTEGER_TAGS = {
    "b": ">b",
    "B": ">B",
    "s": ">h",
    "u": ">H",
    "I": ">i",
    "i": ">I",
    "l": ">q",
}

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "longstr": (str,),
    "bool": (bool,),
    "int": (int,),
    "float": (float, int),
    "decimal": (str,),
    "timestamp": (int,),
    "table": (list,),
    "array": (list,),
    "void": (type(None),),
}

_ENCODERS: dict[str, Callable[[TypedValue], bytes]] = {
    "longstr": _longstr,
    "bytes": lambda typed: b"x" + _long_string(bytes.fromhex(typed["hex"])),
    "bool": lambda typed: b"t" + struct.pack(">?", typed["value"]),
    "int": _integer,
    "float": lambda typed: b"d" + struct.pack(">d", typed["value"]),
    "decimal": _decimal,
    "timestamp": lambda typed: b"T" + struct.pack(">Q", typed["value"]),
    "table": _table,
    "array": _array,
    "void": lambda typed: b"V",
}
