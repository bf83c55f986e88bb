"""What the figures were measured on: CPU, core count, and software versions."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import aio_pika


async def describe_machine(amqp_url: str) -> dict[str, object]:
    """The facts a reader needs to compare a run with another machine's."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "rabbitmq": await _rabbitmq_version(amqp_url),
        "aio_pika": _package("aio-pika"),
        "faststream": _package("faststream"),
        "pydantic": _package("pydantic"),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


async def _rabbitmq_version(amqp_url: str) -> str | None:
    connection = await aio_pika.connect(amqp_url)
    try:
        transport = connection.transport
        if transport is None:
            return None
        found = transport.connection.server_properties.get("version")
    finally:
        await connection.close()
    return found.decode() if isinstance(found, bytes) else str(found)


def _package(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
