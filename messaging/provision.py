"""Broker accounts generated from code: one per service, with exactly what it declared.

From the topology and the services' declarations this module derives, for each
service, the RabbitMQ permissions (configure, write and read regexes over resource
names) and the topic permissions (routing-key regexes per topic exchange):

    configure  its own queues and exchanges (retry path, parking, reply queues
               and reply exchange); never a shared exchange, which
               ``baton provision`` creates and a service only declares passively
    write      commands / events when it declared emits or requests there; its
               own retry, redeliver, dead and quarantine exchanges when it
               consumes (it publishes to them, and its queues dead-letter into
               them); the reply exchange of every service that sends it a
               request; its own queues (binding them needs write on the queue)
    read       the exchanges it binds from (commands / events for what it
               handles, its own exchanges), its own queues
    topic      on commands and events, write only the message types it emits or
               requests, read (bind) only the types it handles; every topic
               exchange gets an entry, since none would mean "any routing key"

Every name in a grant is matched exactly: the shared exchanges are topic
exchanges, where topic rights hold the routing keys, and every direct exchange
belongs to one service, so no service can bind its queue to another's retries,
dead letters, quarantine or replies. No regex can match the default exchange,
which RabbitMQ checks under the name ``amq.default``, so no service can publish
straight into a queue. Passwords never appear in generated files except as
RabbitMQ's salted SHA-256 hash, and only in an export meant for the broker's boot
(a secret, never committed).

The plan is applied through the management HTTP API (:class:`Management`), or
exported as a definitions document that the broker loads at boot; both create the
shared exchanges too.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, urlsplit

import httpx

from messaging.declaration import ServiceDeclaration
from messaging.errors import TrustConfigError
from messaging.topology import REPLY_INSTANCE, Route, Topology
from messaging.trust import Accounts

logger = logging.getLogger(__name__)

# A regex that matches no name at all, not even the empty one.
NOTHING: Final = "^(?!)$"


@dataclass(frozen=True)
class AccountGrant:
    """What one broker account may do in the deployment's vhost."""

    user: str
    service: str
    configure: str
    write: str
    read: str
    # exchange -> (write regex, read regex) over routing keys
    topics: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


def plan(
    topology: Topology,
    declarations: Iterable[ServiceDeclaration],
    accounts: Accounts | None = None,
) -> list[AccountGrant]:
    """The least-privilege grant of every declared service."""
    accounts = accounts or Accounts()
    declared = list(declarations)
    _check_names(topology, declared)
    return [grant_for(topology, d, accounts, declared=declared) for d in declared]


def grant_for(
    topology: Topology,
    declaration: ServiceDeclaration,
    accounts: Accounts,
    *,
    declared: Iterable[ServiceDeclaration],
) -> AccountGrant:
    """Exactly what `declaration` needs on the broker, and nothing more.

    `declared` holds every service of the deployment: a service that answers
    requests may write to the reply exchange of each one that sends it some.
    """
    name = declaration.name
    handled = {route: _types(declaration, route) for route in Route}
    published = {
        Route.COMMAND: {
            e.message_type for e in declaration.emits if e.route is Route.COMMAND
        }
        | set(declaration.requests),
        Route.EVENT: {
            e.message_type for e in declaration.emits if e.route is Route.EVENT
        },
    }

    owned: list[str] = []
    patterns: list[str] = []
    if declaration.handlers:
        owned += [
            topology.service_queue(name),
            topology.dead_queue(name),
            topology.quarantine_queue(name),
            *topology.service_exchanges(name),
        ]
        # Any retry delay: the grant does not change when the delays are tuned.
        patterns.append(re.escape(topology.service_queue(name)) + r"\.retry\.[0-9]+ms")
    if declaration.requests:
        owned.append(topology.reply_exchange(name))
        patterns.append(re.escape(topology.reply_queue(name, "")) + REPLY_INSTANCE)
    configure = list(owned)
    write = [n for n in owned if n != topology.reply_exchange(name)]
    read = list(owned)
    write += [topology.reply_exchange(r) for r in _requesters(declaration, declared)]
    for route in Route:
        exchange = topology.exchange_for(route)
        if published[route]:
            write.append(exchange)
        if handled[route]:
            read.append(exchange)

    topics = {
        topology.exchange_for(route): (
            _exactly(sorted(published[route])),
            _exactly(sorted(handled[route])),
        )
        for route in Route
    }
    return AccountGrant(
        user=accounts.of(name),
        service=name,
        configure=_exactly(sorted(set(configure)), patterns),
        write=_exactly(sorted(set(write)), patterns),
        read=_exactly(sorted(set(read)), patterns),
        topics=topics,
    )


