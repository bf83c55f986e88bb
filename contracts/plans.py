"""Plans: what the core service creates and refreshes for a user."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from contracts.catalogue import Contract, Strict
from messaging.topology import Route

PlanId = str


class PlanCreate(Strict):
    goal: str = Field(min_length=1, max_length=200)
    horizon_days: int = Field(ge=1, le=365)


class PlanRefresh(Strict):
    plan_id: PlanId = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")


class PlanGet(Strict):
    plan_id: PlanId = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")


class PlanView(Strict):
    plan_id: PlanId
    owner: str
    goal: str
    horizon_days: int
    intent: str
    version: int
    updated_at: datetime


class PlanChanged(Strict):
    plan_id: PlanId
    owner: str
    version: int
    change: Literal["created", "refreshed"]


class PlanScheduleRefresh(Strict):
    """Refresh a plan every `every_minutes` on the user's behalf, until cancelled."""

    plan_id: PlanId = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    every_minutes: int = Field(ge=1, le=7 * 24 * 60)


class PlanCancelRefresh(Strict):
    """Stop the standing refresh of a plan that you set up."""

    plan_id: PlanId = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")


class PlanPrune(Strict):
    """Maintenance: forget plans nobody refreshed for `older_than_days`."""

    older_than_days: int = Field(ge=1, le=3650)


PLAN_CREATE = Contract(
    "plan.create", PlanCreate, roles=frozenset({"planner"}), summary="Create a plan"
)
PLAN_REFRESH = Contract(
    "plan.refresh",
    PlanRefresh,
    roles=frozenset({"planner"}),
    summary="Rebuild a plan from the user's current intent",
)
PLAN_GET = Contract("plan.get", PlanGet, reply=PlanView, summary="Read one plan")
PLAN_CHANGED = Contract(
    "plan.changed", PlanChanged, route=Route.EVENT, summary="A plan was (re)built"
)
PLAN_PRUNE = Contract(
    "plan.prune",
    PlanPrune,
    roles=frozenset({"maintenance"}),
    summary="Forget stale plans (service principals only)",
    http=False,
)

PLAN_SCHEDULE_REFRESH = Contract(
    "plan.schedule_refresh",
    PlanScheduleRefresh,
    roles=frozenset({"planner"}),
    summary="Have the scheduler refresh a plan periodically on your behalf",
)

# No role needed: it only ever removes the sender's own standing refresh, and a
# user who lost "planner" must still be able to stop work done on their behalf.
PLAN_CANCEL_REFRESH = Contract(
    "plan.cancel_refresh",
    PlanCancelRefresh,
    summary="Stop the periodic refresh of a plan you scheduled",
)

CONTRACTS = (
    PLAN_CREATE,
    PLAN_REFRESH,
    PLAN_GET,
    PLAN_CHANGED,
    PLAN_PRUNE,
    PLAN_SCHEDULE_REFRESH,
    PLAN_CANCEL_REFRESH,
)
