"""teal.metrics from scripted statuses: what one reconcile adds is counted once, the
per-Rollout gauges follow the status, and a deleted Rollout's series go."""

from __future__ import annotations

import uuid
from typing import Any

from prometheus_client import REGISTRY

from teal import metrics


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def body(ns: str, name: str = "checkout", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name}, "spec": spec}


def entry(revision: str, outcome: str, reason: str, **fields: Any) -> dict[str, Any]:
    return {
        "revision": revision,
        "hash": f"h{revision}",
        "startedAt": f"2026-11-0{revision}T10:00:00.000000Z",
        "finishedAt": f"2026-11-0{revision}T10:05:00.000000Z",
        "outcome": outcome,
        "reason": reason,
        **fields,
    }


def measurement(metric: str, at: str, value_: float | None, verdict: str) -> dict[str, Any]:
    return {"metric": metric, "run": "2:prePromotion", "color": "green", "value": value_, "verdict": verdict, "at": at}


SPEC = {
    "strategy": {"blueGreen": {"activeServices": ["checkout"], "trafficRouting": {"gatewayAPI": {"httpRoute": "checkout"}}}},
    "analysis": {
        "metrics": [
            {"name": "error-rate", "query": "q", "thresholdRange": {"max": 0.05}},
            {"name": "latency", "query": "q", "thresholdRange": {"min": 0, "max": 0.3}},
            {"name": "from-template", "templateRef": {"name": "t"}},
        ]
    },
}


def test_one_release_sequence_is_counted_once_per_history_entry():
    ns = f"m-{uuid.uuid4().hex[:8]}"
    b = body(ns, **SPEC)
    promoted = entry("2", "Promoted", "Promoted", switchedAt="2026-11-02T10:03:00Z", leadTimeSeconds=1800)
    restoring = entry("3", "Reverted", "AnalysisFailed", switchedAt="2026-11-03T10:03:00Z", leadTimeSeconds=600)
    reverted = {**restoring, "restoredAt": "2026-11-03T10:05:04.5Z", "restoreSeconds": 4.5}  # a reconcile later
    aborted = entry("4", "Aborted", "AbortedByUser")
    s1 = {"phase": "Progressing", "activeColor": "blue", "weights": {"blue": 90, "green": 10}, "history": []}
    s2 = {"phase": "Healthy", "activeColor": "green", "weights": {"blue": 0, "green": 100}, "history": [promoted]}
    s3a = {"phase": "Aborted", "activeColor": "green", "history": [restoring, promoted]}
    s3 = {"phase": "Aborted", "activeColor": "green", "history": [reverted, promoted]}
    s4 = {"phase": "Aborted", "activeColor": "green", "history": [aborted, reverted, promoted]}
    metrics.observe_reconcile(0.01, b, {}, s1)
    assert value("teal_releases_reached_users_total", namespace=ns, rollout="checkout") == 0
    assert value("teal_analysis_measurements_total", namespace=ns, rollout="checkout", metric="latency", verdict="Error") == 0
    assert value("teal_rollout_weight", namespace=ns, rollout="checkout", color="green") == 10
    assert value("teal_rollout_active_color", namespace=ns, rollout="checkout", color="blue") == 1
    metrics.observe_reconcile(0.01, b, s1, s2)
    metrics.observe_reconcile(0.01, b, s2, s2)  # nothing new: nothing counted
    assert value("teal_time_to_restore_seconds_count", namespace=ns) == 0  # exists before the first revert
    metrics.observe_reconcile(0.01, b, s2, s3a)
    metrics.observe_reconcile(0.01, b, s3a, s3)
    metrics.observe_reconcile(0.01, b, s3, s4)
    metrics.observe_reconcile(0.01, b, {}, s4)  # an old status without history (a restart reads it): only the new ones
    out = "teal_release_outcomes_total"
    assert value(out, namespace=ns, rollout="checkout", outcome="Promoted", reason="Promoted") == 2
    assert value(out, namespace=ns, rollout="checkout", outcome="Reverted", reason="AnalysisFailed") == 2
    assert value(out, namespace=ns, rollout="checkout", outcome="Aborted", reason="AbortedByUser") == 2
    assert value("teal_releases_reached_users_total", namespace=ns, rollout="checkout") == 4
    assert value("teal_time_to_restore_seconds_count", namespace=ns) == 2
    assert value("teal_time_to_restore_seconds_sum", namespace=ns) == 9.0
    assert value("teal_time_to_restore_seconds_bucket", namespace=ns, le="5.0") == 2
    assert value("teal_lead_time_seconds_count", namespace=ns) == 4
    assert value("teal_lead_time_seconds_bucket", namespace=ns, le="900.0") == 2
    assert value("teal_rollout_weight", namespace=ns, rollout="checkout", color="green") == 100
    assert value("teal_rollout_active_color", namespace=ns, rollout="checkout", color="blue") == 0
    assert value("teal_rollout_phase", namespace=ns, rollout="checkout", phase="Aborted") == 1
    assert value("teal_rollout_info", namespace=ns, rollout="checkout", strategy="blueGreen", router="gatewayAPI") == 1


