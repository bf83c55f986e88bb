"""The inbox pattern: a message's side effect happens once, however often it comes.

At-least-once delivery means a handler can see the same message twice: after a
redelivery, a retry, or because two scheduler replicas fired the same tick under
the same message id. An idempotent handler writes its side effect and the record
"this consumer handled this message id" in one transaction (the id is prefixed
with its publisher when publishers are checked: see ``ServiceContext.once``). A
second delivery finds the record and is skipped; a crash before the commit leaves
neither, so the redelivery does the work.

:class:`Inbox` is the interface a server database could implement later;
:class:`SqliteStore` is the default, one SQLite file per service that holds the
inbox beside the service's own tables.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from workers.errors import AlreadyHandled

logger = logging.getLogger(__name__)

T_co = TypeVar("T_co", covariant=True)

INBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    consumer    TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    handled_at  TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
"""


class Inbox(Protocol[T_co]):
    """Runs a side effect at most once per (consumer, message id)."""

    def once(self, consumer: str, message_id: str) -> AbstractAsyncContextManager[T_co]:
        """A transaction that records `message_id` as handled when it commits.

        Entering raises :class:`AlreadyHandled` when the id is already recorded.
        An exception inside the block rolls back the side effect and the record.
        """
        ...


class SqliteStore:
    """A service's SQLite database, with the inbox table beside its own tables.

    One connection, used by one transaction at a time: SQLite has a single
    writer anyway, and a lock keeps a transaction that awaits (a publish inside
    the block) from interleaving with another delivery's. The blocking steps,
    BEGIN (which may wait for another process) and COMMIT (which syncs to disk),
    run in a thread; the statements in between are short and run inline.
    """

    def __init__(self, path: Path, schema: str = "") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(INBOX_SCHEMA + schema)
        self._lock = asyncio.Lock()

    def once(
        self, consumer: str, message_id: str
    ) -> AbstractAsyncContextManager[sqlite3.Connection]:
        return self._transaction((consumer, message_id))

    def write(self) -> AbstractAsyncContextManager[sqlite3.Connection]:
        """A plain transaction, for writes that are not a message's side effect."""
        return self._transaction(None)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of a read, never inside another delivery's open transaction."""
        async with self._lock:
            return self._db.execute(sql, params).fetchall()

    async def handled(self, consumer: str, message_id: str) -> bool:
        rows = await self.query(
            "SELECT 1 FROM inbox WHERE consumer = ? AND message_id = ?",
            (consumer, message_id),
        )
        return bool(rows)

    def close(self) -> None:
        self._db.close()

    @asynccontextmanager
    async def _transaction(
        self, record: tuple[str, str] | None
    ) -> AsyncIterator[sqlite3.Connection]:
        # TODO(inbox rows pile up): delete rows older than the longest redelivery
        # window once a retention setting exists; until then the table only grows.
        async with self._lock:
            try:
                await self._to_the_end("BEGIN IMMEDIATE")
                if record is not None:
                    self._claim(*record)
                yield self._db
                await self._to_the_end("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    async def _to_the_end(self, statement: str) -> None:
        """Run a statement that may block in a thread, and let it finish.

        A handler's deadline cancels the coroutine, not the thread: waiting for
        the thread's outcome keeps the connection from being left inside a
        transaction nobody will end (BEGIN) or rolled back under a running
        COMMIT.
        """
        running = asyncio.ensure_future(asyncio.to_thread(self._db.execute, statement))
        try:
            await asyncio.shield(running)
        except asyncio.CancelledError:
            await asyncio.wait([running])
            raise

    def _claim(self, consumer: str, message_id: str) -> None:
        inserted = self._db.execute(
            "INSERT INTO inbox (consumer, message_id, handled_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (consumer, message_id, datetime.now(UTC).isoformat()),
        ).rowcount
        if inserted == 0:
            raise AlreadyHandled(consumer, message_id)
