"""Release history and `kubectl teal stats` on real releases: the real operator, the local
control plane and the real Prometheus, whose analysis decides. One Rollout goes through a
promoted release (with a teal.dev/source-time annotation: the lead time), a release aborted by
a user before any traffic, and a release reverted after the switch by a failing
post-promotion analysis; then `kubectl teal stats -o json` counts them."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from cli_helpers import teal
from operator_helpers import Env, app_env, pod_template, rollout

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.timeout(240)]


def check(query: str) -> dict:
    return {"name": "check", "query": query, "thresholdRange": {"max": 0.5}}


def test_history_of_real_releases_and_stats(k8s, namespace, prometheus, teal_operator) -> None:
    env: Env = app_env(k8s, namespace)
    body = rollout(scaleDownDelaySeconds=300)
    body["spec"]["analysis"] = {
        "prometheus": {"address": prometheus.url, "timeout": "3s"},
        "interval": "1s",
        "count": 2,
        "postPromotion": ["check"],
        "metrics": [check("vector(0)")],
    }
    env.create_rollout(body)
    env.wait_phase("Healthy", activeColor="blue", stableRevision="1", timeout=60)

    # 1. promoted, after its post-promotion analysis passed; committed an hour ago
    source = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(microsecond=0)
    template = pod_template("v2")
    template["metadata"]["annotations"] = {"teal.dev/source-time": source.isoformat()}
    env.patch_spec({"template": template})
    st = env.wait_phase("Healthy", activeColor="green", stableRevision="2", timeout=90)
    promoted = st["history"][0]
    assert (promoted["revision"], promoted["outcome"], promoted["reason"]) == ("2", "Promoted", "Promoted"), promoted
    assert promoted["images"] == ["example.com/app:v2"]
    assert "postPromotion analysis passed" in promoted["message"] and promoted["analysisSeconds"] > 0
    switched = dt.datetime.fromisoformat(promoted["switchedAt"].replace("Z", "+00:00"))
    assert promoted["leadTimeSeconds"] == pytest.approx((switched - source).total_seconds(), abs=0.01)
    assert 3600 <= promoted["leadTimeSeconds"] < 3600 + 120

    # 2. aborted by a user while it waits for promotion: no user traffic
    env.patch_spec({"strategy": {"blueGreen": {"autoPromote": False}}})
    env.set_image("v3")
    env.wait_phase("Paused", reason="AwaitingPromotion", timeout=60)
    aborted_cli = teal("abort", "app", "-n", namespace)
    assert aborted_cli.code == 0, aborted_cli
    st = env.wait(lambda s: (s.get("history") or [{}])[0].get("revision") == "3", timeout=60, what="revision 3 recorded")
    aborted = st["history"][0]
    assert (aborted["outcome"], aborted["reason"]) == ("Aborted", "AbortedByUser") and "switchedAt" not in aborted

    # 3. reverted: the analysis fails after the switch; all traffic back on green
    env.patch_spec({"strategy": {"blueGreen": {"autoPromote": True}}, "analysis": {"metrics": [check("vector(1)")]}})
    env.set_image("v4")
    st = env.wait(
        lambda s: (s.get("history") or [{}])[0].get("restoredAt") is not None, timeout=90, what="revision 4 reverted, restored"
    )
    reverted = st["history"][0]
    assert (reverted["revision"], reverted["outcome"], reverted["reason"]) == ("4", "Reverted", "AnalysisFailed"), reverted
    assert "check 1 > max 0.5" in reverted["message"], reverted["message"]
    assert reverted["switchedAt"] <= reverted["detectedAt"] <= reverted["restoredAt"]
    assert 0 <= reverted["restoreSeconds"] < 30
    assert env.selector_color("app") == "green" and st["stableRevision"] == "2"
    assert st["stats"]["outcomes"] == {"Promoted": 2, "Aborted": 1, "Reverted": 1}
    assert [e["outcome"] for e in st["history"]] == ["Reverted", "Aborted", "Promoted", "Promoted"]

    # kubectl teal stats, as a user runs it
    shown = teal("stats", "-n", namespace, "-o", "json")
    assert shown.code == 0, shown
    doc = json.loads(shown.out)
    assert doc["releases"] == 4 and doc["rollouts"] == 1
    assert doc["outcomes"] == {"Promoted": 2, "Aborted": 1, "Reverted": 1, "Superseded": 0, "RolledBack": 0}
    assert doc["reachedUsers"] == 3 and doc["changeFailureRate"] == round(1 / 3, 4)
    assert doc["timeToRestoreSeconds"]["count"] == 1 and doc["timeToRestoreSeconds"]["median"] == reverted["restoreSeconds"]
    # a merge patch of the template kept the annotation: revision 4 reached users and has a lead time too
    lead = sorted([promoted["leadTimeSeconds"], reverted["leadTimeSeconds"]])
    assert doc["leadTimeSeconds"] == {"count": 2, "median": round(sum(lead) / 2, 3), "p90": lead[1], "total": round(sum(lead), 3)}
    assert doc["perDay"][-1]["releases"] == 4 and doc["busiestDay"]["releases"] == 4
    table = teal("stats", "app", "-n", namespace, "--since", "1d")
    assert table.code == 0 and table.out.isascii(), table  # piped: ASCII
    assert "33.3% (1 reverted of 3 that reached users)" in table.out, table.out
    missing = teal("stats", "nope", "-n", namespace)
    assert missing.code == 3 and "not found" in missing.err, missing
