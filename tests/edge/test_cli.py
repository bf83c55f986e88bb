"""The first minute: ``baton token`` mints, ``baton edge`` serves, a worker handles."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from baton.cli import main
from contracts import PlanCreate
from edge_api.app import key_source
from edge_api.dev_issuer import DevIssuer
from edge_api.tokens import TokenVerifier
from messaging.handlers import Context, HandlerSpec
from messaging.identity import Principal
from tests.edge.conftest import StartConsumer, bearer

GOAL = {"goal": "run a marathon", "horizon_days": 90}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory, and no edge key source in the environment."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("BATON_EDGE_"):
            monkeypatch.delenv(name)
    return tmp_path


def mint(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["token", *args]) == 0
    return capsys.readouterr().out.strip()


@pytest.mark.asyncio
async def test_token_makes_a_private_dev_key_once_and_the_edge_trusts_it(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = mint(capsys, "--sub", "alice", "--roles", "planner,reader")
    issuer = DevIssuer()
    private = issuer.private_key_file.read_bytes()
    again = mint(capsys, "--sub", "bob")

    settings = issuer.edge_settings()
    keys = key_source(settings)
    verifier = TokenVerifier(settings, keys)
    alice = await verifier.principal(token)
    bob = await verifier.principal(again)
    await keys.aclose()

    assert issuer.private_key_file.read_bytes() == private
    assert stat.S_IMODE(issuer.private_key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((workdir / ".baton").stat().st_mode) == 0o700
    assert settings.public_keys == (issuer.public_key_file,)
    assert (alice.subject, alice.roles) == ("alice", frozenset({"planner", "reader"}))
    assert (bob.subject, bob.roles) == ("bob", frozenset())


def test_token_warns_when_the_edge_trusts_another_key_source(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_EDGE_JWKS_URL", "https://idp.example/jwks.json")

    assert main(["token", "--sub", "alice"]) == 0

    assert "will not accept this development token" in capsys.readouterr().err


def test_token_refuses_a_tenant_the_edge_does_not_read(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "--sub", "alice", "--tenant", "acme"]) == 2

    assert "reads no tenant claim" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def edge_process(workdir: Path, amqp_url: str, prefix: str) -> Iterator[str]:
    """``baton edge`` as a user starts it; the base URL it listens on."""
    port = free_port()
    env = {
        **os.environ,
        "AMQP_URL": amqp_url,
        "BATON_PREFIX": prefix,
        "BATON_EDGE_PORT": str(port),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from baton.cli import main; sys.exit(main())",
            "edge",
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
        assert f"listening on http://127.0.0.1:{port}" in output


async def wait_ready(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(60):
        while True:
            try:
                if (await client.get("/health/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


@pytest.mark.asyncio
@pytest.mark.broker
async def test_the_first_minute_start_mint_submit_handled(
    edge_process: str,
    capsys: pytest.CaptureFixture[str],
    start_consumer: StartConsumer,
) -> None:
    handled: asyncio.Queue[tuple[Principal, PlanCreate]] = asyncio.Queue()

    async def create(context: Context, payload: PlanCreate) -> None:
        await handled.put((context.principal, payload))

    await start_consumer("planner", [HandlerSpec("plan.create", PlanCreate, create)])
    token = mint(capsys, "--sub", "alice", "--roles", "planner")

    async with httpx.AsyncClient(base_url=edge_process) as client:
        await wait_ready(client)
        response = await client.post(
            "/v1/commands/plan.create", json=GOAL, headers=bearer(token)
        )
        principal, payload = await asyncio.wait_for(handled.get(), 10)

    assert response.status_code == 202
    assert principal.subject == "alice"
    assert principal.roles == {"planner"}
    assert payload == PlanCreate(**GOAL)


def test_the_dev_key_directory_can_be_chosen(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_EDGE_DEV_KEY_DIR", str(workdir / "keys"))

    mint(capsys, "--sub", "alice")

    assert (workdir / "keys" / "edge-dev.key").exists()
    assert not (workdir / ".baton").exists()


@pytest.mark.parametrize("command", ["token", "edge"])
def test_an_unusable_dev_key_directory_is_a_clear_error_not_a_traceback(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    (workdir / "a-file").write_text("not a directory")
    monkeypatch.setenv("BATON_EDGE_DEV_KEY_DIR", str(workdir / "a-file" / "keys"))
    args = ["token", "--sub", "alice"] if command == "token" else ["edge"]

    assert main(args) == 2

    assert "BATON_EDGE_DEV_KEY_DIR" in capsys.readouterr().err


def test_edge_with_a_missing_public_key_file_says_so_instead_of_serving(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_EDGE_PUBLIC_KEYS", f'["{workdir / "absent.pem"}"]')

    assert main(["edge"]) == 2

    captured = capsys.readouterr()
    assert "cannot start" in captured.err and "absent.pem" in captured.err
    assert "listening" not in captured.out
