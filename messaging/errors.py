"""Every error the messaging library raises, and what each one means.

BatonError
├── IdentityError                 identity headers cannot be trusted: quarantine
│   ├── MissingHeader             a required header is absent
│   ├── HeaderTypeError           a header has the wrong AMQP type
│   ├── HeaderValueError          a header has the right type but a bad value
│   ├── UnknownHeader             a key in the Baton namespace that the protocol lacks
│   ├── DuplicateHeader           the same key appears twice in one header table
│   ├── UnsupportedVersion        the protocol version is not one this code speaks
│   └── HeaderSetTooLarge         the identity headers exceed the size cap
├── MessageRejected               a delivery that must go to quarantine, not retry
│   ├── SchemaError               content type, size, JSON or payload model wrong
│   ├── UnknownMessageType        no handler is declared for the message type
│   ├── Forbidden                 the principal may not send this message type
│   ├── ChainTooDeep              the actor chain is longer than the depth limit
│   ├── UntrustedPublisher        no user_id, or a publisher not declared for the type
│   ├── InvalidSignature          the signed assertion is missing, forged or moved
│   ├── ReplayedMessage           a message id admitted before arrives again
│   ├── UnprovenPrincipal         a service speaks for a user no introducer vouched for
│   └── TooManyPublishes          one delivery published more than the cap allows
├── TrustConfigError              trust settings or broker rights are unsafe: no start
│   └── SigningConfigError        a signing key or key ring cannot be used
├── BrokerTooOld                  the broker lacks what the settings require: no start
├── PublishError                  the broker did not take a message
│   ├── PublishNacked             the broker answered the publish with a nack
│   ├── MessageReturned           the message was unroutable (mandatory return)
│   ├── ConfirmTimeout            no confirm arrived within the deadline
│   └── BrokerUnavailable         no connection to the broker
├── RequestError                  a request/reply exchange failed
│   ├── RequestTimeout            no reply within the deadline
│   └── RemoteError               the callee answered with an error (error_type)
│       ├── RemoteRefusal         it refused who the work is for (a MessageRejected)
│       ├── RemoteRejection       it refused the request for good (a Reject)
│       │   └── RemoteNotFound    what the request names does not exist
│       └── RemoteFailure         it failed while handling the request: retry
└── HandlerOutcome                raised by handlers to choose what happens next
    ├── Retry                     try again later (optionally after a given delay)
    └── Reject                    permanent failure: dead-letter now, no retries

A handler that lets a RemoteError propagate gets the outcome its kind says: a
refusal is quarantined like the caller's own trust failure, a rejection is
dead-lettered at once, a failure is retried. ``messaging/rpc.py`` decides the
kind from the reply's ``baton-error-type``.
"""

from __future__ import annotations


class BatonError(Exception):
    """Base class of every error raised by Baton's messaging library."""


class IdentityError(BatonError):
    """The identity headers of a message cannot be trusted."""

    def __init__(self, header: str, message: str) -> None:
        super().__init__(f"{header}: {message}")
        self.header = header
        self.reason = message

    @property
    def code(self) -> str:
        """A stable name for the failed rule, used in vectors and quarantine."""
        return type(self).__name__


class MissingHeader(IdentityError):
    """A required identity header is absent."""


class HeaderTypeError(IdentityError):
    """An identity header carries a value of the wrong AMQP type."""


class HeaderValueError(IdentityError):
    """An identity header has the right type but a value outside the rules."""


class UnknownHeader(IdentityError):
    """A header in the Baton namespace that the protocol does not define."""


class DuplicateHeader(IdentityError):
    """The same header key appears more than once in one table."""


class UnsupportedVersion(IdentityError):
    """The message speaks a protocol version this code does not."""


class HeaderSetTooLarge(IdentityError):
    """The identity headers together exceed the size cap."""


class MessageRejected(BatonError):
    """A delivery that is refused outright and goes to quarantine."""

    code = "MessageRejected"


