"""What signed identity costs per message: ``python -m bench.signing_cost``.

Four cases, because the origin assertion is signed once per piece of work and
then carried: the entry point signs twice (message and origin), a worker signs
once and copies the origin; a consumer verifies two signatures for the first hop
of a piece of work and one when it has already seen that origin.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from bench.identity_cost import per_call_us
from messaging.identity import Origin, Principal, encode_principal
from messaging.signing import (
    Destination,
    Envelope,
    KeyRing,
    Signer,
    SigningKey,
    carrying,
)
from messaging.verifier import Verifier

BODY = json.dumps({"title": "a plan", "items": ["x"] * 8}).encode()
TO_CORE = Destination("baton.commands", "plan.create", "plan.create")


def signing_costs(batch_seconds: float = 0.2) -> dict[str, float]:
    edge, core = SigningKey.generate("edge"), SigningKey.generate("core")
    ring = KeyRing([edge.public(), core.public()])
    alice = Principal.user("alice", ["planner"], entered_by="edge")
    passed = alice.handed_to("core", Origin.EVENT)
    edge_signer = Signer(edge, introduces_users=True)
    core_signer = Signer(core, introduces_users=False)
    headers = {**encode_principal(alice), **edge_signer.sign(TO_CORE, "m", BODY, alice)}
    # A broker redelivery of an unsettled message: verified again and again.
    delivery = Envelope("edge", TO_CORE, "m", "", "", BODY, redelivered=True)
    origin = Verifier(ring, introducers=frozenset({"edge"})).verify(
        headers, delivery, alice
    )

    def verify(fresh: bool) -> Callable[[], object]:
        warm = Verifier(ring, introducers=frozenset({"edge"}))

        def run() -> object:
            verifier = (
                Verifier(ring, introducers=frozenset({"edge"})) if fresh else warm
            )
            return verifier.verify(headers, delivery, alice)

        return run

    def worker_sign() -> object:
        with carrying(origin):
            return core_signer.sign(TO_CORE, "m2", BODY, passed)

    steps: dict[str, Callable[[], object]] = {
        "sign_entry_us": lambda: edge_signer.sign(TO_CORE, "m", BODY, alice),
        "sign_hop_us": worker_sign,
        "verify_new_origin_us": verify(fresh=True),
        "verify_known_origin_us": verify(fresh=False),
    }
    return {name: per_call_us(step, batch_seconds) for name, step in steps.items()}


if __name__ == "__main__":
    print(json.dumps(signing_costs(), indent=2))
