"""The notifications service: tells a user their plan changed, and who acted."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from contracts import PLAN_CHANGED, PlanChanged
from messaging.errors import Forbidden
from workers.context import ServiceContext
from workers.inbox import SqliteStore
from workers.service import Service

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    message_id  TEXT PRIMARY KEY,
    subject     TEXT NOT NULL,
    plan_id     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    change      TEXT NOT NULL,
    actors      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_subject ON notifications (subject);
"""


@dataclass(frozen=True)
class Notification:
    """What a user is told, with the chain of services that acted for them."""

    subject: str
    plan_id: str
    version: int
    change: str
    actors: tuple[str, ...]


class NotificationStore(SqliteStore):
    """Notifications, per user, in the order they were recorded."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)

    async def for_subject(self, subject: str) -> list[Notification]:
        rows = await self.query(
            "SELECT * FROM notifications WHERE subject = ? ORDER BY rowid", (subject,)
        )
        return [
            Notification(
                subject=row["subject"],
                plan_id=row["plan_id"],
                version=row["version"],
                change=row["change"],
                actors=tuple(row["actors"].split(" > ")),
            )
            for row in rows
        ]


def notifications_service(store: NotificationStore) -> Service:
    """Declare the notifications service over `store`."""
    notifications = Service("notifications")

    @notifications.handles(PLAN_CHANGED)
    async def plan_changed(ctx: ServiceContext, event: PlanChanged) -> None:
        principal = ctx.principal
        if event.owner != principal.subject:
            raise Forbidden(
                f"an event for {principal.subject!r} announces a change to the "
                f"plan of {event.owner!r}"
            )
        async with ctx.once(store) as tx:
            tx.execute(
                "INSERT INTO notifications VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    ctx.message_id,
                    principal.subject,
                    event.plan_id,
                    event.version,
                    event.change,
                    " > ".join(principal.actors),
                    datetime.now(UTC).isoformat(),
                ),
            )

    return notifications
