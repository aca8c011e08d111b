"""The chart's Grafana dashboard against the real thing: the operator (a subprocess serving
--metrics-port) runs real releases on the local control plane — one promoted after its
analysis, one reverted by its post-promotion analysis — while the real Prometheus scrapes it
(and the colours' pods, for the analysis). Then every panel's query, template variables
substituted, is evaluated and must return series; so must the example queries of
docs/metrics.md."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cli_helpers import CHART, run, teal
from operator_helpers import Env, OperatorProcess, pod_template, rollout
from teal_devenv.fakeapp import run_fakeapp
from teal_devenv.traffic import ClusterTraffic
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.timeout(300)]

DASHBOARD = CHART / "files" / "grafana-dashboard.json"
DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
ERROR_RATE = (
    'sum(rate(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}",code=~"5.."}[5s]))'
    ' / sum(rate(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}"}[5s]))'
)
SOURCE_TIME = "teal.dev/source-time"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, rows' nested panels too."""
    out = []
    for panel in dashboard["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets") or []:
                out.append((p["title"], t["expr"]))
    return out


def substitute(expr: str, variables: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in variables, f"unknown variable ${name} in {expr}"
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def doc_queries() -> list[str]:
    """The PromQL of docs/metrics.md's promql blocks, one expression per unindented line."""
    out: list[str] = []
    for block in re.findall(r"^```promql\n(.*?)^```", DOC.read_text(), re.S | re.M):
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and out:
                out[-1] += "\n" + line
            elif line.strip():
                out.append(line)
    return out


def test_dashboard_configmap_is_off_by_default_and_carries_the_sidecar_label(helm):
    def configmaps(*sets: str) -> list[dict[str, Any]]:
        args = [helm, "template", "teal", str(CHART), "-n", "teal-system"]
        for s in sets:
            args += ["--set", s]
        docs = [d for d in yaml.safe_load_all(run(args).stdout) if d]
        return [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]

    assert configmaps() == []
    (cm,) = configmaps("grafanaDashboard.enabled=true")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["namespace"] == "teal-system"
    assert json.loads(cm["data"]["teal-releases.json"]) == json.loads(DASHBOARD.read_text())
    (cm,) = configmaps(
        "grafanaDashboard.enabled=true", "grafanaDashboard.namespace=monitoring", "grafanaDashboard.labels.grafana_dashboard=teal"
    )
    assert cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["labels"]["grafana_dashboard"] == "teal"


def test_every_panel_query_returns_series_after_real_releases(cluster, k8s, namespace, teal_operator, prometheus, tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    queries = panel_queries(dashboard)
    assert len(queries) >= 14
    port = free_port()
    teal_operator.kill()  # one operator at a time: this one serves the metrics
    env = Env(k8s, namespace)
    env.create_service("app")
    env.create_service("app-preview")
    with contextlib.ExitStack() as stack:
        op = OperatorProcess(cluster.kubeconfig, tmp_path / "op.log", ["-A", "--metrics-port", str(port)]).start()
        stack.callback(teal_operator.start)
        stack.callback(op.stop)
        apps = {c: stack.enter_context(run_fakeapp(c, namespace)) for c in ("blue", "green")}
        stack.enter_context(
            prometheus.scrape_pods(namespace, k8s, namespace, {c: a.target for c, a in apps.items()}, rollout="app")
        )
        prometheus.add_targets({"teal-operator": [f"127.0.0.1:{port}"]}, wait_up=True)
        stack.enter_context(ClusterTraffic(k8s, namespace, apps, "app", "app-preview", rps=50, duration=600))
        release_sequence(env, prometheus, apps)
        wait_scraped(prometheus, namespace)

        variables = {"namespace": namespace, "rollout": "app", "window": "1d", "__rate_interval": "30s", "datasource": "x"}
        empty = []
        for title, expr in queries:
            if not prometheus.query(substitute(expr, variables)):
                empty.append((title, expr))
        assert empty == [], "panels whose query returned no series"
        # the template variables' own queries (label_values) list this namespace and Rollout
        names = prometheus.api("/api/v1/label/namespace/values", {"match[]": "teal_rollout_info"})
        rollouts = prometheus.api("/api/v1/label/rollout/values", {"match[]": f'teal_rollout_info{{namespace=~"{namespace}"}}'})
        assert namespace in names and rollouts == ["app"]
        # the reference's examples find these releases too (but the weights of releases in
        # progress: none is, now)
        examples = doc_queries()
        assert len(examples) >= 10
        for expr in examples:
            result = prometheus.query(expr)
            assert result or "Progressing|Paused" in expr, expr
        check_values(prometheus, namespace)
        check_stats_prometheus(prometheus, namespace)
        # a deleted Rollout's series leave the operator's endpoint
        assert rollout_series(port, namespace)
        env.custom.delete_namespaced_custom_object("teal.dev", "v1alpha1", namespace, "rollouts", "app")
        wait_for(lambda: not rollout_series(port, namespace), timeout=30, what="the deleted Rollout's series removed")


def rollout_series(port: int, ns: str) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return [
        f"{s.name}{s.labels}"
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("namespace") == ns and "rollout" in s.labels
    ]


def release_sequence(env: Env, prometheus, apps) -> None:
    """Revision 1 live on blue; 2 on green, promoted after its analysis; 3 on blue, reverted
    by its post-promotion analysis (blue answers 50% errors)."""
    source_time = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def template(image: str) -> dict[str, Any]:
        t = pod_template(image)
        t["metadata"]["annotations"] = {SOURCE_TIME: source_time}
        return t

    body = rollout(autoPromote=True)
    body["spec"]["template"] = template("v1")
    body["spec"]["analysis"] = {
        "prometheus": {"address": prometheus.url, "timeout": "3s"},
        "interval": "1s",
        "count": 3,
        "initialDelay": "8s",  # the new colour's pods scraped twice (test_e2e_analysis.NEW_PODS_SCRAPED)
        "postPromotion": ["error-rate"],
        "metrics": [{"name": "error-rate", "query": ERROR_RATE, "thresholdRange": {"max": 0.05}}],
    }
    env.create_rollout(body)
    env.wait_phase("Healthy", activeColor="blue", stableRevision="1", timeout=60)
    env.patch_spec({"template": template("v2")})
    env.wait_phase("Healthy", activeColor="green", stableRevision="2", timeout=90)
    apps["blue"].set(error_rate=0.5)
    env.patch_spec({"template": template("v3")})
    st = env.wait(
        lambda s: any(h.get("outcome") == "Reverted" and h.get("restoreSeconds") is not None for h in s.get("history") or []),
        timeout=120,
        what="revision 3 reverted, restore time recorded",
    )
    assert st["activeColor"] == "green" and env.selector_color("app") == "green", st


def wait_scraped(prometheus, ns: str) -> None:
    """Prometheus has scraped the operator after the revert was recorded."""
    prometheus.wait_for(f'sum(teal_release_outcomes_total{{namespace="{ns}",outcome="Reverted"}})', lambda v: v >= 1, timeout=30)
    prometheus.wait_for(f'sum(teal_time_to_restore_seconds_count{{namespace="{ns}"}})', lambda v: v >= 1, timeout=30)


def check_values(prometheus, ns: str) -> None:
    """A few panels' values, from what the releases did."""
    sel = f'namespace="{ns}",rollout="app"'
    promoted = prometheus.query_value(f'sum(teal_release_outcomes_total{{{sel},outcome="Promoted"}})')
    assert promoted == 2  # revisions 1 and 2
    assert prometheus.query_value(f"sum(teal_releases_reached_users_total{{{sel}}})") == 3
    assert prometheus.query_value(f'teal_rollout_active_color{{{sel},color="green"}}') == 1
    assert prometheus.query_value(f'teal_rollout_weight{{{sel},color="green"}}') == 100
    assert prometheus.query_value(f'teal_analysis_threshold{{{sel},metric="error-rate",bound="max"}}') == 0.05
    assert prometheus.query_value(f'teal_analysis_verdict{{{sel},metric="error-rate",verdict="Failed"}}') == 1
    lead = prometheus.query_value(f'teal_lead_time_seconds_count{{namespace="{ns}"}}')
    assert lead is not None and lead >= 2  # revisions 2 and 3 reached users 30 min after their commit
    assert prometheus.query_value(f'sum(teal_lead_time_seconds_bucket{{namespace="{ns}",le="900.0"}})') == 0


def check_stats_prometheus(prometheus, ns: str) -> None:
    """`kubectl teal stats -A --prometheus URL` counts the releases the operator's metrics saw:
    every series here was born inside the window (the Reverted one at 1 and never grew after),
    which a bare increase() would miss. Only this test's operator is scraped, so the Prometheus
    figures are this namespace's; the cluster's other Rollouts add to the history figures only."""
    shown = teal("stats", "-A", "--prometheus", prometheus.url, "-o", "json")
    assert shown.code == 0, shown
    doc = json.loads(shown.out)
    prom = doc["prometheus"]
    assert prom["outcomes"] == {"Promoted": 2, "Aborted": 0, "Reverted": 1, "Superseded": 0, "RolledBack": 0}, prom
    assert prom["releases"] == 3 and prom["reachedUsers"] == 3 and prom["changeFailureRate"] == round(1 / 3, 4)
    assert prom["source"] == f"Prometheus at {prometheus.url}" and doc["source"] == "status.history"
    # the histograms: one restore within seconds; three lead times (each revision reached users)
    # of 30 minutes and a little more, all in the bucket (1800, 3600]: histogram_quantile
    # interpolates inside it, the median halfway (2700) and the p90 at 90% (3420)
    ttr, lead = prom["timeToRestoreSeconds"], prom["leadTimeSeconds"]
    assert ttr["count"] == 1 and 0 < ttr["median"] <= 120, ttr
    assert lead == {"count": 3, "median": 2700.0, "p90": 3420.0}, lead
    # the status.history figures agree for this namespace's Rollout
    (mine,) = [x for x in doc["perRollout"] if x["namespace"] == ns]
    assert (mine["releases"], mine["reachedUsers"], mine["reverted"]) == (3, 3, 1), mine
    table = teal("stats", "-A", "--prometheus", prometheus.url)
    assert table.code == 0 and table.out.isascii(), table
    assert "From Prometheus" in table.out and "3 releases: Promoted 2, Aborted 0, Reverted 1" in table.out, table.out
    assert "change failure rate 33.3% (of 3 that reached users)" in table.out, table.out
