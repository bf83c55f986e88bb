"""The compose deployment keeps the broker private and every service on its own account.

There is no container engine here, so the file itself is checked: networks,
ports, secrets, healthchecks, the broker's boot configuration and the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("users", "core", "notifications")
BATON_PROCESSES = ("edge", *SERVICES, "scheduler")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def broker_conf() -> dict[str, str]:
    lines = (ROOT / "deploy" / "rabbitmq.conf").read_text().splitlines()
    pairs = (
        line.split("=", 1) for line in lines if "=" in line and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def test_the_broker_is_on_an_internal_network_with_no_published_port(
    compose: dict[str, Any],
) -> None:
    rabbitmq = compose["services"]["rabbitmq"]

    assert "ports" not in rabbitmq
    assert "expose" not in rabbitmq
    for network in rabbitmq["networks"]:
        assert compose["networks"][network]["internal"] is True


def test_the_edge_is_the_only_published_port(compose: dict[str, Any]) -> None:
    published = {name for name, s in compose["services"].items() if s.get("ports")}

    assert published == {"edge"}
    assert "public" in compose["services"]["edge"]["networks"]
    for name, service in compose["services"].items():
        if name != "edge":
            assert "public" not in service.get("networks", []), name


def test_the_broker_loads_the_generated_definitions_at_boot_and_has_no_guest(
    compose: dict[str, Any],
) -> None:
    rabbitmq = compose["services"]["rabbitmq"]
    conf = broker_conf()
    mounted = {
        volume.split(":")[1]: volume.split(":")[0] for volume in rabbitmq["volumes"]
    }

    # The official image reads conf.d after rabbitmq.conf, and its
    # conf.d/10-defaults.conf sets loopback_users.guest = false: our file must
    # be in conf.d and sort after every file the image brings.
    (ours,) = (target for target in mounted if target.endswith(".conf"))
    directory, _, name = ours.rpartition("/")
    assert directory == "/etc/rabbitmq/conf.d"
    assert mounted[ours] == "./deploy/rabbitmq.conf"
    image_files = [
        "10-defaults.conf",
        "20-management_agent.disable_metrics_collector.conf",
    ]
    assert sorted([*image_files, name])[-1] == name
    assert conf["load_definitions"] == "/run/secrets/definitions"
    assert "definitions" in rabbitmq["secrets"]
    assert compose["secrets"]["definitions"]["file"].startswith("./.baton/")
    # No default user when definitions load at boot; guest is loopback-only anyway.
    assert conf["loopback_users.guest"] == "true"
    assert "default_user" not in conf
    assert "RABBITMQ_DEFAULT_USER" not in str(rabbitmq.get("environment", {}))


def test_each_process_has_its_own_credentials_and_signing_key(
    compose: dict[str, Any],
) -> None:
    seen_sources: set[str] = set()
    for name in BATON_PROCESSES:
        service = compose["services"][name]
        mounts = {
            (s["target"] if isinstance(s, dict) else s): (
                s["source"] if isinstance(s, dict) else s
            )
            for s in service["secrets"]
        }
        assert mounts["broker_password"] == f"{name}_password"
        assert mounts["signing_key"] == f"{name}_key"
        assert mounts["keyring"] == "keyring"
        assert service["environment"]["BATON_BROKER_USER"] == name
        own = {mounts["broker_password"], mounts["signing_key"]}
        assert not own & seen_sources, name
        seen_sources |= own
        assert "operator_password" not in mounts.values()


def test_no_secret_is_written_into_the_compose_file(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            text = str(value)
            assert "amqp://" not in text, (name, key)
            assert "PASSWORD" not in key.upper(), (name, key)
    for secret in compose["secrets"].values():
        assert set(secret) == {"file"}
        assert secret["file"].startswith("./.baton/secrets/")


def test_signing_and_the_publisher_check_are_on_in_every_process(
    compose: dict[str, Any],
) -> None:
    for name in BATON_PROCESSES:
        environment = compose["services"][name]["environment"]
        assert environment["BATON_TRUST_PUBLISHERS"] == "true", name
        assert environment["BATON_REQUIRE_SIGNATURES"] == "true", name
        assert environment["BATON_SIGNING_KEY_FILE"] == "/run/secrets/signing_key"
        assert environment["BATON_KEYRING_FILE"] == "/run/secrets/keyring"


def test_processes_run_the_baton_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]

    assert services["edge"]["command"] == ["baton", "edge"]
    assert services["scheduler"]["command"] == ["baton", "scheduler"]
    for name in SERVICES:
        assert services[name]["command"] == ["baton", "worker", name]


def test_nothing_starts_before_the_broker_is_healthy_and_the_accounts_are_checked(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    check = services["trust-check"]

    assert services["rabbitmq"]["healthcheck"]["test"]
    assert services["edge"]["healthcheck"]["test"]
    assert check["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert check["command"][:3] == ["baton", "provision", "--check"]
    assert "--exclusive" in check["command"]
    assert check["secrets"] == ["operator_password"]
    for name in BATON_PROCESSES:
        condition = services[name]["depends_on"]["trust-check"]["condition"]
        assert condition == "service_completed_successfully", name


def test_every_baton_process_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]

    assert "/health/ready" in " ".join(services["edge"]["healthcheck"]["test"])
    for name in (*SERVICES, "scheduler"):
        check = services[name]["healthcheck"]
        # Through the entrypoint, which builds AMQP_URL from the secret.
        assert check["test"] == ["CMD", "baton-entrypoint", "baton", "health", name]
        assert check["interval"] and check["retries"] >= 1
