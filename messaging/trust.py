"""Whom a consumer believes: the publishers each message type may come from.

RabbitMQ checks that a message's AMQP ``user_id`` is the account of the connection
that published it. That turns ``user_id`` into a fact a consumer can rely on, and
the declarations say which service may publish which message type. A consumer with
a :class:`TrustPolicy` therefore refuses, into quarantine:

- a message without ``user_id``, or from an account that is no declared service;
- a message type from a service that did not declare publishing it;
- a ``baton-attempt`` on a message that did not come back through the service's
  own retry path (it would let a first publish skip the handler's retries);
- when signatures are required, anything :class:`~messaging.verifier.Verifier`
  refuses: a missing, forged, expired, replayed or moved assertion, or a principal
  no introducer vouched for.

Our own retries come back through our own ``redeliver`` exchange, published by our
own account; only then is the ``baton-original-publisher`` header believed: the
broker lets no other account write to that exchange, and the consumer checks the
account as well.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from messaging import headers as h
from messaging.declaration import ServiceDeclaration, senders_of
from messaging.delivery import Delivery
from messaging.errors import (
    InvalidSignature,
    MessageRejected,
    ReplayedMessage,
    TrustConfigError,
    UnprovenPrincipal,
    UntrustedPublisher,
)
from messaging.handlers import HandlerSpec
from messaging.identity import SERVICE_PATTERN, Principal
from messaging.keyring import KeyRingFile, SigningKey
from messaging.settings import BrokerSettings
from messaging.signing import Destination, Envelope, OriginAssertion, Signer
from messaging.topology import Route, Topology
from messaging.verifier import Verifier

logger = logging.getLogger(__name__)

# Refusals after which nothing the message names is believed, its reply_to
# included: the consumer sends no error reply to it.
TRUST_REFUSALS: tuple[type[MessageRejected], ...] = (
    UntrustedPublisher,
    InvalidSignature,
    ReplayedMessage,
    UnprovenPrincipal,
)


@dataclass(frozen=True)
class Accounts:
    """How service names map to broker account names: one account per service."""

    prefix: str = ""

    def of(self, service: str) -> str:
        return f"{self.prefix}{service}"

    def service(self, account: str) -> str | None:
        """The service an account belongs to, None when it is no service's account."""
        if not account.startswith(self.prefix):
            return None
        name = account[len(self.prefix) :]
        return name if SERVICE_PATTERN.fullmatch(name) else None


@dataclass(frozen=True)
class TrustMap:
    """For each (route, message type), the services declared to publish it."""

    senders: Mapping[tuple[Route, str], frozenset[str]]
    services: frozenset[str]
    introducers: frozenset[str]
    # The roles each service declared for acting as itself.
    service_roles: Mapping[str, frozenset[str]]

    @classmethod
    def from_declarations(cls, declarations: Iterable[ServiceDeclaration]) -> TrustMap:
        declared = list(declarations)
        if not declared:
            raise TrustConfigError("a trust map needs the services' declarations")
        types: set[tuple[Route, str]] = set()
        for declaration in declared:
            types.update((emit.route, emit.message_type) for emit in declaration.emits)
            types.update((Route.COMMAND, name) for name in declaration.requests)
        senders = {key: senders_of(declared, *key) for key in types}
        return cls(
            senders=senders,
            services=frozenset(d.name for d in declared),
            introducers=frozenset(d.name for d in declared if d.introduces_users),
            service_roles={d.name: d.roles for d in declared},
        )

    def allows(self, service: str, route: Route, message_type: str) -> bool:
        return service in self.senders.get((route, message_type), frozenset())


@dataclass(frozen=True, slots=True)
class Provenance:
    """Who published a delivery, where, and whether it is one of our own retries."""

    publisher: str
    destination: Destination
    retried: bool


@dataclass(frozen=True, slots=True)
class Admission:
    """What the trust checks established about an admitted delivery."""

    sender: str
    """The service that published it (the first publisher, for our own retries)."""
    origin: OriginAssertion | None
    """The verified origin, when signatures are required."""