class SchemaError(MessageRejected):
    """The content type, size, JSON or payload of a message is invalid."""

    code = "SchemaError"


class UnknownMessageType(MessageRejected):
    """No handler is declared for the message's type."""

    code = "UnknownMessageType"


class Forbidden(MessageRejected):
    """The principal lacks a role or kind the handler's declaration requires."""

    code = "Forbidden"


class ChainTooDeep(MessageRejected):
    """The work has passed through more services than the depth limit allows."""

    code = "ChainTooDeep"


class UntrustedPublisher(MessageRejected):
    """The message has no user_id, or comes from a publisher not allowed to send it."""

    code = "UntrustedPublisher"


class InvalidSignature(MessageRejected):
    """The signed assertion is missing, forged, expired or made for another message."""

    code = "InvalidSignature"


class ReplayedMessage(MessageRejected):
    """A message id that was already admitted arrives again as a new publish."""

    code = "ReplayedMessage"


class UnprovenPrincipal(MessageRejected):
    """The principal is not vouched for by a service allowed to introduce it."""

    code = "UnprovenPrincipal"


class TooManyPublishes(MessageRejected):
    """Handling one delivery published more messages than the per-delivery cap."""

    code = "TooManyPublishes"


class TrustConfigError(BatonError):
    """The trust settings or the broker account's rights make starting unsafe."""


class SigningConfigError(TrustConfigError):
    """A signing key or key ring is missing, unreadable or malformed."""


class BrokerTooOld(BatonError):
    """The broker lacks a feature the settings require, such as quorum queues."""


class PublishError(BatonError):
    """The broker did not take responsibility for a published message."""


class PublishNacked(PublishError):
    """The broker answered the publish with a negative confirm."""


class MessageReturned(PublishError):
    """The broker could not route a mandatory message and returned it."""

    def __init__(self, exchange: str, routing_key: str, reply_text: str) -> None:
        super().__init__(
            f"message to exchange {exchange!r} with routing key {routing_key!r} "
            f"was returned: {reply_text}"
        )
        self.exchange = exchange
        self.routing_key = routing_key
        self.reply_text = reply_text


class ConfirmTimeout(PublishError):
    """No publisher confirm arrived before the deadline."""


class BrokerUnavailable(PublishError):
    """There is no usable connection to the broker."""


class RequestError(BatonError):
    """A request/reply exchange with another service failed."""


class RequestTimeout(RequestError):
    """No reply arrived before the deadline."""


class RemoteError(RequestError):
    """The callee handled the request and answered with an error."""

    def __init__(self, error_type: str, message: str, request_type: str = "") -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.request_type = request_type


class HandlerOutcome(BatonError):
    """Raised by a handler to decide what the consumer does with the message."""


class Retry(HandlerOutcome):
    """Try the message again later, counting against the retry limit."""

    def __init__(self, reason: str = "retry requested", delay: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class Reject(HandlerOutcome):
    """A permanent failure: dead-letter the message now, without retrying."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RemoteRefusal(RemoteError, MessageRejected):
    """The callee refused the principal or its chain; the caller's delivery too.

    The request carried the caller's own principal, one hop longer: a user who
    may not read that profile, or a chain past the depth limit, is refused for
    the caller's delivery as well. Retrying would ask again for the same thing,
    so the caller quarantines its delivery, under the callee's code.
    """

    def __init__(self, error_type: str, message: str, request_type: str = "") -> None:
        super().__init__(error_type, message, request_type)
        self.code = error_type


class RemoteRejection(RemoteError, Reject):
    """The callee refused the request as it was sent, for good.

    A payload it cannot read, a sender it does not trust, a handler it lacks:
    the caller's delivery is not at fault, the caller's code or deployment is.
    Asking again gets the same answer, so the caller dead-letters its delivery
    at once, to be replayed after the fix.
    """


class RemoteNotFound(RemoteRejection):
    """What the request names does not exist, or not for this principal."""


class RemoteFailure(RemoteError):
    """The callee failed while handling the request; asking again may succeed."""
