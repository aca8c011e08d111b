"""The operator's own Prometheus metrics: how often do we ship, and how often does it hurt?"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from .status import Phase

RECONCILE_SECONDS = Histogram(
    "teal_reconcile_duration_seconds",
    "Time of one reconcile of one Rollout (read, decide, write, act)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RELEASES = Counter(
    "teal_releases_total",
    "Releases by outcome: started, promoted, aborted, rollbacks, retries, superseded",
    ["namespace", "rollout", "outcome"],
)
RELEASE_SECONDS = Histogram(
    "teal_release_duration_seconds",
    "From a release's start to its promotion",
    ["namespace"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 3600),
)
RELEASE_HELD_SECONDS = Counter(
    "teal_release_held_seconds_total",
    "Time releases were held by a release window or a freeze (not counted in teal_release_duration_seconds)",
    ["namespace"],
)
RECONCILES = Counter("teal_reconciles_total", "Reconciles of each Rollout (read, decide, write, act)", ["namespace", "rollout"])
DEPLOYMENTS_REJECTED = Counter(
    "teal_deployments_rejected_total",
    "Colour Deployments the apiserver refused (400/422 invalid, 403 forbidden by a quota, policy or webhook)",
    ["namespace", "rollout", "code"],
)
PHASE = Gauge("teal_rollout_phase", "1 for the phase each Rollout is in", ["namespace", "rollout", "phase"])

_OUTCOMES = {
    "releases": "started",
    "promoted": "promoted",
    "aborted": "aborted",
    "rollbacks": "rollbacks",
    "retries": "retries",
    "superseded": "superseded",
}


def observe_reconcile(seconds: float, body: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    RECONCILE_SECONDS.observe(seconds)
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    RECONCILES.labels(ns, name).inc()
    before, after = old.get("stats") or {}, new.get("stats") or {}
    for key, outcome in _OUTCOMES.items():
        delta = int(after.get(key, 0)) - int(before.get(key, 0))
        if delta > 0:
            RELEASES.labels(ns, name, outcome).inc(delta)
    if after.get("lastReleaseSeconds") is not None and after.get("lastPromotedAt") != before.get("lastPromotedAt"):
        RELEASE_SECONDS.labels(ns).observe(float(after["lastReleaseSeconds"]))
    held = int(after.get("heldSeconds", 0)) - int(before.get("heldSeconds", 0))
    if held > 0:
        RELEASE_HELD_SECONDS.labels(ns).inc(held)
    for phase in Phase:
        PHASE.labels(ns, name, phase.value).set(1 if new.get("phase") == phase.value else 0)


def serve(port: int) -> None:
    start_http_server(port)