def shared_exchanges(topology: Topology) -> list[dict[str, Any]]:
    """The shared exchanges as the broker's definitions and management API name them."""
    return [
        {
            "name": name,
            "type": kind.value,
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }
        for name, kind in topology.exchanges().items()
    ]


def rabbit_password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's salted SHA-256 hash: base64(salt + sha256(salt + password))."""
    salt = salt if salt is not None else secrets.token_bytes(4)
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def operator_grant(user: str) -> AccountGrant:
    """The deployment's administrator: it provisions and audits, and runs nothing."""
    return AccountGrant(
        user=user,
        service="",
        configure=".*",
        write=".*",
        read=".*",
        tags=("administrator",),
    )


def definitions(
    vhost: str,
    topology: Topology,
    grants: Iterable[AccountGrant],
    passwords: Mapping[str, str],
    *,
    operator: str | None = None,
) -> dict[str, Any]:
    """A RabbitMQ definitions document: the vhost, its shared exchanges, the
    accounts and their rights.

    It holds no other user: loaded at boot, the broker has no guest account. The
    optional `operator` is an administrator for provisioning and the self-check;
    its password goes to the audit job only, never to a service.
    """
    grants = list(grants)
    if operator is not None:
        grants.append(operator_grant(operator))
    missing = sorted(g.user for g in grants if not passwords.get(g.user))
    if missing:
        raise TrustConfigError(f"no password for broker accounts {missing}")
    return {
        "vhosts": [{"name": vhost}],
        "exchanges": [
            {"vhost": vhost, **exchange} for exchange in shared_exchanges(topology)
        ],
        "users": [
            {
                "name": g.user,
                "password_hash": rabbit_password_hash(passwords[g.user]),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ",".join(g.tags),
            }
            for g in grants
        ],
        "permissions": [
            {
                "user": g.user,
                "vhost": vhost,
                "configure": g.configure,
                "write": g.write,
                "read": g.read,
            }
            for g in grants
        ],
        "topic_permissions": [
            {
                "user": g.user,
                "vhost": vhost,
                "exchange": exchange,
                "write": write,
                "read": read,
            }
            for g in grants
            for exchange, (write, read) in sorted(g.topics.items())
        ],
    }


class ManagementError(TrustConfigError):
    """The management API refused or failed a request."""


