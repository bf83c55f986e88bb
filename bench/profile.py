"""Where Baton's per-message time goes: one pipeline run under a sampling profiler.

Publisher and consumer run in this one process, as in the pipeline measurement,
so the profile covers both ends of the path: encoding, signing, the AMQP client,
trust checks, decoding, validation, the handler and the ack. The profiler
samples the whole thread (``async_mode="disabled"``), event loop included.
"""

from __future__ import annotations

from pyinstrument import Profiler

from bench.pipeline import PIPELINES
from bench.workload import RunSpec

FLAT_LINES = 40


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

    flat = profiler.output_text(flat=True, time="percent_of_total")
    tree = profiler.output_text(time="percent_of_total", short_mode=True)
    head = "\n".join(flat.splitlines()[:FLAT_LINES])
    summary = (
        f"{name}: {spec.messages} messages at {timing.rate:.0f} msg/s, "
        f"{timing.cpu_us_per_message:.0f} us CPU each (profiler included)"
    )
    return f"{summary}\n{head}\n\n{tree}"
