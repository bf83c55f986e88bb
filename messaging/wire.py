"""A published message's properties, encoded once instead of field by field.

pamqp encodes ``Basic.Properties`` by walking all fourteen fields and dispatching
on each one's AMQP type, and it encodes a header table entry by entry. Baton
sends the same identity headers for every message of a principal, so their table
entries are encoded once and kept (:func:`identity_entries`); the rest of the
properties are laid out directly by :class:`OutgoingProperties`, in the order and
with the flags of AMQP 0-9-1's ``basic`` class. The bytes are the same as
pamqp's up to the order of table entries (tests/messaging/test_wire.py compares
them), and pamqp still decodes everything on the way in.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from pamqp import encode
from pamqp.commands import Basic

from messaging import headers as h
from messaging.identity import Principal, encode_principal

PERSISTENT: Final = 2
MAX_SHORTSTR: Final = 255

_FLAG_CONTENT_TYPE: Final = 0x8000
_FLAG_CONTENT_ENCODING: Final = 0x4000
_FLAG_HEADERS: Final = 0x2000
_FLAG_DELIVERY_MODE: Final = 0x1000
_FLAG_CORRELATION_ID: Final = 0x0400
_FLAG_REPLY_TO: Final = 0x0200
_FLAG_EXPIRATION: Final = 0x0100
_FLAG_MESSAGE_ID: Final = 0x0080
_FLAG_TIMESTAMP: Final = 0x0040
_FLAG_TYPE: Final = 0x0020
_FLAG_USER_ID: Final = 0x0010

_TABLE_SIZE = struct.Struct(">I")
_FLAGS = struct.Struct(">H")
_TIMESTAMP = struct.Struct(">Q")


class OutgoingProperties(Basic.Properties):
    """``Basic.Properties`` of a message Baton publishes, with a faster marshal.

    The attributes are the ordinary pamqp ones (aiormq reads ``message_id`` to
    match confirms); only :meth:`marshal` differs: the header table arrives
    already encoded and the other fields are written without per-field dispatch.
    Fields Baton never sets (priority, app id, cluster id) stay empty.
    """

    def __init__(
        self,
        *,
        table: bytes,
        message_id: str,
        correlation_id: str,
        message_type: str,
        user_id: str,
        timestamp: int,
        reply_to: str | None = None,
        expiration: str | None = None,
        content_type: str | None = h.CONTENT_TYPE,
        content_encoding: str | None = None,
    ) -> None:
        # pamqp's own __init__ also validates cluster_id, which Baton never sets;
        # setting the slots directly keeps this object cheap to build.
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.headers = None
        self.delivery_mode = PERSISTENT
        self.priority = None
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.expiration = expiration
        self.message_id = message_id
        self.timestamp = None
        self.message_type = message_type
        self.user_id = user_id
        self.app_id = None
        self.cluster_id = ""
        if not message_id:
            raise ValueError("every message Baton publishes has a message id")
        self._table = table
        self._seconds = timestamp
        self._id = message_id

    def marshal(self) -> bytes:
        flags = _FLAG_DELIVERY_MODE | _FLAG_MESSAGE_ID | _FLAG_TIMESTAMP
        parts: list[bytes] = []
        if self.content_type:
            flags |= _FLAG_CONTENT_TYPE
            parts.append(shortstr(self.content_type))
        if self.content_encoding:
            flags |= _FLAG_CONTENT_ENCODING
            parts.append(shortstr(self.content_encoding))
        if self._table:
            flags |= _FLAG_HEADERS
            parts.append(_TABLE_SIZE.pack(len(self._table)))
            parts.append(self._table)
        parts.append(b"\x02")  # delivery mode: persistent
        flags = self._optional(flags, parts)
        return _FLAGS.pack(flags) + b"".join(parts)

    def _optional(self, flags: int, parts: list[bytes]) -> int:
        # In the order AMQP lays the fields out after delivery mode and priority.
        if self.correlation_id:
            flags |= _FLAG_CORRELATION_ID
            parts.append(shortstr(self.correlation_id))
        if self.reply_to:
            flags |= _FLAG_REPLY_TO
            parts.append(shortstr(self.reply_to))
        if self.expiration:
            flags |= _FLAG_EXPIRATION
            parts.append(shortstr(self.expiration))
        parts.append(shortstr(self._id))
        parts.append(_TIMESTAMP.pack(self._seconds))
        if self.message_type:
            flags |= _FLAG_TYPE
            parts.append(shortstr(self.message_type))
        if self.user_id:
            flags |= _FLAG_USER_ID
            parts.append(shortstr(self.user_id))
        return flags


def shortstr(value: str) -> bytes:
    """An AMQP short string: one length byte, then at most 255 bytes of UTF-8."""
    data = value.encode()
    if len(data) > MAX_SHORTSTR:
        raise ValueError(
            f"{value[:40]!r}... is {len(data)} bytes, over the {MAX_SHORTSTR} an "
            "AMQP short string holds"
        )
    return bytes((len(data),)) + data


def table_entries(headers: Mapping[str, Any]) -> bytes:
    """The entries of an AMQP field table, without the table's length prefix."""
    if not headers:
        return b""
    return encode.field_table(dict(headers))[_TABLE_SIZE.size :]


def timestamp_seconds(moment: datetime | None, default: int) -> int:
    """An AMQP timestamp (whole seconds since the epoch) for `moment`.

    A naive datetime is taken as UTC, as pamqp takes it.
    """
    if moment is None:
        return default
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def header_table(principal: Principal | None, extra: Mapping[str, Any] | None) -> bytes:
    """The entries of a whole header table: the principal's identity, then `extra`.

    A key of `extra` that is an identity header is left out: nothing a caller
    adds may overwrite, or sit beside, the principal's own headers.
    """
    identity = b"" if principal is None else identity_entries(principal)
    if not extra:
        return identity
    if principal is not None:
        extra = {
            key: value for key, value in extra.items() if key not in h.IDENTITY_HEADERS
        }
    return identity + table_entries(extra)


# A principal is immutable, so its encoding never changes; a worker sees few
# distinct principals at a time, an edge's burst of new users costs one
# encoding each.
@functools.lru_cache(maxsize=4096)
def identity_entries(principal: Principal) -> bytes:
    """The encoded identity headers of `principal`, kept for its next messages."""
    return table_entries(encode_principal(principal))
