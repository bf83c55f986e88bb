"""The replay cache: which deliveries a consumer admitted, and which it settled.

A signed message is valid until its assertion expires; within that time the same
bytes could be published again. The verifier admits each delivery once and
remembers it until it expires (:class:`SeenMessages`); the consumer says when it
settled one, after which the same delivery is a replay whatever the broker's
``redelivered`` flag says.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

ReplayKey = tuple[str, str, int]
Copy = tuple[str, int]


@dataclass(slots=True)
class _Seen:
    expires_at: float
    copy: Copy
    settled: bool = False


class SeenMessages:
    """Deliveries admitted and whether they were settled, until their expiry.

    A delivery is known by (publisher, message id, attempt): ids are chosen by
    their publisher, so one publisher's ids never shadow another's, and each of
    our own retries is a new attempt of the same message. Once a delivery was
    settled (handled, or moved on to retry, dead or quarantine) the same key is a
    replay, however the broker flags it; before that, only the broker's own
    redelivery (``redelivered``, after a lost channel) may repeat it. Only the
    copy admitted last settles a key: a forged copy refused under the same id
    cannot settle the real one.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._seen: OrderedDict[ReplayKey, _Seen] = OrderedDict()
        self._capacity = capacity

    def __len__(self) -> int:
        return len(self._seen)

    def admit(
        self,
        key: ReplayKey,
        expires_at: float,
        now: float,
        *,
        redelivered: bool,
        copy: Copy = ("", 0),
    ) -> bool:
        """Record `key`; False when it is a replay of a delivery not yet expired."""
        self._forget_expired(now)
        seen = self._seen.get(key)
        if seen is not None and seen.expires_at >= now:
            if not redelivered or seen.settled:
                return False
            seen.copy = copy
            return True
        self._seen[key] = _Seen(expires_at, copy)
        self._seen.move_to_end(key)
        while len(self._seen) > self._capacity:
            # TODO(until a shared store backs this cache): under a flood the
            # oldest ids are forgotten early and could be replayed once.
            self._seen.popitem(last=False)
        return True

    def settle(self, key: ReplayKey, copy: Copy = ("", 0)) -> None:
        """Remember that `copy` of `key` was settled: from now on it is a replay."""
        seen = self._seen.get(key)
        if seen is not None and seen.copy == copy:
            seen.settled = True

    def _forget_expired(self, now: float) -> None:
        while self._seen:
            key, seen = next(iter(self._seen.items()))
            if seen.expires_at >= now:
                return
            del self._seen[key]
