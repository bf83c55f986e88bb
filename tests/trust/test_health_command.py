"""``baton health``: the healthcheck of a worker container, asked of the broker."""

from __future__ import annotations

import asyncio

import pytest

from baton.cli import main as baton
from tests.trust.conftest import Deployment

pytestmark = [pytest.mark.broker]


async def health(
    deployment: Deployment, service: str, monkeypatch: pytest.MonkeyPatch
) -> int:
    """`baton health` as a container runs it: a process with its own event loop."""
    monkeypatch.setenv("AMQP_URL", deployment.url(service))
    monkeypatch.setenv("BATON_PREFIX", deployment.prefix)
    return await asyncio.to_thread(baton, ["health", service])


@pytest.mark.asyncio
async def test_a_service_is_healthy_while_its_queue_is_consumed(
    deployment: Deployment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    consumer = await deployment.start("core")

    assert await health(deployment, "core", monkeypatch) == 0
    assert f"{deployment.prefix}.core: 1 consumer(s)" in capsys.readouterr().out

    await consumer.stop()
    assert await health(deployment, "core", monkeypatch) == 1
    assert "nobody consumes" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_a_service_that_never_started_is_unhealthy(
    deployment: Deployment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await health(deployment, "audit", monkeypatch) == 1
    assert f"queue {deployment.prefix}.audit does not exist" in capsys.readouterr().err


def test_an_unreachable_broker_is_its_own_exit_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://core:secret@127.0.0.1:1/")

    assert baton(["health", "core"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach amqp://core@127.0.0.1:1/" in err
    assert "secret" not in err