class TrustPolicy:
    """A consumer's trust checks: the publisher, then the signature and origin."""

    def __init__(
        self,
        service: str,
        trust_map: TrustMap,
        topology: Topology,
        *,
        accounts: Accounts | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.service = service
        self.trust_map = trust_map
        self.topology = topology
        self.accounts = accounts or Accounts()
        self.verifier = verifier
        self._retry_path = topology.redeliver_exchange(service)

    def admit(
        self,
        message: Delivery,
        spec: HandlerSpec[Any],
        principal: Principal,
    ) -> Admission:
        """Raise a MessageRejected unless the message may be believed."""
        provenance = self.provenance(message, spec)
        if not self.trust_map.allows(
            provenance.publisher, spec.route, spec.message_type
        ):
            raise UntrustedPublisher(
                f"{provenance.publisher} is not declared to publish "
                f"{spec.route.value} {spec.message_type}"
            )
        attempt = _attempt_of(message)
        if attempt and not provenance.retried:
            raise UntrustedPublisher(
                f"{h.ATTEMPT} {attempt!r} from {provenance.publisher}: only "
                f"{self.service}'s own retry path sets it"
            )
        if self.verifier is None:
            return Admission(provenance.publisher, None)
        envelope = Envelope(
            publisher=provenance.publisher,
            route=provenance.destination,
            message_id=message.message_id or "",
            correlation_id=message.correlation_id or "",
            reply_to=message.reply_to or "",
            body=message.body,
            attempt=attempt if type(attempt) is int else 0,
            redelivered=message.redelivered,
            copy=_copy_of(message),
        )
        origin = self.verifier.verify(message.headers, envelope, principal)
        return Admission(provenance.publisher, origin)

    def settled(self, message: Delivery) -> None:
        """The consumer acked `message`: the same delivery again is a replay."""
        if self.verifier is None:
            return
        try:
            publisher, _retried = self._publisher(message)
        except UntrustedPublisher:
            return  # refused before the verifier saw it: nothing was admitted
        attempt = _attempt_of(message)
        key = (
            publisher,
            message.message_id or "",
            attempt if type(attempt) is int else 0,
        )
        self.verifier.settled(key, _copy_of(message))

    def provenance(self, message: Delivery, spec: HandlerSpec[Any]) -> Provenance:
        publisher, retried = self._publisher(message)
        if not retried:
            destination = Destination(
                message.exchange, message.routing_key, message.type or ""
            )
            return Provenance(publisher, destination, retried=False)
        # Signed for the route it was first published to, before our retry.
        destination = Destination(
            self.topology.exchange_for(spec.route),
            spec.message_type,
            message.type or "",
        )
        return Provenance(publisher, destination, retried=True)

    def _publisher(self, message: Delivery) -> tuple[str, bool]:
        """The service that published `message`, and whether it is our own retry."""
        account = message.user_id
        if not account:
            raise UntrustedPublisher("the message has no user_id")
        publisher = self._service_of(account)
        if message.exchange != self._retry_path:
            return publisher, False

        # Our own retry, back from its retry queue: only our account puts it there.
        if publisher != self.service:
            raise UntrustedPublisher(
                f"{publisher} put a message into {self.service}'s retry path"
            )
        original = message.headers.get(h.ORIGINAL_PUBLISHER, account)
        if type(original) is not str:
            raise UntrustedPublisher(f"{h.ORIGINAL_PUBLISHER} must be a string")
        return self._service_of(original), True

    def _service_of(self, account: str) -> str:
        service = self.accounts.service(account)
        if service is None or service not in self.trust_map.services:
            raise UntrustedPublisher(f"account {account!r} is no declared service")
        return service


def _copy_of(message: Delivery) -> tuple[str, int]:
    """Which copy of a message this is: unique per delivery on a consumer."""
    return (message.frame.consumer_tag or "", message.delivery_tag)


def _attempt_of(message: Delivery) -> object:
    """The attempt header as sent (0 when absent); the consumer checks its type."""
    return message.headers.get(h.ATTEMPT, 0)


def build_trust(
    settings: BrokerSettings,
    service: str,
    declarations: Iterable[ServiceDeclaration],
    *,
    topology: Topology | None = None,
) -> tuple[TrustPolicy | None, Signer | None]:
    """The consumer's trust policy and the publisher's signer the settings ask for.

    Raises TrustConfigError when the settings contradict each other, so that a
    service refuses to start instead of running with less protection than asked.
    """
    declared = list(declarations)
    own = next((d for d in declared if d.name == service), None)
    if (settings.trust_publishers or settings.require_signatures) and own is None:
        raise TrustConfigError(f"no declaration of {service!r} among the declarations")
    if settings.require_signatures and not settings.trust_publishers:
        raise TrustConfigError(
            "require_signatures is on but trust_publishers is off: a signature is "
            "only meaningful once the publisher is checked"
        )

    signer = None
    if settings.signing_key_file is not None:
        key = SigningKey.load(settings.signing_key_file)
        if key.service != service:
            raise TrustConfigError(
                f"the signing key {key.kid} belongs to {key.service}, not {service}"
            )
        signer = Signer(
            key,
            introduces_users=own is not None and own.introduces_users,
            roles=own.roles if own is not None else frozenset(),
            ttl=settings.signature_ttl,
            origin_ttl=settings.origin_ttl,
        )
    elif settings.require_signatures:
        raise TrustConfigError("require_signatures is on but there is no signing key")

    if not settings.trust_publishers:
        return None, signer
    trust_map = TrustMap.from_declarations(declared)
    verifier = None
    if settings.require_signatures:
        verifier = _verifier(settings, trust_map)
    policy = TrustPolicy(
        service,
        trust_map,
        topology or settings.topology(),
        accounts=Accounts(settings.account_prefix),
        verifier=verifier,
    )
    return policy, signer


def _verifier(settings: BrokerSettings, trust_map: TrustMap) -> Verifier:
    if settings.keyring_file is None:
        raise TrustConfigError("require_signatures is on but there is no key ring")
    ring = KeyRingFile.open(settings.keyring_file)
    keys = ring.current()
    unknown = {key.service for key in keys} - trust_map.services
    if unknown:
        logger.warning("the key ring holds keys of undeclared services: %s", unknown)
    if not len(keys):
        raise TrustConfigError("require_signatures is on but the key ring is empty")
    return Verifier(
        ring,
        introducers=trust_map.introducers,
        service_roles=trust_map.service_roles,
    )
