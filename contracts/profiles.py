"""Profiles: each user's stated intent, kept by the users service."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from contracts.catalogue import Contract, Strict


class ProfileUpdateIntent(Strict):
    intent: str = Field(min_length=1, max_length=500)


class ProfileGet(Strict):
    """Read your own profile: the acting user's, and no one else's.

    There is no field naming a user: whom a profile is read for comes only from
    the principal, so a body naming someone is refused as unknown fields are.
    """


class ProfileView(Strict):
    subject: str
    intent: str
    updated_at: datetime | None


PROFILE_UPDATE_INTENT = Contract(
    "profile.update_intent", ProfileUpdateIntent, summary="State what you are after"
)
PROFILE_GET = Contract(
    "profile.get", ProfileGet, reply=ProfileView, summary="Read your profile"
)

CONTRACTS = (PROFILE_UPDATE_INTENT, PROFILE_GET)
