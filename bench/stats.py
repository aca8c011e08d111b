"""Percentiles and one-line summaries for the benchmarks."""

from __future__ import annotations

import statistics


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))]


def summary(name: str, seconds: list[float]) -> str:
    ms = [v * 1000 for v in seconds]
    return (
        f"{name}: n={len(ms)} p50={pct(ms, 50):.0f}ms p90={pct(ms, 90):.0f}ms p99={pct(ms, 99):.0f}ms "
        f"mean={statistics.mean(ms):.0f}ms max={max(ms):.0f}ms"
    )
