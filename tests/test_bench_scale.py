"""bench/bench_scale.py keeps working: a tiny run on the session cluster (no audit log there),
and its audit-log reading on entries as kube-apiserver writes them. No timing is judged."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import bench_scale  # noqa: E402

OP = bench_scale.OP_USER


def entry(audit_id: str, stage: str, verb: str, resource: str, t: str, agent: str = "teal", user: str = OP, **ref: str) -> str:
    return json.dumps(
        {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": audit_id,
            "stage": stage,
            "verb": verb,
            "user": {"username": user, "groups": ["system:serviceaccounts", "system:authenticated"]},
            "sourceIPs": ["127.0.0.1"],
            "userAgent": agent,
            "objectRef": {"resource": resource, **ref},
            "responseStatus": {"metadata": {}, "code": 200},
            "requestReceivedTimestamp": t,
            "stageTimestamp": t,
        }
    )


def test_audit_counts_each_request_once_split_by_agent_and_kind(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    lines = [
        entry("w1", "ResponseStarted", "watch", "rollouts", "2026-12-01T20:00:00.100000Z", "kopf/1.45.2", apiGroup="teal.dev"),
        entry(
            "g1", "ResponseComplete", "get", "deployments", "2026-12-01T20:00:01.000000Z", namespace="shop", name="checkout-blue"
        ),
        entry(
            "p1",
            "ResponseComplete",
            "patch",
            "rollouts",
            "2026-12-01T20:00:02.000000Z",
            namespace="shop",
            name="checkout",
            subresource="status",
        ),
        entry("e1", "ResponseComplete", "create", "events", "2026-12-01T20:00:03.000000Z", namespace="shop"),
        entry("l1", "ResponseComplete", "update", "leases", "2026-12-01T20:00:04.000000Z", namespace="teal-system", name="teal"),
        entry(
            "x1", "ResponseComplete", "get", "pods", "2026-12-01T20:00:05.000000Z", "kube-scheduler", user="system:kube-scheduler"
        ),
        entry("w1", "ResponseComplete", "watch", "rollouts", "2026-12-01T20:00:00.100000Z", "kopf/1.45.2", apiGroup="teal.dev"),
    ]
    log.write_text("\n".join(lines) + "\n")
    entries = bench_scale.read_audit(log)
    assert entries is not None and len(entries) == 5  # the watch once, the scheduler's request not at all
    t0 = entries[0].t
    w = bench_scale.audit_window(entries, t0, t0 + 60)
    assert w is not None
    assert (w["requests"], w["watch_requests"], w["lease_requests"]) == (3, 1, 1)
    assert w["by_agent"] == {"teal": 3}
    assert w["by_kind"] == {"watch": 1, "read": 1, "write": 1, "event": 1, "lease": 1}
    assert w["requests_per_minute"] == 3.0
    assert entries[2].resource == "rollouts/status" and entries[2].name == "checkout"
    later = bench_scale.audit_window(entries, t0 + 1.5, t0 + 60)  # the patch and the event
    assert later is not None and later["requests"] == 2
    assert bench_scale.read_audit(None) is None and bench_scale.audit_window(None, 0, 1) is None


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_bench_runs_on_a_few_rollouts(cluster, teal_crds, no_operator, tmp_path: Path) -> None:
    opts = bench_scale.Options(
        rollouts=4,
        namespaces=2,
        idle=2,
        settle=0,
        releases=2,
        namespaced=True,
        timeout=90,
        prefix="sbt",
        wait_baseline_gone=False,
    )
    r = bench_scale.run(cluster, opts, tmp_path)
    assert r["operator_src"] == str((REPO / "operator").resolve())
    assert r["baseline_all_available_seconds"] > 0 and r["create_to_all_healthy_seconds"] > 0
    assert r["healthy_vs_baseline_ratio"] is not None
    assert r["releases"] == 2 and r["releases_new_stable_revision"] == 2
    assert r["switch_latency_ms"]["n"] == 2
    assert r["operator_peak_rss_mib"] > 0
    assert r["audit"] is None and r["requests_idle"] is None  # the session cluster keeps no audit log
    table = bench_scale.table(r)
    assert "ratio to baseline" in table and "n/a (no audit log)" in table
