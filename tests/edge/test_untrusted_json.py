"""JSON nobody has vouched for: bad input is one kind of error, never a crash."""

from __future__ import annotations

import json

import pytest

from edge_api.untrusted_json import UntrustedJsonError, parse


@pytest.mark.parametrize(
    "text",
    [b"[" * 100_000, b'{"a":' * 100_000, "[" * 100_000],
    ids=["arrays-bytes", "objects-bytes", "arrays-str"],
)
def test_nesting_too_deep_for_the_parser_is_a_json_error(text: str | bytes) -> None:
    with pytest.raises(UntrustedJsonError) as caught:
        parse(text)

    assert caught.value.reason == "the JSON is nested too deeply"
    assert isinstance(caught.value, json.JSONDecodeError)


def test_a_key_given_twice_is_refused_at_any_depth() -> None:
    with pytest.raises(UntrustedJsonError) as top:
        parse(b'{"alg": "ES256", "alg": "none"}')
    with pytest.raises(UntrustedJsonError) as nested:
        parse(b'{"keys": [{"kid": "a", "kid": "b"}]}')

    assert top.value.reason == "the key 'alg' appears twice"
    assert nested.value.reason == "the key 'kid' appears twice"


@pytest.mark.parametrize("text", [b"{bad", b"", b"\xff\xfe\xfa", b"[1,]"])
def test_malformed_json_is_a_json_error(text: bytes) -> None:
    with pytest.raises(UntrustedJsonError):
        parse(text)


def test_ordinary_json_is_read_as_usual() -> None:
    assert parse(b'{"a": [1, 2.5, "x", null, true], "b": {}}') == {
        "a": [1, 2.5, "x", None, True],
        "b": {},
    }
