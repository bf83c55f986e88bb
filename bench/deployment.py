"""Baton deployed for the benchmark as production would run it: trust checks on.

The consumer gets a :class:`~messaging.trust.TrustPolicy` built from service
declarations, so every delivery's AMQP ``user_id`` is checked against the
services allowed to publish its type; with ``signed``, the publisher signs each
message and the consumer verifies signature, origin and replay cache too.

The benchmark publishes under one broker account (the one in AMQP_URL), so the
entry service that introduces users is named after that account, the way
:class:`~messaging.trust.Accounts` maps accounts to services with no prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.workload import MESSAGE_TYPE, SERVICE
from contracts.plans import PlanCreate
from messaging.connection import broker_user
from messaging.declaration import Emit, ServiceDeclaration
from messaging.handlers import HandlerSpec
from messaging.signing import KeyRing, Signer, SigningKey
from messaging.topology import Route, Topology
from messaging.trust import TrustMap, TrustPolicy
from messaging.verifier import Verifier


@dataclass(frozen=True)
class Deployment:
    """The consumer's trust policy and the publisher's signer (None: unsigned)."""

    trust: TrustPolicy
    signer: Signer | None


def deploy(
    amqp_url: str,
    handler: HandlerSpec[PlanCreate],
    topology: Topology,
    *,
    signed: bool,
) -> Deployment:
    """Declarations for an entry service and the consumer, and keys when signed."""
    entry = broker_user(amqp_url)
    declarations = [
        ServiceDeclaration(
            name=entry,
            emits=frozenset({Emit(Route.COMMAND, MESSAGE_TYPE)}),
            introduces_users=True,
        ),
        ServiceDeclaration(name=SERVICE, handlers=(handler,)),
    ]
    trust_map = TrustMap.from_declarations(declarations)
    if not signed:
        return Deployment(TrustPolicy(SERVICE, trust_map, topology), None)

    key = SigningKey.generate(entry)
    verifier = Verifier(KeyRing([key.public()]), introducers=trust_map.introducers)
    return Deployment(
        TrustPolicy(SERVICE, trust_map, topology, verifier=verifier),
        Signer(key, introduces_users=True),
    )
