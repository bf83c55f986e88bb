"""JSON from someone we do not trust yet: a token's header, a key set, a request body.

Python's parser recurses once per nested array or object, so ``[[[[...`` a
thousand deep raises :class:`RecursionError`, which is not a ``ValueError``
and would escape every handler written for bad JSON as a 500. It also keeps
the last of two equal keys, so ``{"alg": "ES256", "alg": "none"}`` would mean
whatever the last reader decides. :func:`parse` turns both into the one error
callers already expect for bad JSON.
"""

from __future__ import annotations

import json
from typing import Any


class UntrustedJsonError(json.JSONDecodeError):
    """The text is not JSON we accept: malformed, nested too deep, or ambiguous."""

    def __init__(self, reason: str, text: str | bytes, position: int = 0) -> None:
        document = text if isinstance(text, str) else text.decode("utf-8", "replace")
        super().__init__(reason, document, position)
        self.reason = reason


def parse(text: str | bytes) -> Any:
    """The value `text` holds, refusing deep nesting and repeated keys."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise UntrustedJsonError("the JSON is nested too deeply", text) from None
    except _RepeatedKey as exc:
        raise UntrustedJsonError(f"the key {exc.key!r} appears twice", text) from None
    except UnicodeDecodeError:
        raise UntrustedJsonError("the JSON is not valid UTF-8", text) from None
    except json.JSONDecodeError as exc:
        raise UntrustedJsonError(exc.msg, text, exc.pos) from None


class _RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    table = dict(pairs)
    if len(table) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return table
