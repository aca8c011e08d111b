"""docs/analysis-queries.md as written: its YAML parses, its template renders for a release
into a query that selects exactly the colour's pods, and its kubernetes_sd job's relabelling
passes promtool and, run by a real Prometheus on the local cluster's pods, gives them
`teal_color`.

Debian's Prometheus 2.42 (promtool too) is built without kubernetes_sd, so the job's
`kubernetes_sd_configs` is swapped for the file_sd that teal_devenv.podsd fills with the
same targets and meta labels kubernetes_sd gives the pods; the relabel_configs run as
written."""

from __future__ import annotations

import re
import shutil
import subprocess

import kubernetes
import pytest
import yaml

from analysis_helpers import DOC, doc_block, doc_sd_job, doc_template, doc_yaml, podmonitor_crd
from teal.analysis import parse_metrics
from teal.analysis.engine import rollout_variables
from teal.analysis.model import check_promql, pod_name, pod_regex, render, with_color
from teal.analysis.prometheus import resolve_queries
from teal_devenv.crds import crd_documents, install_crds
from teal_devenv.fakeapp import FakeApp
from teal_devenv.podsd import PodDiscovery
from teal_devenv.prometheus import pod_sd_job
from teal_devenv.wait import wait_for

VARS = rollout_variables(
    namespace="shop",
    name="checkout",
    color="green",
    stable_color="blue",
    revision=3,
    stable_revision=2,
    active_services=["checkout"],
    preview_service="checkout-preview",
)


def test_every_yaml_block_parses():
    blocks = doc_yaml()
    assert len(blocks) >= 5 and all(isinstance(b, dict) for b in blocks)
    monitor = doc_block(lambda b: b.get("kind") == "PodMonitor")
    assert monitor["spec"]["podTargetLabels"] == ["teal.dev/color", "teal.dev/rollout"]


def test_the_variable_table_shows_what_teal_renders():
    text = DOC.read_text()
    env = with_color(VARS, "green")
    assert f"`{env['podRegex']}`" in text
    assert env["deployment"] == "checkout-green" and env["stableDeployment"] == "checkout-blue"


def test_the_templates_query_selects_the_new_colours_pods_only():
    tmpl = doc_template()
    [metric] = parse_metrics(
        {"metrics": [{"name": "error-rate", "templateRef": {"name": "error-rate"}}], "prePromotion": ["error-rate"]},
        ["error-rate"],
        lambda kind, name: tmpl if name == "error-rate" else None,
    )
    query, _ = resolve_queries(metric, VARS)
    check_promql(query)
    selectors = re.findall(r'pod=~"([^"]+)"', query)
    assert selectors and set(selectors) == {pod_regex("checkout-green")}
    green = pod_name("checkout-green", 3158797353, "x2mzq")
    assert re.fullmatch(selectors[0], green)
    for other in (pod_name("checkout-blue", 3158797353, "x2mzq"), pod_name("checkout-green-x-green", 7, "bcdfg")):
        assert not re.fullmatch(selectors[0], other), other
    assert "[1m]" in query and 'namespace="shop"' in query


def test_inline_metrics_render_with_the_baseline_on_the_live_colour():
    block = doc_block(lambda b: "metrics" in b)
    metrics = parse_metrics(block, [m["name"] for m in block["metrics"]], lambda k, n: None)
    by_name = {m.name: resolve_queries(m, VARS) for m in metrics}
    query, baseline = by_name["errors-vs-live"]
    assert pod_regex("checkout-green") in query and pod_regex("checkout-blue") in baseline
    for q, _b in by_name.values():
        check_promql(q)


def with_file_sd(job: dict, path) -> dict:
    """The doc's job, discovering from a file_sd file instead of the apiserver."""
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    return {**job, "file_sd_configs": [{"files": [str(path)], "refresh_interval": "1s"}]}


