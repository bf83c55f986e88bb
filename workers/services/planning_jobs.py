"""The scheduler's part in the reference system: standing refreshes and pruning.

A user asks for a standing refresh (``plan.schedule_refresh``); the scheduler
keeps it and, on every tick, sends ``plan.refresh`` on that user's behalf with
the roles the user held when they asked, never more, until that user cancels it
(``plan.cancel_refresh``; nobody else can). Pruning stale plans runs
as the scheduler's own service principal with the ``maintenance`` role.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from contracts import (
    PLAN_CANCEL_REFRESH,
    PLAN_GET,
    PLAN_PRUNE,
    PLAN_REFRESH,
    PLAN_SCHEDULE_REFRESH,
    PlanCancelRefresh,
    PlanGet,
    PlanPrune,
    PlanRefresh,
    PlanScheduleRefresh,
    PlanView,
)
from messaging.errors import Forbidden, IdentityError
from workers.context import ServiceContext
from workers.errors import NotFound, ScheduleError
from workers.schedule import SKIP, Cron, Every, catch_up
from workers.scheduler import Job, Scheduler, SchedulerStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS standing_refresh (
    subject        TEXT NOT NULL,
    plan_id        TEXT NOT NULL,
    roles          TEXT NOT NULL,
    tenant         TEXT,
    every_minutes  INTEGER NOT NULL,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (subject, plan_id)
);
"""

logger = logging.getLogger(__name__)

PRUNE_AT = "17 3 * * *"
PRUNE_AFTER_DAYS = 90


def open_scheduler_store(path: Path) -> SchedulerStore:
    """The scheduler's database, with the table of standing refreshes."""
    return SchedulerStore(path, SCHEMA)


def add_planning_jobs(
    scheduler: Scheduler, *, min_minutes: int = 1, prune_at: str = PRUNE_AT
) -> None:
    """Teach `scheduler` the reference system's jobs.

    `min_minutes` is the shortest interval a user's standing refresh may have:
    a faster one is kept at this interval.
    """
    store = scheduler.store
    service = scheduler.service
    service.emits(PLAN_REFRESH)
    service.requests(PLAN_GET)

    @service.handles(PLAN_SCHEDULE_REFRESH)
    async def register(ctx: ServiceContext, cmd: PlanScheduleRefresh) -> None:
        principal = ctx.principal
        await _check_plan(ctx, cmd.plan_id)
        async with ctx.once(store) as tx:
            tx.execute(
                "INSERT INTO standing_refresh VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (subject, plan_id) DO UPDATE SET "
                "roles = excluded.roles, tenant = excluded.tenant, "
                "every_minutes = excluded.every_minutes",
                (
                    principal.subject,
                    cmd.plan_id,
                    json.dumps(sorted(principal.roles)),
                    principal.tenant,
                    max(cmd.every_minutes, min_minutes),
                    datetime.now(UTC).isoformat(),
                ),
            )

    @service.handles(PLAN_CANCEL_REFRESH)
    async def cancel(ctx: ServiceContext, cmd: PlanCancelRefresh) -> None:
        subject = ctx.principal.subject
        async with ctx.once(store) as tx:
            removed = tx.execute(
                "DELETE FROM standing_refresh WHERE subject = ? AND plan_id = ?",
                (subject, cmd.plan_id),
            ).rowcount
            if not removed:
                # Raised inside the transaction, so the refusal is not
                # recorded as handled and a replay is refused again.
                raise _not_cancellable(tx, subject, cmd.plan_id)

    # TODO(plans can be deleted): drop a standing refresh whose plan core no
    # longer has; until then each tick of it is dead-lettered by core as NotFound.
    async def standing_jobs() -> list[Job]:
        rows = await store.query("SELECT * FROM standing_refresh ORDER BY rowid")
        jobs: list[Job] = []
        for row in rows:
            try:
                jobs.append(_standing_job(scheduler, row))
            except (ValueError, TypeError, IdentityError, ScheduleError) as exc:
                # A row no job can be built from (edited by hand, written by an
                # older version) must not hold back every other user's refresh.
                logger.error(
                    "skipped the standing refresh of %r for %r: %s",
                    row["plan_id"],
                    row["subject"],
                    exc,
                )
        return jobs

    scheduler.add_source(standing_jobs)
    scheduler.add(
        Job(
            name="prune-stale-plans",
            schedule=Cron(prune_at),
            principal=scheduler.as_itself(["maintenance"]),
            contract=PLAN_PRUNE,
            payload=PlanPrune(older_than_days=PRUNE_AFTER_DAYS),
            missed=catch_up(1),
        )
    )


def _not_cancellable(
    db: sqlite3.Connection, subject: str, plan_id: str
) -> Forbidden | NotFound:
    held = db.execute(
        "SELECT 1 FROM standing_refresh WHERE plan_id = ?", (plan_id,)
    ).fetchone()
    if held:
        return Forbidden(
            f"{subject!r} may not cancel the standing refresh of plan {plan_id!r}: "
            "another user set it up"
        )
    return NotFound(f"{subject!r} has no standing refresh of plan {plan_id!r}")


def _standing_job(scheduler: Scheduler, row: sqlite3.Row) -> Job:
    return Job(
        name=f"refresh/{row['subject']}/{row['plan_id']}",
        schedule=Every(timedelta(minutes=row["every_minutes"])),
        principal=scheduler.for_user(
            row["subject"], json.loads(row["roles"]), row["tenant"]
        ),
        contract=PLAN_REFRESH,
        payload=PlanRefresh(plan_id=row["plan_id"]),
        missed=SKIP,
    )


async def _check_plan(ctx: ServiceContext, plan_id: str) -> None:
    """Refuse a standing refresh of a plan the user cannot read: core decides.

    Core's answer comes back typed: its Forbidden quarantines this command as
    well (the same user asked), its NotFound dead-letters it.
    """
    await ctx.request(PLAN_GET, PlanGet(plan_id=plan_id), PlanView)
