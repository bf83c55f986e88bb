"""A Baton worker process that drains a backlog and reports its own memory.

Started by :mod:`bench.memory` as ``python -m bench.drain``; prints one JSON
line: messages handled, seconds, resident memory at start and its peak
(``VmHWM``, the kernel's high-water mark of the resident set).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from bench.workload import SERVICE, Tally, counting_handler
from messaging.consumer import Consumer
from messaging.settings import BrokerSettings


def status_mb(field: str, pid: int | str = "self") -> float | None:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM) in MiB, None if gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


async def drain(
    amqp_url: str, prefix: str, expected: int, prefetch: int
) -> dict[str, float | int | None]:
    """Consume `expected` messages of the benchmark service, then stop cleanly."""
    settings = BrokerSettings(amqp_url=amqp_url, prefix=prefix, prefetch=prefetch)
    tally = Tally(expected)
    consumer = Consumer(SERVICE, [counting_handler(tally)], settings)
    rss_start = status_mb("VmRSS")

    started = time.perf_counter()
    await consumer.start()
    try:
        await asyncio.wait_for(tally.done.wait(), 60 + expected / 100)
    finally:
        seconds = time.perf_counter() - started
        await consumer.stop()
    return {
        "handled": tally.count,
        "seconds": round(seconds, 2),
        "rss_start_mb": rss_start,
        "peak_rss_mb": status_mb("VmHWM"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--prefetch", type=int, required=True)
    args = parser.parse_args()
    report = asyncio.run(drain(args.amqp_url, args.prefix, args.expect, args.prefetch))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
