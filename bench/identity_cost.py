"""Microseconds per message spent on identity and payload checks, without a broker.

These are the costs Baton adds to every message on top of what any AMQP client
pays: encoding the principal into headers on publish, and on consume decoding and
strictly checking those headers and validating the JSON payload.
"""

from __future__ import annotations

import statistics
import timeit
from collections.abc import Callable

from bench.workload import BODY, MESSAGE_TYPE, edge_principal
from contracts.plans import PlanCreate
from messaging.identity import decode_principal, encode_principal
from messaging.signing import (
    Destination,
    Envelope,
    KeyRing,
    Signer,
    SigningKey,
    Verifier,
)

ENTRY = "edge"


def identity_costs(*, quick: bool) -> dict[str, float]:
    """Median microseconds per call of each step, over several timed batches."""
    principal = edge_principal()
    headers = encode_principal(principal)

    def decode_and_validate() -> None:
        decode_principal(headers)
        PlanCreate.model_validate_json(BODY)

    steps: dict[str, Callable[[], object]] = {
        "encode_us": lambda: encode_principal(principal),
        "decode_us": lambda: decode_principal(headers),
        "validate_payload_us": lambda: PlanCreate.model_validate_json(BODY),
        "decode_and_validate_us": decode_and_validate,
        **signing_steps(),
    }
    batch_seconds = 0.05 if quick else 0.2
    return {name: per_call_us(step, batch_seconds) for name, step in steps.items()}


def signing_steps() -> dict[str, Callable[[], object]]:
    """Signing one message on publish and verifying it on consume.

    Verification is timed as for a broker redelivery of a message not yet
    settled (``redelivered``): the same message is verified again and again,
    which the replay cache would otherwise refuse after the first time.
    """
    principal = edge_principal()
    headers = encode_principal(principal)
    key = SigningKey.generate(ENTRY)
    signer = Signer(key, introduces_users=True)
    verifier = Verifier(KeyRing([key.public()]), introducers=frozenset({ENTRY}))
    destination = Destination("baton.commands", MESSAGE_TYPE, MESSAGE_TYPE)
    message_id = "0" * 32
    signed = {**headers, **signer.sign(destination, message_id, BODY, principal)}

    delivery = Envelope(ENTRY, destination, message_id, "", "", BODY, redelivered=True)

    def verify() -> None:
        verifier.verify(signed, delivery, principal)

    return {
        "sign_us": lambda: signer.sign(destination, message_id, BODY, principal),
        "verify_us": verify,
    }


def per_call_us(step: Callable[[], object], batch_seconds: float) -> float:
    """The median over several batches of about `batch_seconds`, in us per call."""
    timer = timeit.Timer(step)
    once_number, once_seconds = timer.autorange()
    number = max(1, round(once_number * batch_seconds / max(once_seconds, 1e-9)))
    batches = timer.repeat(number=number, repeat=7)
    return round(statistics.median(batches) / number * 1e6, 3)