def test_analysis_values_verdicts_and_thresholds():
    ns = f"m-{uuid.uuid4().hex[:8]}"
    b = body(ns, **SPEC)
    m1 = measurement("error-rate", "2026-11-02T10:00:01Z", 0.01, "Successful")
    m2 = measurement("error-rate", "2026-11-02T10:00:02Z", 0.2, "Failed")
    m3 = measurement("latency", "2026-11-02T10:00:02Z", None, "Error")
    metrics.observe_reconcile(0.01, b, {}, {"analysis": [m1]})
    metrics.observe_reconcile(0.01, b, {"analysis": [m1]}, {"analysis": [m1, m2, m3]})
    labels = {"namespace": ns, "rollout": "checkout"}
    assert value("teal_analysis_value", **labels, metric="error-rate") == 0.2
    assert value("teal_analysis_verdict", **labels, metric="error-rate", verdict="Failed") == 1
    assert value("teal_analysis_verdict", **labels, metric="error-rate", verdict="Successful") == 0
    latency = value("teal_analysis_value", **labels, metric="latency")
    assert latency is not None and latency != latency  # NaN: measured, no value
    assert value("teal_analysis_measurements_total", **labels, metric="error-rate", verdict="Successful") == 1
    assert value("teal_analysis_measurements_total", **labels, metric="latency", verdict="Error") == 1
    assert value("teal_analysis_threshold", **labels, metric="error-rate", bound="max") == 0.05
    assert value("teal_analysis_threshold", **labels, metric="latency", bound="min") == 0
    assert value("teal_analysis_threshold", **labels, metric="error-rate", bound="min") is None
    assert value("teal_analysis_threshold", **labels, metric="from-template", bound="max") is None
    # a metric dropped from the spec loses its threshold; a router change leaves one info series
    spec = {"strategy": {"blueGreen": {"activeServices": ["checkout"]}}, "analysis": {"metrics": SPEC["analysis"]["metrics"][1:]}}
    metrics.observe_reconcile(0.01, body(ns, **spec), {}, {})
    assert value("teal_analysis_threshold", **labels, metric="error-rate", bound="max") is None
    assert value("teal_analysis_threshold", **labels, metric="latency", bound="max") == 0.3
    assert value("teal_rollout_info", **labels, strategy="blueGreen", router="gatewayAPI") is None
    assert value("teal_rollout_info", **labels, strategy="blueGreen", router="service") == 1


def test_forget_rollout_removes_every_series_of_that_rollout_only():
    ns = f"m-{uuid.uuid4().hex[:8]}"
    status = {
        "phase": "Healthy",
        "activeColor": "blue",
        "weights": {"blue": 100, "green": 0},
        "stats": {"releases": 1, "promoted": 1},
        "history": [entry("1", "Promoted", "Promoted", switchedAt="2026-11-01T10:01:00Z")],
        "analysis": [measurement("error-rate", "2026-11-01T10:00:01Z", 0.0, "Successful")],
    }
    for name in ("gone", "stays"):
        metrics.observe_reconcile(0.01, body(ns, name, **SPEC), {}, status)
    metrics.DEPLOYMENTS_REJECTED.labels(ns, "gone", "403").inc()

    def series(rollout: str) -> list[str]:
        return [
            s.name
            for family in REGISTRY.collect()
            for s in family.samples
            if s.labels.get("namespace") == ns and s.labels.get("rollout") == rollout
        ]

    assert len(series("gone")) > 20 and "teal_deployments_rejected_total" in series("gone")
    before = series("stays")
    metrics.forget_rollout(ns, "gone")
    assert series("gone") == []
    assert series("stays") == before
    metrics.forget_rollout(ns, "gone")  # twice: nothing left to remove, no error


def test_reconcile_errors_by_kind():
    def count(kind: str) -> float:
        return value("teal_reconcile_errors_total", kind=kind) or 0.0

    assert all(value("teal_reconcile_errors_total", kind=k) is not None for k in metrics.ERROR_KINDS)
    before = {k: count(k) for k in metrics.ERROR_KINDS}
    from teal.analysis import model
    from teal.routers import base

    try:
        model.Metric(name="m", query="")  # raises in teal.analysis.model
    except Exception as e:
        metrics.reconcile_error(metrics.error_kind(e, default="decide"))
    try:
        raise base.RouterError("down", reason="APIError", transient=True)
    except Exception as e:
        assert metrics.error_kind(e) == "internal"  # raised here, not in a router module
    try:
        {}["missing"]
    except KeyError as e:
        metrics.reconcile_error(metrics.error_kind(e, default="decide"))
    metrics.reconcile_error("conflict")
    metrics.reconcile_error("no-such-kind")
    assert count("analysis") == before["analysis"] + 1
    assert count("decide") == before["decide"] + 1
    assert count("conflict") == before["conflict"] + 1
    assert count("internal") == before["internal"] + 1


def test_build_info():
    infos = [s for f in REGISTRY.collect() if f.name == "teal_build_info" for s in f.samples]
    assert len(infos) == 1 and infos[0].value == 1
    assert set(infos[0].labels) == {"version", "python", "kopf"}
    assert infos[0].labels["kopf"] != "unknown" and infos[0].labels["version"] != "unknown"
