"""The users service: each user's profile and stated intent, for that user only."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from contracts import (
    PROFILE_GET,
    PROFILE_UPDATE_INTENT,
    ProfileGet,
    ProfileUpdateIntent,
    ProfileView,
)
from workers.context import ServiceContext
from workers.inbox import SqliteStore
from workers.service import Service

SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    subject     TEXT PRIMARY KEY,
    intent      TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
"""


class ProfileStore(SqliteStore):
    """Profiles, keyed by the user's subject."""

    # TODO(multi-tenant deployments): key profiles by (tenant, subject) once a
    # tenant can have subjects that collide with another tenant's.

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)

    async def profile(self, subject: str) -> ProfileView:
        """The user's profile; a user who stated nothing yet has an empty intent."""
        rows = await self.query(
            "SELECT intent, updated_at FROM profiles WHERE subject = ?", (subject,)
        )
        if not rows:
            return ProfileView(subject=subject, intent="", updated_at=None)
        updated_at = datetime.fromisoformat(rows[0]["updated_at"])
        return ProfileView(
            subject=subject, intent=rows[0]["intent"], updated_at=updated_at
        )


def users_service(store: ProfileStore) -> Service:
    """Declare the users service over `store`."""
    users = Service("users")

    @users.handles(PROFILE_UPDATE_INTENT)
    async def update_intent(ctx: ServiceContext, cmd: ProfileUpdateIntent) -> None:
        async with ctx.once(store) as tx:
            tx.execute(
                "INSERT INTO profiles (subject, intent, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (subject) DO UPDATE SET "
                "intent = excluded.intent, updated_at = excluded.updated_at",
                (ctx.principal.subject, cmd.intent, datetime.now(UTC).isoformat()),
            )

    @users.handles(PROFILE_GET)
    async def get(ctx: ServiceContext, request: ProfileGet) -> ProfileView:
        # ProfileGet names nobody: the profile is always the acting user's.
        return await store.profile(ctx.principal.subject)

    return users
