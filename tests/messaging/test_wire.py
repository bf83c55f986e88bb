"""The properties Baton writes itself decode, through pamqp, to what was meant."""

from __future__ import annotations

import random
import string
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pamqp import frame, header
from pamqp.commands import Basic
from pamqp.common import FieldTable

from messaging import headers as h
from messaging.identity import Principal, encode_principal
from messaging.wire import (
    MAX_SHORTSTR,
    OutgoingProperties,
    header_table,
    shortstr,
    timestamp_seconds,
)

NOW = 1_780_000_000


def _baton_properties(table: bytes) -> OutgoingProperties:
    return OutgoingProperties(
        table=table,
        message_id="m-1",
        correlation_id="c-1",
        message_type="plan.create",
        user_id="edge",
        timestamp=NOW,
    )


def _round_trip(properties: Basic.Properties) -> Basic.Properties:
    data = frame.marshal(header.ContentHeader(0, 12, properties), channel_id=1)
    _consumed, _channel, decoded = frame.unmarshal(data)
    assert isinstance(decoded, header.ContentHeader)
    return decoded.properties


def _text(rng: random.Random, longest: int) -> str:
    alphabet = string.ascii_letters + string.digits + ".-_:é→"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, longest)))


def _maybe(rng: random.Random, value: str) -> str | None:
    return value if rng.random() < 0.5 else None


@pytest.mark.parametrize("seed", range(40))
def test_outgoing_properties_decode_like_pamqps_own(seed: int) -> None:
    rng = random.Random(seed)
    table: FieldTable = {
        "baton-attempt": rng.randint(0, 100),
        "trace": _text(rng, 60),
        "flag": rng.random() < 0.5,
        "nested": {"list": [1, "two", Decimal("3.5")]},
    }
    fields: dict[str, Any] = {
        "message_id": _text(rng, 64),
        "correlation_id": _text(rng, 64),
        "message_type": _text(rng, 40),
        "user_id": _text(rng, 20),
        "reply_to": _maybe(rng, _text(rng, 80)),
        "expiration": _maybe(rng, str(rng.randint(0, 10**6))),
        "content_type": _maybe(rng, h.CONTENT_TYPE),
        "content_encoding": _maybe(rng, "gzip"),
    }
    ours = OutgoingProperties(table=header_table(None, table), timestamp=NOW, **fields)
    theirs = Basic.Properties(
        headers=table,
        delivery_mode=2,
        timestamp=datetime.fromtimestamp(NOW, UTC),
        **fields,
    )

    assert _round_trip(ours) == _round_trip(theirs)
    # Same fields, same lengths: only the order of table entries may differ.
    assert len(ours.marshal()) == len(theirs.marshal())


def test_a_principals_identity_headers_decode_to_the_principal() -> None:
    principal = Principal.user("alice", ["planner"], entered_by="edge", tenant="acme")
    properties = _baton_properties(header_table(principal, {h.ATTEMPT: 2}))

    decoded = _round_trip(properties)

    assert decoded.headers == {**encode_principal(principal), h.ATTEMPT: 2}
    assert decoded.delivery_mode == 2
    assert decoded.timestamp == datetime.fromtimestamp(NOW, UTC)


def test_extra_headers_cannot_overwrite_or_duplicate_the_identity() -> None:
    principal = Principal.user("alice", entered_by="edge")
    table = header_table(
        principal, {h.SUBJECT: "mallory", h.ROLES: ["admin"], "trace": "t"}
    )
    decoded = _round_trip(_baton_properties(table))

    assert decoded.headers == {**encode_principal(principal), "trace": "t"}
    assert table.count(h.SUBJECT.encode()) == 1


def test_without_a_principal_the_given_headers_travel_as_they_are() -> None:
    extra = {h.SUBJECT: "raw", "trace": "t"}

    decoded = _round_trip(_baton_properties(header_table(None, extra)))

    assert decoded.headers == extra
    assert header_table(None, None) == b""


def test_a_short_string_over_255_bytes_is_refused() -> None:
    assert shortstr("é" * 127) == bytes((254,)) + ("é" * 127).encode()
    with pytest.raises(ValueError, match="over the 255"):
        shortstr("x" * (MAX_SHORTSTR + 1))


def test_a_message_without_an_id_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="message id"):
        OutgoingProperties(
            table=b"",
            message_id="",
            correlation_id="c",
            message_type="t",
            user_id="u",
            timestamp=NOW,
        )


def test_a_naive_timestamp_counts_as_utc() -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5)
    aware = naive.replace(tzinfo=UTC)

    assert timestamp_seconds(naive, 0) == timestamp_seconds(aware, 0)
    assert timestamp_seconds(None, 7) == 7
