"""A lean HTTP/1.1 load generator: keep-alive connections, one request in flight each.

An httpx client spends a few milliseconds of CPU per request, more than the edge
it loads, so with it the benchmark measured the client. This one writes the same
prepared request bytes on each connection and reads back the status line,
headers and a ``Content-Length`` body, which is all the edge sends; it costs
tens of microseconds a request. It checks every status, so a run cannot count
errors as throughput.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

HEADER_END = b"\r\n\r\n"


class LoadError(RuntimeError):
    """The server answered something other than what the run expects."""


@dataclass
class LoadResult:
    """Latencies of every request of one run, and the run's duration."""

    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile_ms(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000


def request_bytes(
    host: str, path: str, headers: Mapping[str, str], body: bytes
) -> bytes:
    """A complete POST request, ready to be written as it is, again and again."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def post_load(
    host: str,
    port: int,
    request: bytes,
    *,
    requests: int,
    concurrency: int,
    expect_status: int,
) -> LoadResult:
    """Send `request` `requests` times over `concurrency` keep-alive connections."""
    remaining = iter(range(requests))
    result = LoadResult(seconds=0.0)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for _ in remaining:
                sent = time.perf_counter()
                writer.write(request)
                status, keep_alive = await _response(reader)
                result.latencies.append(time.perf_counter() - sent)
                if status != expect_status:
                    raise LoadError(f"answered {status}, not {expect_status}")
                if not keep_alive:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


async def _response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; its status, and whether the connection stays open."""
    head = await reader.readuntil(HEADER_END)
    status_line, *header_lines = head[: -len(HEADER_END)].split(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length, keep_alive = 0, True
    for line in header_lines:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
        elif name == b"transfer-encoding":
            raise LoadError("chunked responses are not what the edge sends")
    await reader.readexactly(length)
    return status, keep_alive
