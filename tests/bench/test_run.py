"""The benchmark in a tiny mode: every figure present, nothing left on the broker.

Only the shape and the bookkeeping are checked; how fast anything was is never
asserted, because a shared test machine makes timings meaningless.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.brokercpu import broker_pid, cpu_seconds
from tests.management import ManagementApi

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
BACKLOG = 200
PIPELINES = {
    "baton",
    "baton_signed",
    "raw_aio_pika",
    "raw_identity_headers",
    "faststream",
}
IDENTITY = {
    "encode_us",
    "decode_us",
    "validate_payload_us",
    "decode_and_validate_us",
    "sign_us",
    "sign_batched_us",
    "verify_us",
    "ed25519_sign_us",
    "ed25519_verify_us",
}


def run_bench(amqp_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own script, fixed arguments
        [sys.executable, str(ROOT / "bench" / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, "AMQP_URL": amqp_url},
        check=False,
    )


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"bt{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def result(amqp_url: str, prefix: str) -> dict[str, Any]:
    done = run_bench(
        amqp_url,
        "--quick",
        "--edge-requests",
        "50",
        "--messages",
        "50",
        "--repeat",
        "1",
        "--backlog",
        str(BACKLOG),
        "--prefix",
        prefix,
        "--json",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_every_pipeline_is_measured_or_said_to_be_missing(result):
    pipeline = result["pipeline"]

    assert set(pipeline) == PIPELINES
    for name, figures in pipeline.items():
        if figures is None:
            assert result["unavailable"][name]
            continue
        assert figures["msg_per_s"] > 0
        assert len(figures["runs"]) == 1
        assert figures["ratio_to_raw"] > 0
        assert figures["cpu_us_per_msg"] > 0
        assert figures["cpu_ratio_to_raw"] > 0
        # Only a broker on this machine can be measured; none is reported as null.
        broker_cpu = figures["broker_cpu_us_per_msg"]
        assert broker_cpu is None or broker_cpu >= 0
    assert pipeline["raw_aio_pika"]["ratio_to_raw"] == 1.0
    assert pipeline["baton"]["ratio_to_faststream"] > 0


def test_identity_costs_are_positive_microseconds(result):
    identity = result["identity"]

    assert set(identity) >= IDENTITY
    assert all(identity[name] > 0 for name in IDENTITY)


def test_memory_worker_drains_the_whole_backlog(result):
    memory = result["memory"]

    assert memory["backlog"] == BACKLOG
    assert memory["handled"] == BACKLOG
    assert memory["peak_rss_mb"] >= memory["rss_start_mb"] > 0
    assert result["settings"]["full_backlog"] is False


def test_edge_is_measured_or_said_to_be_missing(result):
    edge = result["edge"]

    if edge is None:
        assert result["unavailable"]["edge"]
    else:
        assert edge["publish"]["requests_per_s"] > 0
        assert edge["verify_only"]["requests_per_s"] > 0
        assert edge["ratio"] > 0


def test_targets_are_judged_only_when_their_figure_exists(result):
    targets = result["targets"]

    assert len(targets) == 6
    for verdict in targets.values():
        assert verdict["met"] in (True, False, None)
        assert (verdict["met"] is None) == (verdict["value"] is None)
    assert (
        targets["decode_and_validate_us"]["value"]
        == (result["identity"]["decode_and_validate_us"])
    )


def test_machine_is_described(result):
    machine = result["machine"]

    assert machine["nproc"] >= 1
    assert machine["rabbitmq"]
    assert machine["python"].startswith("3.")


@pytest.mark.admin
@pytest.mark.asyncio
async def test_run_leaves_no_queue_or_exchange_behind(
    result, prefix, management_api: ManagementApi
):
    names = await management_api.names("queues")
    names += await management_api.names("exchanges")

    assert result["settings"]["prefix"] == prefix
    assert [name for name in names if name.startswith(prefix)] == []


def test_a_prefix_outside_the_pattern_is_refused(amqp_url):
    done = run_bench(amqp_url, "--prefix", "Bad.Prefix", "--json")

    assert done.returncode == 2
    assert "Bad.Prefix" in done.stderr
    assert done.stdout == ""


def test_a_local_brokers_cpu_time_is_read_and_a_missing_process_gives_none():
    pid = broker_pid()
    if pid is None:
        pytest.skip("no RabbitMQ node runs on this machine (a container broker)")
    before = cpu_seconds(pid)
    assert before is not None and before > 0
    assert cpu_seconds(-1) is None
    assert cpu_seconds(None) is None
