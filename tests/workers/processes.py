"""Run ``baton`` subcommands as child processes and read what they say."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from messaging.errors import TrustConfigError
from messaging.provision import Management
from messaging.settings import BrokerSettings

BATON = ("-c", "import sys; from baton.cli import main; sys.exit(main())")


class Process:
    """A ``baton`` subcommand running as a child process, read line by line."""

    def __init__(self, child: asyncio.subprocess.Process, errors: Path) -> None:
        self.child = child
        self.errors = errors
        self.lines: list[str] = []

    async def wait_for_line(self, text: str, timeout: float = 30.0) -> None:
        """Read stdout until a line contains `text`."""
        assert self.child.stdout is not None
        async with asyncio.timeout(timeout):
            while not any(text in line for line in self.lines):
                raw = await self.child.stdout.readline()
                if not raw:
                    pytest.fail(f"exited before saying {text!r}: {self.lines}")
                self.lines.append(raw.decode())

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        self.child.send_signal(sig)
        return await self.finish()

    async def finish(self, timeout: float = 30.0) -> int:
        """Read what is left of stdout and wait for the exit code."""
        assert self.child.stdout is not None
        async with asyncio.timeout(timeout):
            rest = await self.child.stdout.read()
            self.lines += rest.decode().splitlines(keepends=True)
            return await self.child.wait()


def baton_env(
    settings: BrokerSettings, state_dir: Path, **extra: str
) -> dict[str, str]:
    """A child's environment: the test's broker, prefix and delays, no edge keys.

    The retry delays are the test's own, so the child's retry queues are the
    ones the test's clean-up deletes. Key sources of the outer environment
    (``BATON_EDGE_*``) are dropped: each test says which edge it wants.
    """
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith("BATON_")
    }
    return {
        **inherited,
        "AMQP_URL": settings.amqp_url.get_secret_value(),
        "BATON_PREFIX": settings.prefix,
        "BATON_RETRY_DELAYS": json.dumps(list(settings.retry_delays)),
        "BATON_STATE_DIR": str(state_dir),
        **extra,
    }


async def spawn_baton(
    args: Sequence[str],
    env: Mapping[str, str],
    errors: Path,
    *,
    cwd: Path | None = None,
) -> Process:
    """Start ``baton <args>`` with `env`; its stderr goes to the file `errors`."""
    with errors.open("wb") as stderr:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            *BATON,
            *args,
            env=dict(env),
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    return Process(child, errors)


async def baton_output(
    args: Sequence[str], env: Mapping[str, str], *, cwd: Path | None = None
) -> str:
    """Run ``baton <args>`` to the end and return its stdout; fail on non-zero."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        *BATON,
        *args,
        env=dict(env),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await child.communicate()
    if child.returncode != 0:
        pytest.fail(f"baton {' '.join(args)} exited {child.returncode}: {err!r}")
    return out.decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def leftovers(amqp_url: str, prefix: str) -> list[str] | None:
    """Queues and exchanges under `prefix` the broker still holds.

    None when the management API beside the broker is not reachable (a
    testcontainers broker does not publish its port), so nothing can be said.
    """
    parts = urlsplit(amqp_url)
    url = f"http://{parts.username}:{parts.password}@{parts.hostname}:15672/"
    try:
        with Management(url) as api:
            queues = api.get("/api/queues?columns=name")
            exchanges = api.get("/api/exchanges?columns=name")
    except TrustConfigError:
        return None
    names = [item["name"] for item in [*queues, *exchanges]]
    return sorted(name for name in names if name.startswith(f"{prefix}."))
