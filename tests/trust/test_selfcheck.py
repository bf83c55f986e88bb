"""The startup self-check refuses a service whose account can do more than declared."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from urllib.parse import quote, urlsplit

import aio_pika
import pytest

from baton.cli import main as baton
from edge_api.app import create_app
from edge_api.settings import EdgeSettings
from messaging.errors import TrustConfigError
from messaging.provision import NOTHING, Management, definitions, plan
from messaging.selfcheck import UnsafeToStart, verify_startup
from messaging.settings import BrokerSettings
from messaging.trust import Accounts, build_trust
from tests.trust.conftest import Deployment, provision_args
from tests.trust.services import DECLARATIONS

pytestmark = [pytest.mark.broker]


def check(deployment: Deployment, service: str) -> None:
    verify_startup(
        deployment.settings(service), service, DECLARATIONS, vhost=deployment.vhost
    )


def provision_check(deployment: Deployment, *options: str) -> list[str]:
    return provision_args(deployment, "--check", *options)


def test_a_freshly_provisioned_account_passes(deployment: Deployment) -> None:
    for service in ("edge", "core", "audit"):
        check(deployment, service)


def test_an_account_with_broader_write_rights_refuses_to_start(
    deployment: Deployment, management: Management
) -> None:
    user = deployment.accounts.of("audit")
    management.put(
        f"/api/permissions/{quote(deployment.vhost, safe='')}/{user}",
        {"configure": NOTHING, "write": ".*", "read": NOTHING},
    )

    with pytest.raises(UnsafeToStart) as refused:
        check(deployment, "audit")

    assert f"broker account {user} may write '.*'" in str(refused.value)


def test_the_impersonator_tag_refuses_to_start(
    deployment: Deployment, management: Management
) -> None:
    user = deployment.accounts.of("core")
    management.put(
        f"/api/users/{user}",
        {"password": deployment.passwords[user], "tags": "impersonator"},
    )

    with pytest.raises(UnsafeToStart) as refused:
        check(deployment, "core")

    assert "can forge any user_id" in str(refused.value)


def test_missing_topic_rights_refuse_to_start(
    deployment: Deployment, management: Management
) -> None:
    user = deployment.accounts.of("edge")
    management.delete(
        f"/api/topic-permissions/{quote(deployment.vhost, safe='')}/{user}"
    )

    with pytest.raises(UnsafeToStart) as refused:
        check(deployment, "edge")

    assert "no topic rights" in str(refused.value)
    assert "any routing key" in str(refused.value)


def test_provision_check_reports_a_tampered_account(
    deployment: Deployment, management: Management, capsys: pytest.CaptureFixture[str]
) -> None:
    args = provision_check(deployment)
    assert baton(args) == 0

    user = deployment.accounts.of("edge")
    management.put(
        f"/api/permissions/{quote(deployment.vhost, safe='')}/{user}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )

    assert baton(args) == 1
    assert f"broker account {user} may configure '.*'" in capsys.readouterr().err


def test_signing_required_without_a_key_refuses_to_start(
    deployment: Deployment,
) -> None:
    settings = deployment.settings("core", signing_key_file=None)

    with pytest.raises(UnsafeToStart) as refused:
        verify_startup(settings, "core", DECLARATIONS, vhost=deployment.vhost)

    assert "no signing key" in str(refused.value)


def test_trust_on_without_declarations_refuses_to_start() -> None:
    settings = BrokerSettings(trust_publishers=True)

    with pytest.raises(UnsafeToStart) as refused:
        verify_startup(settings, "core", [])

    assert "no declaration of 'core'" in str(refused.value)


def test_signatures_without_the_publisher_check_is_a_contradiction(
    deployment: Deployment,
) -> None:
    settings = deployment.settings("core", trust_publishers=False)

    with pytest.raises(TrustConfigError, match="trust_publishers is off"):
        build_trust(settings, "core", DECLARATIONS)


def test_a_key_of_another_service_is_refused(deployment: Deployment) -> None:
    settings = deployment.settings("core", signing_key_file=deployment.key_file("edge"))

    with pytest.raises(TrustConfigError, match="belongs to edge, not core"):
        build_trust(settings, "core", DECLARATIONS)


@pytest.mark.asyncio
async def test_exported_definitions_load_into_the_broker_and_the_accounts_log_in(
    deployment: Deployment, management: Management, tmp_path: Path
) -> None:
    # The same plan, exported for a boot-time load into a vhost of its own.
    accounts = Accounts(f"{deployment.accounts.prefix}x-")
    topology = BrokerSettings(prefix=deployment.prefix).topology()
    grants = plan(topology, DECLARATIONS, accounts)
    passwords = {grant.user: f"pw-{grant.user}" for grant in grants}
    vhost = f"{deployment.vhost}-boot"
    document = definitions(vhost, topology, grants, passwords)
    try:
        management.load_definitions(document)
        user = accounts.of("core")
        parts = urlsplit(deployment.amqp_url)
        connection = await aio_pika.connect(
            host=parts.hostname or "localhost",
            port=parts.port or 5672,
            login=user,
            password=passwords[user],
            virtualhost=vhost,
        )
        await connection.close()
        shared = {
            name: management.get(f"/api/exchanges/{quote(vhost, safe='')}/{name}")
            for name in topology.exchanges()
        }
    finally:
        management.remove(vhost, passwords)

    assert {name: e["type"] for name, e in shared.items()} == {
        topology.commands: "topic",
        topology.events: "topic",
    }

    assert {u["name"] for u in document["users"]} == set(passwords)
    assert "guest" not in json.dumps(document["users"])
    (core,) = (u for u in document["users"] if u["name"] == accounts.of("core"))
    raw = base64.b64decode(core["password_hash"])
    salt = raw[:4]
    assert (
        raw[4:] == hashlib.sha256(salt + b"pw-" + accounts.of("core").encode()).digest()
    )


def test_exporting_without_a_password_is_refused() -> None:
    topology = BrokerSettings().topology()
    grants = plan(topology, DECLARATIONS)

    with pytest.raises(TrustConfigError, match="no password"):
        definitions("/", topology, grants, {})


def test_provision_check_exclusive_names_accounts_outside_the_plan(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    args = provision_check(deployment, "--exclusive")
    with Management(deployment.management) as management:
        management.put(
            "/api/users/intruder-" + deployment.prefix, {"password": "x", "tags": ""}
        )
        try:
            assert baton(args) == 1
        finally:
            management.remove(None, ["intruder-" + deployment.prefix])

    assert (
        f"unexpected broker account 'intruder-{deployment.prefix}'"
        in capsys.readouterr().err
    )


def test_an_account_missing_on_the_broker_refuses_to_start(
    deployment: Deployment, management: Management
) -> None:
    management.remove(None, [deployment.accounts.of("audit")])

    with pytest.raises(UnsafeToStart, match="cannot read the rights"):
        check(deployment, "audit")


def test_development_settings_start_without_trust_and_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy, signer = verify_startup(BrokerSettings(), "core", DECLARATIONS)

    assert (policy, signer) == (None, None)
    assert not [r for r in caplog.records if r.name == "messaging.selfcheck"]


@pytest.mark.parametrize("login", ["guest", "audit"])
def test_a_service_logged_in_with_another_account_refuses_to_start(
    deployment: Deployment, login: str
) -> None:
    url = deployment.url(None if login == "guest" else login)
    settings = deployment.settings("core", amqp_url=url)

    with pytest.raises(UnsafeToStart) as refused:
        verify_startup(settings, "core", DECLARATIONS, vhost=deployment.vhost)

    account = "guest" if login == "guest" else deployment.accounts.of(login)
    assert (
        f"core logs in as {account!r}, but its broker account is "
        f"{deployment.accounts.of('core')!r}" in str(refused.value)
    )
    if login == "guest":
        assert "has the tag 'administrator'" in str(refused.value)
    else:
        assert f"broker account {account} may read" in str(refused.value)


def edge_settings_without_keys() -> EdgeSettings:
    # The JWKS URL is only fetched once the app runs; the check happens before.
    return EdgeSettings(jwks_url="http://127.0.0.1:9/jwks")


def test_the_edge_runs_the_self_check_when_it_is_created(
    reference_deployment: Deployment, management: Management
) -> None:
    deployment = reference_deployment
    settings = deployment.settings("edge")
    create_app(edge_settings_without_keys(), settings)

    user = deployment.accounts.of("edge")
    management.put(
        f"/api/permissions/{quote(deployment.vhost, safe='')}/{user}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )

    with pytest.raises(UnsafeToStart) as refused:
        create_app(edge_settings_without_keys(), settings)
    assert f"broker account {user} may configure '.*'" in str(refused.value)


def test_rights_in_another_vhost_refuse_to_start(
    deployment: Deployment, management: Management
) -> None:
    user = deployment.accounts.of("audit")
    other = f"{deployment.vhost}-other"
    management.put(f"/api/vhosts/{quote(other, safe='')}", {})
    try:
        management.put(
            f"/api/permissions/{quote(other, safe='')}/{user}",
            {"configure": NOTHING, "write": NOTHING, "read": ".*"},
        )

        with pytest.raises(UnsafeToStart) as refused:
            check(deployment, "audit")
    finally:
        management.remove(other, [])

    assert f"(and vhosts ['{other}'])" in str(refused.value)


@pytest.mark.parametrize("tag", ["administrator", "management", "monitoring"])
def test_any_tag_on_the_account_refuses_to_start(
    deployment: Deployment, management: Management, tag: str
) -> None:
    user = deployment.accounts.of("core")
    management.put(
        f"/api/users/{user}", {"password": deployment.passwords[user], "tags": tag}
    )

    with pytest.raises(UnsafeToStart) as refused:
        check(deployment, "core")

    assert f"broker account {user} has the tag {tag!r}" in str(refused.value)


@pytest.mark.parametrize(
    ("ring", "reason"),
    [(None, "cannot read the key ring"), ('{"keys": []}', "the key ring is empty")],
    ids=["missing", "empty"],
)
def test_a_missing_or_empty_key_ring_refuses_to_start(
    deployment: Deployment, tmp_path: Path, ring: str | None, reason: str
) -> None:
    path = tmp_path / "ring.json"
    if ring is not None:
        path.write_text(ring)
    settings = deployment.settings("core", keyring_file=path)

    with pytest.raises(UnsafeToStart, match=reason):
        verify_startup(settings, "core", DECLARATIONS, vhost=deployment.vhost)


def test_provision_check_reports_a_missing_shared_exchange(
    deployment: Deployment, management: Management, capsys: pytest.CaptureFixture[str]
) -> None:
    events = f"{deployment.prefix}.events"
    management.delete(f"/api/exchanges/{quote(deployment.vhost, safe='')}/{events}")
    args = provision_check(deployment)

    assert baton(args) == 1
    assert f"shared exchange {events} is missing" in capsys.readouterr().err
