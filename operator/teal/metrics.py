"""The operator's own Prometheus metrics: how often do we ship, how often does it hurt, and
how fast do we recover? docs/metrics.md is the reference (tests/test_metrics_reference.py
checks that it lists exactly what this module registers).

Everything per Rollout is labelled `namespace` and `rollout` first (forget_rollout removes a
deleted Rollout's series by that prefix); labels are bounded: no revision, hash or image.
Release outcomes come from the release history in status (status.history, newest first): an
entry that a reconcile added is counted once, by the reconcile that added it, so a restart
or a leader change never counts it again.
"""

from __future__ import annotations

import importlib.metadata
import platform
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from .status import Phase

COLORS = ("blue", "green")  # teal.api.COLORS (not imported: api imports much more)
VERDICTS = ("Successful", "Failed", "Inconclusive", "Error")  # teal.analysis.model's verdicts
ERROR_KINDS = ("api", "conflict", "spec", "decide", "analysis", "router", "internal")

RECONCILE_SECONDS = Histogram(
    "teal_reconcile_duration_seconds",
    "Time of one reconcile of one Rollout (read, decide, write, act)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RELEASES = Counter(
    "teal_releases_total",
    "Releases by outcome: started, promoted, aborted, rollbacks, retries, superseded (from status.stats)",
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
INFO = Gauge(
    "teal_rollout_info",
    "1 for each Rollout: its strategy and traffic router (service: the Services' selectors)",
    ["namespace", "rollout", "strategy", "router"],
)
ACTIVE_COLOR = Gauge("teal_rollout_active_color", "1 for the colour that serves users", ["namespace", "rollout", "color"])
WEIGHT = Gauge(
    "teal_rollout_weight",
    "Percent of user traffic on each colour, as read back from the router or the Services",
    ["namespace", "rollout", "color"],
)
OUTCOMES = Counter(
    "teal_release_outcomes_total",
    "Finished releases by outcome (Promoted, Aborted, Reverted, Superseded, RolledBack) and reason",
    ["namespace", "rollout", "outcome", "reason"],
)
REACHED_USERS = Counter(
    "teal_releases_reached_users_total",
    "Finished releases that user traffic reached (switchedAt set): the denominator of the change-failure rate",
    ["namespace", "rollout"],
)
RESTORE_SECONDS = Histogram(
    "teal_time_to_restore_seconds",
    "Reverted releases: from the fault detected to all traffic back on the stable colour",
    ["namespace"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
LEAD_SECONDS = Histogram(
    "teal_lead_time_seconds",
    "From the template's teal.dev/source-time (the commit) to user traffic on the release",
    ["namespace"],
    buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200, 604800),
)
ANALYSIS_VALUE = Gauge(
    "teal_analysis_value", "The last value each analysis metric measured (NaN: no value)", ["namespace", "rollout", "metric"]
)
ANALYSIS_VERDICT = Gauge(
    "teal_analysis_verdict",
    "1 for the verdict of each analysis metric's last measurement (Successful, Failed, Inconclusive, Error)",
    ["namespace", "rollout", "metric", "verdict"],
)
ANALYSIS_MEASUREMENTS = Counter(
    "teal_analysis_measurements_total",
    "Analysis measurements by verdict (Error: the query could not be answered)",
    ["namespace", "rollout", "metric", "verdict"],
)
ANALYSIS_THRESHOLD = Gauge(
    "teal_analysis_threshold",
    "The thresholdRange bounds (min, max) of each analysis metric defined in the Rollout",
    ["namespace", "rollout", "metric", "bound"],
)
RECONCILE_ERRORS = Counter(
    "teal_reconcile_errors_total",
    "Failed reconciles by kind: api, conflict, spec, decide, analysis, router, internal",
    ["kind"],
)
BUILD_INFO = Gauge(
    "teal_build_info", "1, labelled with the operator's version and its Python and kopf", ["version", "python", "kopf"]
)
NOTIFICATIONS = Counter(
    "teal_notifications_total",
    "Release notifications by target and result: sent, failed (gave up after the tries), dropped (unknown target, unreadable URL)",
    ["target", "result"],
)

# The collectors with a series per Rollout: their first two labels are namespace, rollout.
PER_ROLLOUT = (
    RELEASES,
    RECONCILES,
    DEPLOYMENTS_REJECTED,
    PHASE,
    INFO,
    ACTIVE_COLOR,
    WEIGHT,
    OUTCOMES,
    REACHED_USERS,
    ANALYSIS_VALUE,
    ANALYSIS_VERDICT,
    ANALYSIS_MEASUREMENTS,
    ANALYSIS_THRESHOLD,
)

# What was last exported per Rollout for the series that the spec decides (so that a changed
# spec drops the old ones without a scan of every Rollout's series on each reconcile).
_INFO_LABELS: dict[tuple[str, str], tuple[str, str, str, str]] = {}
_THRESHOLDS: dict[tuple[str, str], dict[tuple[str, ...], float]] = {}

_OUTCOMES = {
    "releases": "started",
    "promoted": "promoted",
    "aborted": "aborted",
    "rollbacks": "rollbacks",
    "retries": "retries",
    "superseded": "superseded",
}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


BUILD_INFO.labels(_version("teal-operator"), platform.python_version(), _version("kopf")).set(1)
for _kind in ERROR_KINDS:
    RECONCILE_ERRORS.labels(_kind)  # every kind exists from the start: rate() and alerts see a 0


def observe_reconcile(seconds: float, body: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    RECONCILE_SECONDS.observe(seconds)
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    RECONCILES.labels(ns, name).inc()
    # Series that exist at 0 before their first increment, so that increase() sees that one too.
    REACHED_USERS.labels(ns, name)
    RESTORE_SECONDS.labels(ns)
    LEAD_SECONDS.labels(ns)
    _stats(ns, name, old.get("stats") or {}, new.get("stats") or {})
    for phase in Phase:
        PHASE.labels(ns, name, phase.value).set(1 if new.get("phase") == phase.value else 0)
    _info(ns, name, body.get("spec") or {})
    _traffic(ns, name, new)
    _history(ns, name, old.get("history"), new.get("history"))
    _thresholds(ns, name, body.get("spec") or {})
    _analysis(ns, name, old.get("analysis"), new.get("analysis"))


def _stats(ns: str, name: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    for key, outcome in _OUTCOMES.items():
        delta = int(after.get(key, 0)) - int(before.get(key, 0))
        if delta > 0:
            RELEASES.labels(ns, name, outcome).inc(delta)
    if after.get("lastReleaseSeconds") is not None and after.get("lastPromotedAt") != before.get("lastPromotedAt"):
        RELEASE_SECONDS.labels(ns).observe(float(after["lastReleaseSeconds"]))
    held = int(after.get("heldSeconds", 0)) - int(before.get("heldSeconds", 0))
    if held > 0:
        RELEASE_HELD_SECONDS.labels(ns).inc(held)


def _info(ns: str, name: str, spec: Mapping[str, Any]) -> None:
    strategies = sorted(spec.get("strategy") or {}) or ["blueGreen"]
    routing = ((spec.get("strategy") or {}).get("blueGreen") or {}).get("trafficRouting") or {}
    router = next((k for k in sorted(routing) if isinstance(routing[k], Mapping)), "service")
    labels = (ns, name, strategies[0], router)
    old = _INFO_LABELS.get((ns, name))
    if old != labels:
        if old is not None:  # the spec changed its router: one info series per Rollout
            INFO.remove(*old)
        INFO.labels(*labels).set(1)
        _INFO_LABELS[(ns, name)] = labels


def _traffic(ns: str, name: str, new: Mapping[str, Any]) -> None:
    active = new.get("activeColor")
    if active in COLORS:
        for color in COLORS:
            ACTIVE_COLOR.labels(ns, name, color).set(1 if color == active else 0)
    weights = new.get("weights")
    if isinstance(weights, Mapping):
        for color in COLORS:
            if isinstance(weights.get(color), int | float):
                WEIGHT.labels(ns, name, color).set(float(weights[color]))


def _entry_key(e: Mapping[str, Any]) -> tuple[Any, ...]:
    return (e.get("revision"), e.get("hash"), e.get("startedAt"), e.get("finishedAt"), e.get("outcome"))


def _history(ns: str, name: str, old: Any, new: Any) -> None:
    """What this reconcile added to status.history (newest first, bounded): each new entry's
    outcome, and a time to restore or lead time the first time an entry has it (a Reverted
    entry may get its restoredAt in a later reconcile)."""
    if not isinstance(new, list):
        return
    before = {_entry_key(e): e for e in old if isinstance(e, Mapping)} if isinstance(old, list) else {}
    for entry in new:
        if not isinstance(entry, Mapping) or not entry.get("outcome"):
            continue
        seen = before.get(_entry_key(entry))
        if seen is None:
            OUTCOMES.labels(ns, name, str(entry["outcome"]), str(entry.get("reason") or "")).inc()
            if entry.get("switchedAt"):
                REACHED_USERS.labels(ns, name).inc()
        restore = _number(entry.get("restoreSeconds"))
        if entry.get("outcome") == "Reverted" and restore is not None and (seen is None or seen.get("restoreSeconds") is None):
            RESTORE_SECONDS.labels(ns).observe(restore)
        lead = _number(entry.get("leadTimeSeconds"))
        if lead is not None and (seen is None or seen.get("leadTimeSeconds") is None):
            LEAD_SECONDS.labels(ns).observe(lead)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if v >= 0 else None


def _measurement_key(m: Mapping[str, Any]) -> tuple[Any, ...]:
    return (m.get("metric"), m.get("run"), m.get("color"), m.get("at"))


def _analysis(ns: str, name: str, old: Any, new: Any) -> None:
    """Measurements this reconcile added to status.analysis (the last ones, newest last)."""
    if not isinstance(new, list):
        return
    seen = {_measurement_key(m) for m in old if isinstance(m, Mapping)} if isinstance(old, list) else set()
    for m in new:
        if not isinstance(m, Mapping) or _measurement_key(m) in seen or not m.get("metric"):
            continue
        metric, verdict = str(m["metric"]), str(m.get("verdict") or "")
        ANALYSIS_MEASUREMENTS.labels(ns, name, metric, verdict).inc()
        value = _float(m.get("value"))
        ANALYSIS_VALUE.labels(ns, name, metric).set(value)
        for v in VERDICTS:
            ANALYSIS_VERDICT.labels(ns, name, metric, v).set(1 if v == verdict else 0)


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return float("nan")
    return float(v)


def _thresholds(ns: str, name: str, spec: Mapping[str, Any]) -> None:
    """The thresholdRange bounds of the metrics defined in the spec (templates' are not read here)."""
    want: dict[tuple[str, ...], float] = {}
    for m in (spec.get("analysis") or {}).get("metrics") or []:
        if not isinstance(m, Mapping) or not m.get("name"):
            continue
        for verdict in VERDICTS:  # at 0 before the first measurement (see observe_reconcile)
            ANALYSIS_MEASUREMENTS.labels(ns, name, str(m["name"]), verdict)
        bounds = m.get("thresholdRange") or {}
        for bound in ("min", "max"):
            value = bounds.get(bound) if isinstance(bounds, Mapping) else None
            if isinstance(value, int | float) and not isinstance(value, bool):
                want[(ns, name, str(m["name"]), bound)] = float(value)
    if _THRESHOLDS.get((ns, name)) == want:
        return
    for key in _THRESHOLDS.get((ns, name), {}):
        if key not in want:
            ANALYSIS_THRESHOLD.remove(*key)
    for key, value in want.items():
        ANALYSIS_THRESHOLD.labels(*key).set(value)
    _THRESHOLDS[(ns, name)] = want


def _series(collector: Any, ns: str, name: str) -> list[tuple[str, ...]]:
    """The label values of `collector`'s series of one Rollout. prometheus_client has no
    public listing of a metric's children; its `_metrics` dict (label values -> child) is
    what `remove()` itself edits, read here under the same lock."""
    with collector._lock:
        return [tuple(k) for k in collector._metrics if tuple(k[:2]) == (ns, name)]


def forget_rollout(namespace: str, name: str) -> None:
    """Remove every series of a deleted Rollout (its counters too: a Rollout created again
    under the same name starts from zero, which rate() and increase() read as a reset)."""
    _INFO_LABELS.pop((namespace, name), None)
    _THRESHOLDS.pop((namespace, name), None)
    for collector in PER_ROLLOUT:
        for key in _series(collector, namespace, name):
            try:
                collector.remove(*key)
            except KeyError:  # removed meanwhile by another thread
                pass


def reconcile_error(kind: str) -> None:
    RECONCILE_ERRORS.labels(kind if kind in ERROR_KINDS else "internal").inc()


def error_kind(exc: BaseException, default: str = "internal") -> str:
    """The kind of an unexpected reconcile error: where it was raised (an analysis or router
    module, teal.analysis / teal.routers), else `default`."""
    modules: Iterable[str] = (
        frame.f_globals.get("__name__", "") for frame, _ in traceback.walk_tb(exc.__traceback__) if frame is not None
    )
    kinds = [m for m in modules if m.startswith(("teal.analysis", "teal.routers"))]
    if not kinds:
        return default
    return "analysis" if kinds[-1].startswith("teal.analysis") else "router"


SHARD_HELD = Gauge("teal_shard_held", "1 for each shard (of teal run --shards) whose Lease this replica holds", ["shard"])


def shards_held(held: Iterable[int], shards: int) -> None:
    for shard in range(shards):
        SHARD_HELD.labels(str(shard)).set(1 if shard in set(held) else 0)


API_REQUESTS = Counter(
    "teal_api_requests_total",
    "Requests the operator sent to the Kubernetes apiserver, by verb (get, list, watch, create, update, patch, delete) "
    "and resource (with /subresource); reads served by the informers' caches send none",
    ["verb", "resource"],
)


def count_request(verb: str, resource: str) -> None:
    """teal.client.REQUEST_OBSERVERS: one request sent."""
    API_REQUESTS.labels(verb, resource).inc()


def serve(port: int) -> None:
    start_http_server(port)
