"""Microseconds per message spent on identity and payload checks, without a broker.

These are the costs Baton adds to every message on top of what any AMQP client
pays: encoding the principal into headers on publish, and on consume decoding and
strictly checking those headers and validating the JSON payload.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import timeit
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.workload import BODY, MESSAGE_TYPE, edge_principal
from contracts.plans import PlanCreate
from messaging.identity import decode_principal, encode_principal
from messaging.signing import (
    Destination,
    Envelope,
    KeyRing,
    Signer,
    SigningKey,
)
from messaging.verifier import Verifier

ENTRY = "edge"


async def identity_costs(*, quick: bool) -> dict[str, float]:
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
    costs = {name: per_call_us(step, batch_seconds) for name, step in steps.items()}
    costs["sign_batched_us"] = await batched_sign_us(rounds=20 if quick else 100)
    return costs


def signing_steps() -> dict[str, Callable[[], object]]:
    """Signing one message on publish and verifying it on consume.

    ``sign_us`` seals the message alone (one Ed25519 signature). Verification is
    timed as for a broker redelivery of a message not yet settled
    (``redelivered``): the same message is verified again and again, which the
    replay cache would otherwise refuse after the first time; its batch root is
    then known, as it is for every message of a batch but the first, so the
    figure leaves out the one Ed25519 check a batch costs (``ed25519_*``: the
    raw primitive, for comparison)."""
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

    raw = Ed25519PrivateKey.generate()
    raw_signature = raw.sign(BODY)
    public = raw.public_key()
    return {
        "sign_us": lambda: signer.sign(destination, message_id, BODY, principal),
        "verify_us": verify,
        "ed25519_sign_us": lambda: raw.sign(BODY),
        "ed25519_verify_us": lambda: public.verify(raw_signature, BODY),
    }


async def batched_sign_us(*, rounds: int, batch: int = 100) -> float:
    """Microseconds per message when `batch` messages are signed in one loop turn.

    This is how a publisher signs under load (``Signer.sign_soon``): the
    messages of a turn share one signature over their Merkle root.
    """
    principal = edge_principal()
    signer = Signer(SigningKey.generate(ENTRY), introduces_users=True)
    destination = Destination("baton.commands", MESSAGE_TYPE, MESSAGE_TYPE)

    started = time.process_time()
    for turn in range(rounds):
        await asyncio.gather(
            *(
                signer.sign_soon(destination, f"{turn}-{i}", BODY, principal)
                for i in range(batch)
            )
        )
    return round((time.process_time() - started) / (rounds * batch) * 1e6, 3)


def per_call_us(step: Callable[[], object], batch_seconds: float) -> float:
    """The median over several batches of about `batch_seconds`, in us per call."""
    timer = timeit.Timer(step)
    once_number, once_seconds = timer.autorange()
    number = max(1, round(once_number * batch_seconds / max(once_seconds, 1e-9)))
    batches = timer.repeat(number=number, repeat=7)
    return round(statistics.median(batches) / number * 1e6, 3)
