"""The names Baton puts on the wire: header keys, content type and properties.

Every Baton header lives in one namespace, ``baton-``. RabbitMQ owns ``x-``
(``x-death``, ``x-delivery-count``), so nothing of ours starts with it. A key in
our namespace (matched ignoring ASCII case) that is not listed here is refused by
the identity decoder, so adding one needs every receiver updated first.

The namespace holds three groups. Identity decoding reads only the identity
headers and ignores the transport and signing ones, whatever their value: their
own readers check them. ``docs/protocol.md`` is the contract for all of them.
"""

from __future__ import annotations

from typing import Final

NAMESPACE: Final = "baton-"
PROTOCOL_VERSION: Final = 1
CONTENT_TYPE: Final = "application/json"

# Identity: who the work is done for, and how it got here.
VERSION: Final = "baton-version"
SUBJECT: Final = "baton-subject"
KIND: Final = "baton-kind"
ROLES: Final = "baton-roles"
TENANT: Final = "baton-tenant"
ACTORS: Final = "baton-actors"
ORIGIN: Final = "baton-origin"
INTERNAL: Final = "baton-internal"

IDENTITY_HEADERS: Final = frozenset(
    {VERSION, SUBJECT, KIND, ROLES, TENANT, ACTORS, ORIGIN, INTERNAL}
)

# Transport: how many times a message was tried, and why it ended where it did.
ATTEMPT: Final = "baton-attempt"
FAILURE_CODE: Final = "baton-failure-code"
FAILURE_REASON: Final = "baton-failure-reason"
FAILED_BY: Final = "baton-failed-by"
ORIGINAL_EXCHANGE: Final = "baton-original-exchange"
ORIGINAL_ROUTING_KEY: Final = "baton-original-routing-key"
ORIGINAL_PUBLISHER: Final = "baton-original-publisher"
# Replies: set on a reply that carries an error instead of a result.
ERROR_TYPE: Final = "baton-error-type"

TRANSPORT_HEADERS: Final = frozenset(
    {
        ATTEMPT,
        FAILURE_CODE,
        FAILURE_REASON,
        FAILED_BY,
        ORIGINAL_EXCHANGE,
        ORIGINAL_ROUTING_KEY,
        ORIGINAL_PUBLISHER,
        ERROR_TYPE,
    }
)

# Signatures (messaging/signing.py): the publisher's signed assertion over this
# message, and the entry point's assertion of who the work is for, copied by
# every hop.
SIGNATURE: Final = "baton-signature"
ORIGIN_ASSERTION: Final = "baton-origin-assertion"

SIGNING_HEADERS: Final = frozenset({SIGNATURE, ORIGIN_ASSERTION})

KNOWN_HEADERS: Final = IDENTITY_HEADERS | TRANSPORT_HEADERS | SIGNING_HEADERS
