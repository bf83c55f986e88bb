"""The ids of the messages one delivery publishes: the same on every attempt.

A handler that is retried, or a message that is redelivered, runs again and
publishes again. If those publishes get the ids they got the first time, the
receivers' inboxes keep one copy of each. So an id is derived, never random:

- from the delivery (the service and the message id it is handling),
- the published message type,
- and either the ``key=`` the handler gave, or the SHA-256 of the body's bytes
  with the number of earlier publishes of the same type and the same bytes.

The id depends on what is published, not on when: two tasks a handler spawns
can publish in either order and each message keeps its id. Identical bodies of
one type are told apart by their count, and since they are identical, which
one is "first" does not matter. A body that differs between attempts (a
timestamp, a random value) gets a new id each attempt and would be handled
twice downstream; such a handler passes a ``key=`` that names the message
instead. A key may be used once per delivery and type.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from typing import Final

from workers.errors import PublishKeyReused

# Namespace of the ids of messages a handler publishes.
PUBLISHED_IDS: Final = uuid.UUID("6f1f3c4e-7b1a-5c55-9d0e-2a4b8c9e1d01")


class PublishIds:
    """Derives the id of each message published while handling one delivery."""

    def __init__(self, service: str, delivery_id: str) -> None:
        self._delivery = f"{service}/{delivery_id}"
        self._seen: Counter[tuple[str, str]] = Counter()

    def next(self, message_type: str, body: bytes, key: str | None = None) -> str:
        """The id of a message of `message_type` with `body` (or named by `key`)."""
        if key is not None:
            slot = (message_type, f"key:{key}")
            if self._seen[slot]:
                raise PublishKeyReused(
                    f"{self._delivery} published {message_type} with key {key!r} "
                    "twice: a key names one message"
                )
            name = slot[1]
        else:
            slot = (message_type, hashlib.sha256(body).hexdigest())
            name = f"{slot[1]}/{self._seen[slot]}"
        self._seen[slot] += 1
        seed = f"{self._delivery}/{message_type}/{name}"
        return uuid.uuid5(PUBLISHED_IDS, seed).hex
