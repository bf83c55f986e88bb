"""Where Baton's per-message time goes: one pipeline run under a sampling profiler.

Publisher and consumer run in this one process, as in the pipeline measurement,
so the profile covers both ends of the path: encoding, signing, the AMQP client,
trust checks, decoding, validation, the handler and the ack. The profiler
samples the whole thread (``async_mode="disabled"``), event loop included.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from pyinstrument import Profiler
from pyinstrument.frame import Frame

from bench.pipeline import PIPELINES
from bench.workload import RunSpec

FLAT_LINES = 40
# Where a sample's time is charged: the innermost frame from one of these paths.
# Standard library and built-in frames (a regex match, a dict copy) are charged
# to the library code that called them; what no library called is the event loop.
OWNERS = {
    "/messaging/": "baton (messaging/)",
    "/contracts/": "baton (messaging/)",
    "/bench/": "benchmark harness",
    "/aio_pika/": "aio-pika",
    "/aiormq/": "aiormq",
    "/pamqp/": "pamqp (frames, header tables)",
    "/pydantic": "pydantic",
    "/faststream/": "faststream",
    "/fast_depends/": "faststream",
    "/cryptography/": "cryptography",
}


async def profile_pipeline(name: str, spec: RunSpec) -> str:
    """A flat list of self time per function, then the call tree, as text."""
    pipeline = PIPELINES[name]
    await pipeline(spec)  # warm-up: imports, connections, caches

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        timing = await pipeline(spec)
    finally:
        profiler.stop()

    session = profiler.last_session
    owners = time_by_owner(session.root_frame() if session else None)
    total = sum(owners.values()) or 1.0
    by_owner = "\n".join(
        f"{share / total:6.1%}  {owner}"
        for owner, share in sorted(owners.items(), key=lambda item: -item[1])
    )
    flat = profiler.output_text(flat=True, time="percent_of_total")
    tree = profiler.output_text(time="percent_of_total", short_mode=True)
    head = "\n".join(flat.splitlines()[:FLAT_LINES])
    summary = (
        f"{name}: {spec.messages} messages at {timing.rate:.0f} msg/s, "
        f"{timing.cpu_us_per_message:.0f} us CPU each (profiler included)"
    )
    return f"{summary}\n\ntime by owner:\n{by_owner}\n{head}\n\n{tree}"


def time_by_owner(root: Frame | None) -> dict[str, float]:
    """Every frame's self time, charged to the library that owns it (see OWNERS)."""
    charged: defaultdict[str, float] = defaultdict(float)
    if root is None:
        return charged
    for frame, owner in _walk(root, "event loop, asyncio, sockets"):
        charged[owner] += frame.total_self_time
    return charged


def _walk(frame: Frame, owner: str) -> Iterator[tuple[Frame, str]]:
    path = frame.file_path or ""
    owner = next((name for part, name in OWNERS.items() if part in path), owner)
    yield frame, owner
    for child in frame.children:
        yield from _walk(child, owner)
