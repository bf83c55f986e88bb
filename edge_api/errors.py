"""Every error the edge raises on its own, and the HTTP answer each one becomes.

EdgeError
├── InvalidToken          the bearer token cannot be trusted: 401
└── KeysUnavailable       our key source is down, so no token can be checked: 503

Failures of the broker behind the edge are ``messaging.errors.PublishError`` and
``RequestError``; the routes map those, not this module.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base class of the errors the edge raises itself."""


class InvalidToken(EdgeError):
    """The bearer token is missing, malformed, forged, expired or off-contract."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeysUnavailable(EdgeError):
    """The signing keys cannot be fetched, and none are cached to fall back on."""