class Management:
    """A small client of RabbitMQ's management HTTP API (port 15672)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if not parts.username or parts.password is None:
            raise TrustConfigError("the management URL must carry user and password")
        base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}"
        self._client = httpx.Client(
            base_url=base,
            auth=(parts.username, parts.password),
            timeout=timeout,
        )

    def __enter__(self) -> Management:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def apply(
        self,
        vhost: str,
        topology: Topology,
        grants: Iterable[AccountGrant],
        passwords: Mapping[str, str],
    ) -> None:
        """Create or update the vhost, its shared exchanges and each account so
        that it matches `grants`."""
        self.put(f"/api/vhosts/{_q(vhost)}", {})
        for exchange in shared_exchanges(topology):
            body = {k: v for k, v in exchange.items() if k != "name"}
            self.put(f"/api/exchanges/{_q(vhost)}/{_q(exchange['name'])}", body)
        for grant in grants:
            password = passwords.get(grant.user)
            if not password:
                raise TrustConfigError(f"no password for broker account {grant.user}")
            self._apply_grant(vhost, grant, password)
            logger.info("provisioned broker account %s in %s", grant.user, vhost)

    def _apply_grant(self, vhost: str, grant: AccountGrant, password: str) -> None:
        user = _q(grant.user)
        self.put(
            f"/api/users/{user}", {"password": password, "tags": ",".join(grant.tags)}
        )
        # Topic rights first: until they exist, any routing key would pass.
        for exchange, (write, read) in sorted(grant.topics.items()):
            self.put(
                f"/api/topic-permissions/{_q(vhost)}/{user}",
                {"exchange": exchange, "write": write, "read": read},
            )
        for existing in self.get(f"/api/users/{user}/topic-permissions"):
            if existing["vhost"] == vhost and existing["exchange"] not in grant.topics:
                self._drop_topic_permission(vhost, grant.user, existing["exchange"])
        self.put(
            f"/api/permissions/{_q(vhost)}/{user}",
            {"configure": grant.configure, "write": grant.write, "read": grant.read},
        )

    def _drop_topic_permission(self, vhost: str, user: str, exchange: str) -> None:
        # The API deletes a user's topic rights in a vhost all at once; a stale
        # entry is instead narrowed to match nothing, which denies as well.
        self.put(
            f"/api/topic-permissions/{_q(vhost)}/{_q(user)}",
            {"exchange": exchange, "write": NOTHING, "read": NOTHING},
        )

    def load_definitions(self, document: Mapping[str, Any]) -> None:
        """Import a definitions document, as the broker does with one at boot."""
        self._request("POST", "/api/definitions", json=document)

    def remove(self, vhost: str | None, users: Iterable[str]) -> None:
        """Delete accounts and the vhost; missing ones are not an error."""
        for user in users:
            self.delete(f"/api/users/{_q(user)}")
        if vhost is not None:
            self.delete(f"/api/vhosts/{_q(vhost)}")

    def get(self, path: str) -> Any:
        response = self._request("GET", path)
        return response.json()

    def put(self, path: str, body: Mapping[str, Any]) -> None:
        self._request("PUT", path, json=body)

    def delete(self, path: str) -> None:
        self._request("DELETE", path, missing_ok=True)

    def _request(
        self, method: str, path: str, *, missing_ok: bool = False, **kwargs: Any
    ) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ManagementError(f"{method} {path} failed: {exc}") from exc
        if response.status_code == 404 and missing_ok:
            return response
        if response.status_code >= 400:
            raise ManagementError(
                f"{method} {path} answered {response.status_code}: "
                f"{response.text[:300]}"
            )
        return response


def _types(declaration: ServiceDeclaration, route: Route) -> set[str]:
    return {spec.message_type for spec in declaration.handlers if spec.route is route}


def _requesters(
    declaration: ServiceDeclaration, declared: Iterable[ServiceDeclaration]
) -> list[str]:
    """The services that send `declaration` a request it answers."""
    answered = _types(declaration, Route.COMMAND)
    return [d.name for d in declared if answered & set(d.requests)]


def _exactly(names: Iterable[str], patterns: Iterable[str] = ()) -> str:
    """A regex matching exactly `names` (and `patterns`), nothing else."""
    alternatives = [re.escape(name) for name in names]
    alternatives += patterns
    if not alternatives:
        return NOTHING
    return "^(?:" + "|".join(alternatives) + ")$"


def _check_names(topology: Topology, declared: list[ServiceDeclaration]) -> None:
    exchanges = set(topology.exchanges())
    names = [d.name for d in declared]
    if len(set(names)) != len(names):
        raise TrustConfigError(f"a service is declared twice among {names}")
    for name in names:
        if topology.service_queue(name) in exchanges:
            raise TrustConfigError(
                f"service {name!r} would own a queue named like an exchange"
            )


def _q(name: str) -> str:
    return quote(name, safe="")
