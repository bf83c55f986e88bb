"""Broker accounts generated from code: one per service, with exactly what it declared.

From the topology and the services' declarations this module derives, for each
service, the RabbitMQ permissions (configure, write and read regexes over resource
names) and the topic permissions (routing-key regexes per topic exchange):

    configure  its own queues and reply queues, and the shared exchanges (every
               process re-declares them on connect, which needs configure)
    write      the exchanges it publishes to: commands / events when it declared
               emits or requests, retry / dead / quarantine / replies when it
               consumes, and redeliver (the dead-letter exchange of its retry
               queues: declaring those needs it); its own queues (binding them
               needs write on the queue)
    read       the exchanges it binds from, its own queues
    topic      on commands and events, write only the message types it emits or
               requests, read (bind) only the types it handles; every topic
               exchange gets an entry, since none would mean "any routing key"

No regex can match the default exchange, which RabbitMQ checks under the name
``amq.default``, so no service can publish straight into a queue. Passwords never
appear in generated files except as RabbitMQ's salted SHA-256 hash, and only in an
export meant for the broker's boot (a secret, never committed).

The plan is applied through the management HTTP API (:class:`Management`), or
exported as a definitions document that the broker loads at boot.
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
from messaging.topology import Route, Topology
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
    return [grant_for(topology, d, accounts) for d in declared]


def grant_for(
    topology: Topology, declaration: ServiceDeclaration, accounts: Accounts
) -> AccountGrant:
    """Exactly what `declaration` needs on the broker, and nothing more."""
    name = declaration.name
    consumes = bool(declaration.handlers)
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

    own_queues: list[str] = []
    patterns: list[str] = []
    if consumes:
        own_queues = [
            topology.service_queue(name),
            topology.dead_queue(name),
            topology.quarantine_queue(name),
        ]
        # Any retry delay: the grant does not change when the delays are tuned.
        patterns.append(re.escape(topology.service_queue(name)) + r"\.retry\.[0-9]+ms")
    if declaration.requests:
        # The requester names its reply queue <prefix>.<service>.replies.<12 hex>.
        patterns.append(re.escape(topology.reply_queue(name, "")) + "[0-9a-f]{12}")
    configure = list(own_queues)
    write = list(own_queues)
    read = list(own_queues)
    # Every process (re)declares the shared exchanges when it connects, which
    # needs configure on them.
    # TODO(when the runtime declares passively under provisioned accounts): drop
    # this; configure also lets a service delete an exchange (availability).
    configure += topology.exchanges()
    if consumes:
        # Declaring a queue with a dead-letter exchange needs write on it: the
        # retry queues dead-letter into redeliver, the work queue into quarantine.
        write += [topology.retry, topology.dead, topology.quarantine, topology.replies]
        write.append(topology.redeliver)
        read += [topology.redeliver, topology.retry, topology.dead, topology.quarantine]
    for route in Route:
        exchange = topology.exchange_for(route)
        if published[route]:
            write.append(exchange)
        if handled[route]:
            read.append(exchange)
    if declaration.requests:
        read.append(topology.replies)

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
    grants: Iterable[AccountGrant],
    passwords: Mapping[str, str],
    *,
    operator: str | None = None,
) -> dict[str, Any]:
    """A RabbitMQ definitions document: the vhost, the accounts, their rights.

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
        self, vhost: str, grants: Iterable[AccountGrant], passwords: Mapping[str, str]
    ) -> None:
        """Create or update the vhost and each account so that it matches `grants`."""
        self.put(f"/api/vhosts/{_q(vhost)}", {})
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
