"""The core service: plans, built from the intent the users service holds.

Creating or refreshing a plan asks the users service for the acting user's
intent (on that user's behalf), stores the plan and announces ``plan.changed``.
Pruning stale plans is maintenance: only a service principal with the
``maintenance`` role may ask for it.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from contracts import (
    PLAN_CHANGED,
    PLAN_CREATE,
    PLAN_GET,
    PLAN_PRUNE,
    PLAN_REFRESH,
    PROFILE_GET,
    PlanChanged,
    PlanCreate,
    PlanGet,
    PlanPrune,
    PlanRefresh,
    PlanView,
    ProfileGet,
    ProfileView,
)
from messaging.errors import Forbidden
from messaging.identity import PrincipalKind
from workers.context import ServiceContext
from workers.errors import NotFound
from workers.inbox import SqliteStore
from workers.service import Service

PLAN_IDS: Final = uuid.UUID("3c9d2b8a-52f4-5e0b-8d7a-1f6e4c3b2a90")
PLAN_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_\-]{1,64}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS plans (
    plan_id       TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    goal          TEXT NOT NULL,
    horizon_days  INTEGER NOT NULL,
    intent        TEXT NOT NULL,
    version       INTEGER NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS plans_updated_at ON plans (updated_at);
"""


class PlanStore(SqliteStore):
    """Plans, each owned by one user."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)

    async def plan(self, plan_id: str) -> PlanView | None:
        rows = await self.query("SELECT * FROM plans WHERE plan_id = ?", (plan_id,))
        if not rows:
            return None
        return PlanView(
            plan_id=rows[0]["plan_id"],
            owner=rows[0]["owner"],
            goal=rows[0]["goal"],
            horizon_days=rows[0]["horizon_days"],
            intent=rows[0]["intent"],
            version=rows[0]["version"],
            updated_at=datetime.fromisoformat(rows[0]["updated_at"]),
        )

    async def owned(self, plan_id: str, subject: str) -> PlanView:
        """The plan, if `subject` owns it; refused otherwise."""
        plan = await self.plan(plan_id)
        if plan is None:
            raise NotFound(f"there is no plan {plan_id!r}")
        if plan.owner != subject:
            raise Forbidden(f"{subject!r} does not own plan {plan_id!r}")
        return plan


def plan_id_for(message_id: str) -> str:
    """A plan's id is the id of the command that created it, so clients know it."""
    if PLAN_ID_PATTERN.fullmatch(message_id):
        return message_id
    return uuid.uuid5(PLAN_IDS, message_id).hex


def core_service(store: PlanStore) -> Service:
    """Declare the core service over `store`."""
    core = Service("core")
    core.emits(PLAN_CHANGED)
    core.requests(PROFILE_GET)

    async def intent_of_user(ctx: ServiceContext) -> str:
        profile = await ctx.request(PROFILE_GET, ProfileGet(), ProfileView)
        return profile.intent

    @core.handles(PLAN_CREATE)
    async def create(ctx: ServiceContext, cmd: PlanCreate) -> None:
        intent = await intent_of_user(ctx)
        owner, plan_id = ctx.principal.subject, plan_id_for(ctx.message_id)
        async with ctx.once(store) as tx:
            tx.execute(
                "INSERT INTO plans VALUES (?, ?, ?, ?, ?, 1, ?)",
                (plan_id, owner, cmd.goal, cmd.horizon_days, intent, _now()),
            )
            changed = PlanChanged(
                plan_id=plan_id, owner=owner, version=1, change="created"
            )
            await ctx.publish_event(PLAN_CHANGED, changed)

    @core.handles(PLAN_REFRESH)
    async def refresh(ctx: ServiceContext, cmd: PlanRefresh) -> None:
        owner = ctx.principal.subject
        await store.owned(cmd.plan_id, owner)
        intent = await intent_of_user(ctx)
        async with ctx.once(store) as tx:
            (version,) = tx.execute(
                "UPDATE plans SET version = version + 1, intent = ?, updated_at = ? "
                "WHERE plan_id = ? AND owner = ? RETURNING version",
                (intent, _now(), cmd.plan_id, owner),
            ).fetchone() or (None,)
            if version is None:
                raise NotFound(f"plan {cmd.plan_id!r} was removed meanwhile")
            changed = PlanChanged(
                plan_id=cmd.plan_id, owner=owner, version=version, change="refreshed"
            )
            await ctx.publish_event(PLAN_CHANGED, changed)

    @core.handles(PLAN_GET)
    async def get(ctx: ServiceContext, request: PlanGet) -> PlanView:
        return await store.owned(request.plan_id, ctx.principal.subject)

    @core.handles(PLAN_PRUNE, kinds=[PrincipalKind.SERVICE])
    async def prune(ctx: ServiceContext, cmd: PlanPrune) -> None:
        cutoff = datetime.now(UTC) - timedelta(days=cmd.older_than_days)
        async with ctx.once(store) as tx:
            tx.execute("DELETE FROM plans WHERE updated_at < ?", (cutoff.isoformat(),))

    return core


def _now() -> str:
    return datetime.now(UTC).isoformat()
