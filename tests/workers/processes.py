"""Run ``baton`` subcommands as child processes and read what they say."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest


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
        assert self.child.stdout is not None
        async with asyncio.timeout(30):
            rest = await self.child.stdout.read()
            self.lines += rest.decode().splitlines(keepends=True)
            return await self.child.wait()


async def spawn_baton(
    args: Sequence[str], env: Mapping[str, str], errors: Path
) -> Process:
    """Start ``baton <args>`` with `env`; its stderr goes to the file `errors`."""
    with errors.open("wb") as stderr:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; from baton.cli import main; sys.exit(main())",
            *args,
            env=dict(env),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    return Process(child, errors)
