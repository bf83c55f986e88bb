"""The startup self-check: a service refuses to run with more power than it declared.

Before consuming, a service compares what the broker account it logs in with
(the user of its AMQP URL) may actually do, read through the management API, with
the grant its declarations produce (messaging/provision.py), and checks that its
trust settings make sense. The edge, the workers and the scheduler all run it. It
refuses to start, saying why, when:

- it logs in with another account than its own (``guest``, another service's);
- the account has permissions in another vhost, or different regexes than the plan;
- a topic exchange's routing-key rights differ from the plan, or are missing
  (no topic entry means any routing key);
- the account has any tag, above all ``impersonator``, which lets it set another
  account's ``user_id``;
- signing is required without a key or key ring, or the trust map is on without
  declarations (:func:`messaging.trust.build_trust` raises those).

Reading another account's permissions needs an administrator on the management
API; a deployment runs the check with a separate auditor URL
(``BATON_MANAGEMENT_URL``). Without it, only the settings are checked and a
warning says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from messaging.connection import broker_user
from messaging.declaration import ServiceDeclaration
from messaging.errors import TrustConfigError
from messaging.provision import NOTHING, AccountGrant, Management, grant_for
from messaging.settings import BrokerSettings
from messaging.signing import Signer
from messaging.topology import Topology
from messaging.trust import Accounts, TrustPolicy, build_trust

logger = logging.getLogger(__name__)


class UnsafeToStart(TrustConfigError):
    """The self-check found problems; the message lists every one."""

    def __init__(self, service: str, problems: list[str]) -> None:
        lines = "\n  - ".join(problems)
        super().__init__(f"{service} refuses to start:\n  - {lines}")
        self.problems = problems


def verify_startup(
    settings: BrokerSettings,
    service: str,
    declarations: Iterable[ServiceDeclaration],
    *,
    vhost: str | None = None,
) -> tuple[TrustPolicy | None, Signer | None]:
    """Run every check; return the trust policy and signer, or raise UnsafeToStart."""
    declared = list(declarations)
    try:
        policy, signer = build_trust(settings, service, declared)
    except TrustConfigError as exc:
        raise UnsafeToStart(service, [str(exc)]) from exc

    own = next((d for d in declared if d.name == service), None)
    if settings.management_url is None or own is None:
        # In development (trust off, guest) there is nothing to warn about.
        if settings.trust_publishers or settings.require_signatures:
            logger.warning(
                "%s: broker rights not checked (no BATON_MANAGEMENT_URL or "
                "declaration); run `baton provision --check`",
                service,
            )
        return policy, signer

    accounts = Accounts(settings.account_prefix)
    expected = grant_for(settings.topology(), own, accounts, declared=declared)
    # The account the process really logs in with, not the one it should.
    login = broker_user(settings.amqp_url)
    problems = []
    if login != expected.user:
        problems.append(
            f"{service} logs in as {login!r}, but its broker account is "
            f"{expected.user!r}"
        )
    try:
        with Management(settings.management_url.get_secret_value()) as management:
            actual = read_grant(management, vhost or _vhost(settings), login, service)
    except TrustConfigError as exc:
        raise UnsafeToStart(
            service, [*problems, f"cannot read the rights of {login}: {exc}"]
        ) from exc
    problems += check_grants(actual, replace(expected, user=login))
    if problems:
        raise UnsafeToStart(service, problems)
    logger.info(
        "%s: broker account %s has exactly its declared rights", service, actual.user
    )
    return policy, signer


def read_grant(
    management: Management, vhost: str, user: str, service: str
) -> AccountGrant:
    """What `user` may actually do, as the broker reports it.

    Rights in another vhost are reported in ``configure`` as a problem marker,
    since the plan only ever grants rights in the deployment's own vhost.
    """
    account = management.get(f"/api/users/{_q(user)}")
    permissions: list[dict[str, Any]] = management.get(
        f"/api/users/{_q(user)}/permissions"
    )
    topic_rows: list[dict[str, Any]] = management.get(
        f"/api/users/{_q(user)}/topic-permissions"
    )
    ours = [p for p in permissions if p["vhost"] == vhost]
    others = sorted(p["vhost"] for p in permissions if p["vhost"] != vhost)
    grant = AccountGrant(
        user=user,
        service=service,
        configure=ours[0]["configure"] if ours else NOTHING,
        write=ours[0]["write"] if ours else NOTHING,
        read=ours[0]["read"] if ours else NOTHING,
        topics={
            row["exchange"]: (row["write"], row["read"])
            for row in topic_rows
            if row["vhost"] == vhost
        },
        tags=tuple(_tags(account.get("tags"))),
    )
    if others:
        grant = replace(grant, configure=f"{grant.configure} (and vhosts {others})")
    return grant


def check_grants(actual: AccountGrant, expected: AccountGrant) -> list[str]:
    """Every way in which `actual` differs from the planned `expected` grant."""
    who = f"broker account {actual.user}"
    problems = [f"{who} has the tag {tag!r}" for tag in actual.tags]
    if "impersonator" in actual.tags:
        problems.append(f"{who} may impersonate others: it can forge any user_id")
    for kind in ("configure", "write", "read"):
        have, want = getattr(actual, kind), getattr(expected, kind)
        if have != want:
            problems.append(
                f"{who} may {kind} {have!r}; its declarations need {want!r}"
            )
    for exchange, (write, read) in sorted(expected.topics.items()):
        have_topic = actual.topics.get(exchange)
        if have_topic is None:
            problems.append(f"{who} has no topic rights on {exchange}: any routing key")
        elif have_topic != (write, read):
            problems.append(
                f"{who} has topic rights {have_topic} on {exchange}; its "
                f"declarations need {(write, read)}"
            )
    for exchange, rights in sorted(actual.topics.items()):
        if exchange not in expected.topics and rights != (NOTHING, NOTHING):
            problems.append(f"{who} has topic rights {rights} on {exchange}")
    return problems


def check_exchanges(
    management: Management, vhost: str, topology: Topology
) -> list[str]:
    """Every shared exchange that is missing or of another type than planned.

    Services only check them passively, so a missing one keeps them from
    starting until the deployment is provisioned again.
    """
    problems = []
    for name, kind in topology.exchanges().items():
        try:
            found = management.get(f"/api/exchanges/{_q(vhost)}/{_q(name)}")
        except TrustConfigError:
            problems.append(f"shared exchange {name} is missing: run baton provision")
            continue
        if found.get("type") != kind.value:
            problems.append(
                f"shared exchange {name} is of type {found.get('type')!r}, "
                f"not {kind.value!r}"
            )
    return problems


def _tags(value: object) -> list[str]:
    if isinstance(value, list):
        return [str(tag) for tag in value if tag]
    return [tag for tag in str(value or "").split(",") if tag]


def _vhost(settings: BrokerSettings) -> str:
    path = urlsplit(settings.amqp_url.get_secret_value()).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _q(name: str) -> str:
    return quote(name, safe="")
