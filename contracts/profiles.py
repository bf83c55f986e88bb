"""Profiles: each user's stated intent, kept by the users service."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from contracts.catalogue import Contract, Strict


class ProfileUpdateIntent(Strict):
    intent: str = Field(min_length=1, max_length=500)


class ProfileGet(Strict):
    """Read a profile: the acting user's own, and no one else's.

    `subject` may be given, but it must be the acting user: a request naming
    someone else is refused, never answered.
    """

    subject: str | None = Field(default=None, max_length=128)


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
