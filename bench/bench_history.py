"""What the release history costs and how fast `kubectl teal stats` reads it (issue 13).

1. Status bytes per release: the pure core (teal.core.decide, no cluster) runs a Rollout
   through N releases with a post-promotion analysis, a teal.dev/source-time annotation and
   one in four reverted; the status is measured as the apiserver stores it (compact JSON)
   with and without status.history and stats.outcomes.
2. `kubectl teal stats -A` on R Rollouts: a fresh local control plane (no operator), R
   Rollouts in 10 namespaces, each with a full synthetic history (25 entries over 30 days) in
   its status; then teal.cli_stats.run (one LIST, compute, JSON and table) is timed.

    python bench/bench_history.py [--rollouts 1000] [--runs 5] [--releases 40]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from teal import cli_stats, core
from teal.api import COLORS, parse_spec, template_hash
from teal.client import Client, Resource
from teal.status import iso
from teal_devenv.cluster import LocalCluster
from teal_devenv.crds import crd_documents, install_crds

REPO = Path(__file__).resolve().parent.parent
ROLLOUTS = Resource("teal.dev", "v1alpha1", "rollouts")
MESSAGE = "revision {r} is live on {c}; revision {r}: postPromotion analysis passed: error-rate 0.0012 <= max 0.01 (3/3 passed)"


def _compact(x: Any) -> int:
    return len(json.dumps(x, separators=(",", ":")))


def _spec() -> dict[str, Any]:
    return {
        "replicas": 3,
        "selector": {"matchLabels": {"app": "checkout"}},
        "template": {},
        "strategy": {"blueGreen": {"activeServices": ["checkout"], "previewService": "checkout-preview"}},
        "analysis": {
            "postPromotion": ["error-rate"],
            "metrics": [{"name": "error-rate", "query": "x", "thresholdRange": {"max": 0.01}}],
        },
    }


def bytes_per_release(releases: int) -> dict[str, float]:
    """Run the core through `releases` releases (every 4th reverted) and measure the status."""
    spec, status = _spec(), {}
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    deps: dict[str, tuple[str | None, int]] = {c: (None, 0) for c in COLORS}
    services: dict[str, str | None] = {"checkout": None, "checkout-preview": None}
    for n in range(releases + 1):
        commit = now - dt.timedelta(minutes=30)
        spec["template"] = {
            "metadata": {"labels": {"app": "checkout"}, "annotations": {"teal.dev/source-time": iso(commit)}},
            "spec": {"containers": [{"name": "app", "image": f"registry.example.com/shop/checkout:1.{n}.0"}]},
        }
        for _ in range(12):
            now += dt.timedelta(seconds=20)
            key = (status.get("release") or {}).get("analysisKey")
            verdict = "Failed" if n % 4 == 3 else "Successful"
            analysis = None
            if key:
                state = {"key": key, "startedAt": iso(now - dt.timedelta(seconds=60)), "finishedAt": iso(now)}
                message = "error-rate 0.0931 > max 0.01 (1 of 3 failed, limit 0)" if verdict == "Failed" else MESSAGE
                analysis = core.AnalysisRun(key=key, verdict=verdict, message=message, state=state, history=[])
            obs = core.Observed(
                template=spec["template"],
                template_hash=template_hash(spec["template"]),
                colors={c: core.ColorObs(h is not None, h, r, r, r) for c, (h, r) in deps.items()},
                services={s: core.ServiceObs(True, c) for s, c in services.items()},
                analysis=analysis,
            )
            plan = core.decide(parse_spec(spec), status, obs, now)
            status = plan.status
            for a in plan.actions:
                if isinstance(a, core.DeployColor):
                    deps[a.color] = (a.hash, a.replicas)
                elif isinstance(a, core.ScaleColor):
                    deps[a.color] = (deps[a.color][0], a.replicas)
                elif isinstance(a, core.SelectColor):
                    services[a.service] = a.color
            if not status.get("release") and status.get("phase") == "Healthy" and n:
                break
    history = status.get("history") or []
    without = {k: v for k, v in status.items() if k != "history"}
    without["stats"] = {k: v for k, v in (status.get("stats") or {}).items() if k != "outcomes"}
    by = {o: [_compact(e) for e in history if e["outcome"] == o] for o in {e["outcome"] for e in history}}
    return {
        "entries": len(history),
        "entryBytesMean": round(statistics.mean(_compact(e) for e in history), 1),
        **{f"entryBytes{o}": round(statistics.mean(v), 1) for o, v in sorted(by.items())},
        "historyBytes": _compact(history),
        "statusBytes": _compact(status),
        "statusBytesWithoutHistory": _compact(without),
    }


def synthetic_history(i: int, end: dt.datetime) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """25 releases over 30 days, newest first, every 5th reverted, every 7th aborted."""
    out, totals = [], {}
    for k in range(25):
        finished = end - dt.timedelta(hours=k * 28 + i % 24)
        outcome = "Reverted" if k % 5 == 2 else "Aborted" if k % 7 == 3 else "Promoted"
        e: dict[str, Any] = {
            "revision": str(100 - k),
            "hash": f"{i:04x}{k:06x}",
            "images": [f"registry.example.com/team-{i % 10}/svc-{i}:1.{100 - k}.0"],
            "startedAt": iso(finished - dt.timedelta(minutes=6)),
            "finishedAt": iso(finished),
            "outcome": outcome,
            "reason": {"Reverted": "AnalysisFailed", "Aborted": "AnalysisFailed"}.get(outcome, "Promoted"),
            "message": MESSAGE.format(r=100 - k, c="green"),
            "analysisSeconds": 60.0 + k,
        }
        if outcome != "Aborted":
            e["switchedAt"] = iso(finished - dt.timedelta(minutes=3))
            e["leadTimeSeconds"] = 1800.0 + 60 * (k % 9)
        if outcome == "Reverted":
            e["detectedAt"], e["restoredAt"], e["restoreSeconds"] = iso(finished), iso(finished), 0.4 + k / 10
        out.append(e)
        totals[outcome] = totals.get(outcome, 0) + 1
    return out, totals


def stats_on_cluster(n: int, runs: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="teal-bench-history-"))
    with LocalCluster(work / "cluster") as cluster:
        install_crds(cluster.api_client(), crd_documents(sorted((REPO / "crds").glob("*.yaml"))))
        api = Client.from_kubeconfig(cluster.kubeconfig)
        namespaces = [f"team-{k}" for k in range(10)]
        for ns in namespaces:
            api.create(Resource("", "v1", "namespaces", namespaced=False), None, {"metadata": {"name": ns}})
        end = dt.datetime.now(dt.UTC)

        def make(i: int) -> None:
            ns, name = namespaces[i % 10], f"svc-{i}"
            body = {"apiVersion": "teal.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": name}, "spec": _spec()}
            body["spec"]["template"] = {
                "metadata": {"labels": {"app": "checkout"}},
                "spec": {"containers": [{"name": "a", "image": "x"}]},
            }
            api.create(ROLLOUTS, ns, body)
            history, totals = synthetic_history(i, end)
            api.merge_patch(ROLLOUTS, ns, name, {"status": {"history": history, "stats": {"outcomes": totals}}}, sub="status")

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(make, range(n)))
        made = time.monotonic() - t0
        times, table_times, size = [], [], 0
        for _ in range(runs):
            buf = io.StringIO()
            t = time.monotonic()
            assert cli_stats.run(api, None, True, None, since="30d", output="json", out=buf) == 0
            times.append(time.monotonic() - t)
            t = time.monotonic()
            assert cli_stats.run(api, None, True, None, since="30d", output="table", out=io.StringIO()) == 0
            table_times.append(time.monotonic() - t)
            doc = json.loads(buf.getvalue())
            size = len(json.dumps(api.list(ROLLOUTS)))
        t = time.monotonic()
        items = api.items(ROLLOUTS)
        list_seconds = time.monotonic() - t
        api.close()
    assert doc["rollouts"] == n and doc["releases"] > 0, doc
    return {
        "rollouts": n,
        "releasesInWindow": doc["releases"],
        "created_s": round(made, 1),
        "listBytes": size,
        "list_s": round(list_seconds, 3),
        "items": len(items),
        "stats_json_s_median": round(statistics.median(times), 3),
        "stats_json_s_max": round(max(times), 3),
        "stats_table_s_median": round(statistics.median(table_times), 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rollouts", type=int, default=1000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--releases", type=int, default=40)
    args = p.parse_args(argv)
    print("status bytes per release:", json.dumps(bytes_per_release(args.releases)))
    print("kubectl teal stats -A:", json.dumps(stats_on_cluster(args.rollouts, args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
