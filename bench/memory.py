"""Peak memory of a Baton worker draining a backlog, measured in its own process.

The backlog is published first (through Baton's publisher, so the messages carry
real identity headers), then a fresh worker process is started to drain it. The
worker reports the kernel's high-water mark of its resident set; this side also
samples the worker's RSS while it runs, as a cross-check from outside.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from bench.drain import status_mb
from bench.workload import (
    MESSAGE_TYPE,
    PAYLOAD,
    SERVICE,
    bench_prefix,
    declare_service,
    delete_names,
    edge_principal,
    publish_in_windows,
)
from messaging.connection import Link
from messaging.publisher import Publisher
from messaging.settings import BrokerSettings

ROOT = Path(__file__).resolve().parent.parent
FILL_WINDOW = 500


async def worker_memory(
    amqp_url: str, base: str, backlog: int, prefetch: int
) -> dict[str, Any]:
    """Fill a backlog of `backlog` commands, drain it in a worker, report its RSS."""
    settings = BrokerSettings(amqp_url=amqp_url, prefix=bench_prefix(base))
    topology = settings.topology()
    try:
        await declare_service(amqp_url, settings)
        await _fill(settings, backlog)
        report = await _drain_in_subprocess(settings, backlog, prefetch)
    finally:
        await delete_names(
            amqp_url,
            topology.service_queues(SERVICE),
            [*topology.exchanges(), *topology.service_exchanges(SERVICE)],
        )
    return {"backlog": backlog, "prefetch": prefetch, **report}


async def _fill(settings: BrokerSettings, backlog: int) -> None:
    link = Link(settings.amqp_url, name="bench:fill")
    publisher = Publisher(link, confirm_timeout=settings.confirm_timeout)
    commands = settings.topology().commands
    principal = edge_principal()

    async def send(_index: int) -> None:
        await publisher.publish(
            commands,
            MESSAGE_TYPE,
            message_type=MESSAGE_TYPE,
            body=PAYLOAD,
            principal=principal,
        )

    try:
        await link.start()
        await link.wait_ready(10.0)
        await publish_in_windows(send, backlog, FILL_WINDOW)
    finally:
        await publisher.close()
        await link.stop()


async def _drain_in_subprocess(
    settings: BrokerSettings, backlog: int, prefetch: int
) -> dict[str, Any]:
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.drain",
        "--amqp-url",
        settings.amqp_url.get_secret_value(),
        "--prefix",
        settings.prefix,
        "--expect",
        str(backlog),
        "--prefetch",
        str(prefetch),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    sampled_peak = 0.0
    output = asyncio.ensure_future(worker.communicate())
    while not output.done():
        rss = status_mb("VmRSS", worker.pid)
        sampled_peak = max(sampled_peak, rss or 0.0)
        await asyncio.wait([output], timeout=0.05)
    stdout, stderr = output.result()
    if worker.returncode != 0:
        raise RuntimeError(
            f"the drain worker failed ({worker.returncode}): {stderr.decode()[-2000:]}"
        )
    report: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    report["sampled_peak_rss_mb"] = sampled_peak
    return report