def doc_podmonitor() -> dict:
    """The doc's PodMonitor, with its relabelings variant merged in."""
    monitor = doc_block(lambda b: b.get("kind") == "PodMonitor")
    [endpoint] = doc_block(lambda b: set(b) == {"podMetricsEndpoints"})["podMetricsEndpoints"]
    monitor["spec"]["podMetricsEndpoints"][0].update(endpoint)
    return monitor


@pytest.mark.cluster
def test_the_documented_podmonitor_fits_prometheus_operators_schema(k8s, namespace):
    """Created (strict field validation) against the real PodMonitor CRD of prometheus-operator."""
    crds = crd_documents([podmonitor_crd()])
    install_crds(k8s, crds)
    monitor = doc_podmonitor()
    assert monitor["metadata"].pop("namespace") == "shop"  # the test's namespace instead
    co = kubernetes.client.CustomObjectsApi(k8s)
    co.create_namespaced_custom_object(
        "monitoring.coreos.com", "v1", namespace, "podmonitors", monitor, field_validation="Strict"
    )
    back = co.get_namespaced_custom_object("monitoring.coreos.com", "v1", namespace, "podmonitors", monitor["metadata"]["name"])
    assert back["spec"]["podTargetLabels"] == ["teal.dev/color", "teal.dev/rollout"]
    assert back["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["targetLabel"] == "teal_color"
    # the schema is really enforced: a misspelt field is refused
    typo = {**monitor, "metadata": {"name": "typo"}, "spec": {**monitor["spec"], "podTargetLabel": ["x"]}}
    with pytest.raises(kubernetes.client.ApiException, match="podTargetLabel"):
        co.create_namespaced_custom_object(
            "monitoring.coreos.com", "v1", namespace, "podmonitors", typo, field_validation="Strict"
        )


def test_kubernetes_sd_job_relabelling_passes_promtool(tmp_path):
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    config = tmp_path / "prometheus.yml"
    (tmp_path / "pods.json").write_text("[]")
    config.write_text(yaml.safe_dump({"scrape_configs": [with_file_sd(doc_sd_job(), tmp_path / "pods.json")]}))
    done = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.cluster
@pytest.mark.prometheus
def test_the_documented_relabelling_gives_real_pods_teal_color(k8s, namespace, prometheus, tmp_path):
    """The doc's kubernetes_sd job, run by Prometheus on the pods of a Deployment like one
    Teal makes; only the address is the local process (kwok pods run nothing)."""
    labels = {"app": "demo", "teal.dev/rollout": "demo", "teal.dev/color": "blue"}
    kubernetes.client.AppsV1Api(k8s).create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "demo-blue", "labels": labels},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": "true"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": "registry.example.com/demo:1",
                                "ports": [{"name": "http", "containerPort": 8080}],
                            }
                        ]
                    },
                },
            },
        },
    )
    with FakeApp("blue", namespace) as app, PodDiscovery(k8s, namespace, tmp_path / "pods.json") as sd:
        job = with_file_sd(doc_sd_job(), sd.path)
        local = pod_sd_job("x", sd.path, {"blue": app.target})["relabel_configs"]
        job["relabel_configs"] += [r for r in local if r.get("target_label") in ("__address__", "__param_pod")]
        prometheus.set_targets([job])
        sel = f'http_requests_total{{job="{job["job_name"]}",namespace="{namespace}",code="200"}}'
        wait_for(lambda: len(prometheus.query(sel)) == 2, timeout=40, what="both pods scraped")
        pods = {p.metadata.name for p in kubernetes.client.CoreV1Api(k8s).list_namespaced_pod(namespace).items}
        for series in prometheus.query(sel):
            m = series["metric"]
            assert m["teal_color"] == "blue" and m["teal_rollout"] == "demo", m
            assert m["pod"] in pods and re.fullmatch(pod_regex("demo-blue"), m["pod"]), m
            assert m["container"] == "app" and m["namespace"] == namespace, m
        # the queries Teal renders find them by the default labels alone
        env = with_color({**VARS, "namespace": namespace, "name": "demo"}, "blue")
        q = render('count(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}",code="200"})', env)
        assert prometheus.query_value(q) == 2
