"""The CPU time the broker spends, when it runs on this machine.

On a small machine the broker shares the cores with the benchmark, so the
broker's own cost per message bounds what any client can reach. Linux exposes
every process's CPU time in ``/proc/<pid>/stat``; the RabbitMQ node is the
``beam.smp`` process. Elsewhere (a remote broker, another OS) the figure is
simply not there.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def broker_pid() -> int | None:
    """The pid of a local RabbitMQ node (beam.smp), if one is visible."""
    try:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _command(entry).startswith("beam.smp"):
                return int(entry.name)
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU seconds of `pid` so far, or None when unreadable."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start at state;
    # utime and stime are the 14th and 15th fields of the whole line.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _command(entry: Path) -> str:
    try:
        return (entry / "comm").read_text().strip()
    except OSError:
        return ""
