"""What the edge remembers about accepted commands, for their status route.

A receipt says who submitted which command and when. Only the submitter can
read it back: anyone else gets the same answer as for an id that never existed.
Receipts live in memory, bounded by count (oldest first out) and by age.

TODO(exit condition: the edge runs as more than one replica): receipts are per
process, so a status read that lands on another replica answers 404; move them
to a shared store (or answer status from the services) before scaling out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from messaging.identity import Principal


@dataclass(frozen=True, slots=True)
class Receipt:
    """One accepted command: its id, its type, its submitter, when, and status."""

    command_id: str
    command: str
    subject: str
    tenant: str | None
    submitted_at: datetime
    status: str = "accepted"

    def belongs_to(self, principal: Principal) -> bool:
        return (self.subject, self.tenant) == (principal.subject, principal.tenant)


class Receipts:
    """Receipts of accepted commands, at most `max_entries`, each for `ttl` s."""

    def __init__(self, *, max_entries: int, ttl: float) -> None:
        self._max_entries = max_entries
        self._ttl = ttl
        self._entries: OrderedDict[str, tuple[float, Receipt]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, command_id: str, command: str, principal: Principal) -> Receipt:
        receipt = Receipt(
            command_id=command_id,
            command=command,
            subject=principal.subject,
            tenant=principal.tenant,
            submitted_at=datetime.now(UTC),
        )
        self._entries[command_id] = (time.monotonic(), receipt)
        self._entries.move_to_end(command_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return receipt

    def find(self, command_id: str, principal: Principal) -> Receipt | None:
        """The receipt, if it exists, is fresh, and belongs to `principal`."""
        entry = self._entries.get(command_id)
        if entry is None:
            return None
        recorded_at, receipt = entry
        if time.monotonic() - recorded_at > self._ttl:
            del self._entries[command_id]
            return None
        return receipt if receipt.belongs_to(principal) else None
