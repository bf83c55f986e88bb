"""The targets Baton sets itself, judged against a run, and the run as text.

A target is reported as met, not met, or unknown (``null``) when the figure it
needs could not be measured in this run; nothing here fails a run.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    """A figure of the run, the bound it should respect, and how to compare."""

    name: str
    path: tuple[str, ...]
    bound: float
    at_least: bool

    def judge(self, result: dict[str, Any]) -> dict[str, Any]:
        value = _lookup(result, self.path)
        better: Callable[[float, float], bool] = (
            operator.ge if self.at_least else operator.lt
        )
        sign = ">=" if self.at_least else "<"
        return {
            "target": f"{'.'.join(self.path)} {sign} {self.bound}",
            "value": value,
            "met": None if value is None else better(value, self.bound),
        }


TARGETS = (
    Target("pipeline_vs_raw", ("pipeline", "baton", "ratio_to_raw"), 1.0, True),
    Target(
        "signed_pipeline_vs_raw",
        ("pipeline", "baton_signed", "ratio_to_raw"),
        0.85,
        True,
    ),
    Target(
        "pipeline_vs_faststream",
        ("pipeline", "baton", "ratio_to_faststream"),
        2.5,
        True,
    ),
    Target("edge_publish_vs_verify_only", ("edge", "ratio"), 0.8, True),
    Target("decode_and_validate_us", ("identity", "decode_and_validate_us"), 20, False),
    Target("worker_peak_rss_mb", ("memory", "peak_rss_mb"), 150, False),
)


def judge_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {target.name: target.judge(result) for target in TARGETS}


def as_text(result: dict[str, Any]) -> str:
    """The run for a human: one line per figure, then the targets."""
    lines = [
        f"machine: {_pairs(result['machine'])}",
        f"run: {_pairs(result['settings'])}",
    ]
    lines.append("pipeline (msg/s, median; ratios are medians of paired runs):")
    for name, figures in result["pipeline"].items():
        lines.append(f"  {name:<14} {_pairs(figures) if figures else 'n/a'}")
    for section in ("edge", "identity", "memory"):
        figures = result[section]
        lines.append(f"{section}: {_pairs(figures) if figures else 'n/a'}")
    for name, reason in result["unavailable"].items():
        lines.append(f"not measured: {name}: {reason}")
    lines.append("targets:")
    for name, verdict in result["targets"].items():
        met = {True: "met", False: "NOT met", None: "unknown"}[verdict["met"]]
        lines.append(
            f"  {name:<28} {met:<8} {verdict['target']} (got {verdict['value']})"
        )
    lines.append(f"took {result['seconds']}s")
    return "\n".join(lines)


def _lookup(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = result
    for key in path:
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return float(node)


def _pairs(figures: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in figures.items())
