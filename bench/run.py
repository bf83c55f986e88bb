"""Measure Baton: worker pipeline, edge, identity cost and worker memory.

    python bench/run.py            # the full run, several minutes
    python bench/run.py --quick    # about a minute
    python bench/run.py --json     # one JSON object with every figure

Everything runs against the broker at AMQP_URL (default
amqp://guest:guest@localhost:5672/) under a random name prefix that is deleted
afterwards. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the repository importable, as `python -m` would.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.edge import EdgeLoad, edge_figures, edge_unavailable
from bench.identity_cost import identity_costs
from bench.machine import describe_machine
from bench.memory import worker_memory
from bench.pipeline import PIPELINES, compare, pipelines
from bench.report import as_text, judge_targets
from bench.workload import RunSpec, run_prefix

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"
FULL = {"messages": 10_000, "repeat": 5, "backlog": 100_000, "edge_requests": 2_000}
QUICK = {"messages": 1_000, "repeat": 3, "backlog": 5_000, "edge_requests": 200}
# Leaves room for the suffixes each measurement adds (see bench.workload).
PREFIX = re.compile(r"[a-z][a-z0-9]{0,19}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description="Measure Baton against raw aio-pika."
    )
    parser.add_argument("--quick", action="store_true", help="a run of about a minute")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--messages", type=int, help="messages per pipeline run")
    parser.add_argument("--repeat", type=int, help="interleaved repetitions")
    parser.add_argument("--backlog", type=int, help="messages the memory worker drains")
    parser.add_argument("--edge-requests", type=int, help="requests per edge run")
    parser.add_argument(
        "--edge-concurrency", type=int, default=32, help="edge requests in flight"
    )
    parser.add_argument("--window", type=int, default=100, help="unconfirmed publishes")
    parser.add_argument("--prefetch", type=int, default=32, help="consumer prefetch")
    parser.add_argument(
        "--prefix",
        type=_prefix,
        default=run_prefix(),
        help="base of every queue and exchange name (default: random)",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PIPELINES),
        help="profile one pipeline run instead of measuring (needs pyinstrument)",
    )
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def _amqp_url() -> str:
    return os.environ.get("AMQP_URL", DEFAULT_URL)


def _prefix(value: str) -> str:
    if not PREFIX.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} does not match {PREFIX.pattern}")
    return value


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every section once, in order, and gather the figures."""
    started = time.perf_counter()
    amqp_url = _amqp_url()
    unavailable: dict[str, str] = {}
    result: dict[str, Any] = {
        "machine": await describe_machine(amqp_url),
        "settings": {
            "quick": args.quick,
            "messages": args.messages,
            "repeat": args.repeat,
            "window": args.window,
            "prefetch": args.prefetch,
            "backlog": args.backlog,
            "edge_requests": args.edge_requests,
            "edge_concurrency": args.edge_concurrency,
            "prefix": args.prefix,
            "full_backlog": args.backlog >= FULL["backlog"],
        },
        "unavailable": unavailable,
    }

    spec = RunSpec(amqp_url, args.prefix, args.messages, args.window, args.prefetch)
    result["pipeline"] = await compare(pipelines(), spec, args.repeat)

    result["identity"] = await identity_costs(quick=args.quick)
    result["memory"] = await worker_memory(
        amqp_url, args.prefix, args.backlog, args.prefetch
    )

    if reason := edge_unavailable():
        result["edge"] = None
        unavailable["edge"] = reason
    else:
        load = EdgeLoad(args.edge_requests, args.edge_concurrency, args.repeat)
        result["edge"] = await edge_figures(amqp_url, args.prefix, load)

    result["targets"] = judge_targets(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile:
        from bench.profile import profile_pipeline

        spec = RunSpec(
            _amqp_url(), args.prefix, args.messages, args.window, args.prefetch
        )
        print(asyncio.run(profile_pipeline(args.profile, spec)))
        return 0
    result = asyncio.run(measure(args))
    print(json.dumps(result, indent=2) if args.json else as_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
