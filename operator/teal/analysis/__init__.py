"""Teal's analysis engine: PromQL metrics measured on a colour and judged into a verdict.

- model:      Metric, parse_metrics, render, QueryResult, Measurement, judge (pure)
- run:        due, advance, record: the state of one analysis run (pure)
- prometheus: Provider, PrometheusProvider, provider_from_spec, measure (I/O)
- engine:     evaluate (blocking) / evaluate_async (awaits the queries): one tick for the reconcile loop
- kube:       template_fetcher, secret_reader (Kubernetes lookups)

Nothing here depends on kopf.
"""

from __future__ import annotations

import importlib
from typing import Any

from .model import (
    ERROR,
    FAILED,
    INCONCLUSIVE,
    SUCCESSFUL,
    AnalysisConfigError,
    Measurement,
    Metric,
    QueryResult,
    check_promql,
    judge,
    parse_metrics,
    render,
)
from .run import RUNNING, advance, due, record

__all__ = [
    "SUCCESSFUL",
    "FAILED",
    "INCONCLUSIVE",
    "ERROR",
    "RUNNING",
    "AnalysisConfigError",
    "Metric",
    "QueryResult",
    "Measurement",
    "parse_metrics",
    "render",
    "check_promql",
    "judge",
    "due",
    "advance",
    "record",
    # lazily imported (they pull in requests / kubernetes):
    "Provider",
    "PrometheusProvider",
    "ProviderCache",
    "provider_from_spec",
    "measure",
    "Evaluation",
    "evaluate",
    "evaluate_async",
    "names_for_key",
    "rollout_variables",
    "template_fetcher",
    "secret_reader",
]

_LAZY = {
    "Provider": "prometheus",
    "PrometheusProvider": "prometheus",
    "ProviderCache": "prometheus",
    "provider_from_spec": "prometheus",
    "measure": "prometheus",
    "Evaluation": "engine",
    "evaluate": "engine",
    "evaluate_async": "engine",
    "names_for_key": "engine",
    "rollout_variables": "engine",
    "template_fetcher": "kube",
    "secret_reader": "kube",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'teal.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
