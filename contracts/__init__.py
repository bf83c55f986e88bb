"""The messages Baton's reference system exchanges, declared once.

Each :class:`Contract` names a message type, its payload model, the reply model
when it is a request, and the roles a user needs to send it. The edge exposes
contracts as HTTP routes; the services declare their handlers from the same
contracts. Neither side depends on the other, both depend on this package.
"""

from contracts import plans, profiles
from contracts.catalogue import Contract, Mode, catalogue
from contracts.plans import (
    PLAN_CANCEL_REFRESH,
    PLAN_CHANGED,
    PLAN_CREATE,
    PLAN_GET,
    PLAN_PRUNE,
    PLAN_REFRESH,
    PLAN_SCHEDULE_REFRESH,
    PlanCancelRefresh,
    PlanChanged,
    PlanCreate,
    PlanGet,
    PlanPrune,
    PlanRefresh,
    PlanScheduleRefresh,
    PlanView,
)
from contracts.profiles import (
    PROFILE_GET,
    PROFILE_UPDATE_INTENT,
    ProfileGet,
    ProfileUpdateIntent,
    ProfileView,
)

CATALOGUE: dict[str, Contract] = catalogue(*plans.CONTRACTS, *profiles.CONTRACTS)

__all__ = [
    "CATALOGUE",
    "PLAN_CANCEL_REFRESH",
    "PLAN_CHANGED",
    "PLAN_CREATE",
    "PLAN_GET",
    "PLAN_PRUNE",
    "PLAN_REFRESH",
    "PLAN_SCHEDULE_REFRESH",
    "PROFILE_GET",
    "PROFILE_UPDATE_INTENT",
    "Contract",
    "Mode",
    "PlanCancelRefresh",
    "PlanChanged",
    "PlanCreate",
    "PlanGet",
    "PlanPrune",
    "PlanRefresh",
    "PlanScheduleRefresh",
    "PlanView",
    "ProfileGet",
    "ProfileUpdateIntent",
    "ProfileView",
]
