"""Errors the worker runtime adds to the messaging library's tree.

BatonError (messaging.errors)
├── MessageRejected
│   └── Forbidden
│       └── IdentityChanged       a handler tried to pass on a different principal
├── HandlerOutcome
│   ├── Reject
│   │   ├── UndeclaredMessage     a service published what it never declared
│   │   ├── PublishKeyReused      a handler named two messages with one key
│   │   └── NotFound              the thing a message names does not exist
│   └── AlreadyHandled            the inbox has seen this message id: skip it
└── ScheduleError                 a job's schedule or missed-tick policy is invalid

A handler that raises ``IdentityChanged`` has its delivery quarantined, like any
trust failure. ``UndeclaredMessage`` is a bug in the service, not in the message:
it is dead-lettered at once, so the message can be replayed after the fix.
"""

from __future__ import annotations

from messaging.errors import BatonError, Forbidden, HandlerOutcome, Reject


class IdentityChanged(Forbidden):
    """A hop tried to publish for another subject, other roles or another chain."""

    code = "IdentityChanged"


class UndeclaredMessage(Reject):
    """A service published a message type its declaration does not list."""


class PublishKeyReused(Reject):
    """A handler gave the same ``key=`` to two messages of one type and delivery."""


class NotFound(Reject):
    """The record a message names does not exist (or is not the caller's to see)."""


class AlreadyHandled(HandlerOutcome):
    """The inbox already holds this message id: its side effect happened once."""

    def __init__(self, consumer: str, message_id: str) -> None:
        super().__init__(f"{consumer} already handled message {message_id}")
        self.consumer = consumer
        self.message_id = message_id


class ScheduleError(BatonError):
    """A scheduled job is declared with an invalid schedule or policy."""
