"""Prometheus analysis with the real operator, a real Prometheus and local processes that
play the blue and green versions (served traffic split as the cluster's Services say).

Prometheus discovers the Rollout's pods from the apiserver (teal_devenv.podsd, kubernetes_sd's
meta labels) and labels them as a PodMonitor does (`namespace`, `pod`, `container`), so the queries select a colour by
its real pod names ({{podRegex}}), exactly as in a user's cluster."""

from __future__ import annotations

import contextlib
import re
import socket
import time

import kubernetes
import pytest

from analysis_helpers import doc_template
from operator_helpers import EndpointRecorder, Env, rollout
from teal.analysis.model import pod_regex
from teal_devenv.fakeapp import run_fakeapp
from teal_devenv.traffic import ClusterTraffic
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.timeout(240)]

ERROR_RATE = (
    'sum(rate(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}",code=~"5.."}[5s]))'
    ' / sum(rate(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}"}[5s]))'
)


# A new colour's pods have series once Prometheus has discovered and scraped them twice:
# 4-6 s here (Prometheus 2.42 hands new targets to its scrapers every 5 s), as in a real
# cluster (docs/analysis-queries.md, "Timing"). Sooner, the query has no data: a pause.
NEW_PODS_SCRAPED = "8s"


def error_rate(**extra) -> dict:
    return {"name": "error-rate", "query": ERROR_RATE, "thresholdRange": {"max": 0.05}, **extra}


class World:
    """A namespace with Services, two colour processes scraped by Prometheus, and traffic."""

    def __init__(self, env: Env, prometheus, apps, traffic):
        self.env, self.prometheus, self.apps, self.traffic = env, prometheus, apps, traffic

    def create(self, analysis: dict, address: str | None = None, **bg) -> None:
        analysis = {
            "prometheus": {"address": address or self.prometheus.url, "timeout": "3s"},
            "interval": "1s",
            "count": 3,
            "initialDelay": NEW_PODS_SCRAPED,
            **analysis,
        }
        body = rollout(**bg)
        body["spec"]["analysis"] = analysis
        self.env.create_rollout(body)
        self.env.wait_phase("Healthy", activeColor="blue", stableRevision="1", timeout=60)


@pytest.fixture
def world(k8s, namespace, prometheus, teal_operator):
    env = Env(k8s, namespace)
    env.create_service("app")
    env.create_service("app-preview")
    with contextlib.ExitStack() as stack:
        apps = {c: stack.enter_context(run_fakeapp(c, namespace)) for c in ("blue", "green")}
        stack.enter_context(
            prometheus.scrape_pods(namespace, k8s, namespace, {c: a.target for c, a in apps.items()}, rollout="app")
        )
        traffic = stack.enter_context(
            ClusterTraffic(k8s, namespace, apps, "app", "app-preview", rps=50, duration=600, preview_share=0.3)
        )
        yield World(env, prometheus, apps, traffic)


def test_healthy_release_is_analysed_and_promoted(world):
    world.create({"prePromotion": ["error-rate"], "postPromotion": ["error-rate"], "metrics": [error_rate()]})
    world.env.set_image("v2")
    st = world.env.wait_phase("Healthy", activeColor="green", stableRevision="2", timeout=90)
    verdicts = [(m["metric"], m["color"], m["verdict"]) for m in st["analysis"]]
    assert verdicts.count(("error-rate", "green", "Successful")) >= 6  # 3 before, 3 after the switch
    assert "AnalysisPassed" in world.env.events()


def test_failing_green_is_aborted_before_any_traffic(world, k8s):
    world.create({"prePromotion": ["error-rate"], "metrics": [error_rate()]})
    world.apps["green"].set(error_rate=0.2)
    with EndpointRecorder(k8s, world.env.ns, "app") as rec:
        world.env.set_image("v2")
        st = world.env.wait_phase("Aborted", reason="AnalysisFailed", timeout=90)
        rec.assert_safe()
        assert all(not counts.get("green") for _, counts in rec.timeline), "green got user traffic"
    assert world.env.selector_color("app") == "blue"
    assert re.search(r"error-rate 0\.(1[5-9]\d*|2|2[0-5]\d*) > max 0\.05", st["message"]), st["message"]
    failed = [m for m in st["analysis"] if m["verdict"] == "Failed"]
    assert failed and failed[-1]["color"] == "green" and f'pod=~"{pod_regex("app-green")}"' in failed[-1]["query"]


def test_queries_see_the_real_pods_of_each_colour_by_default_labels(world, k8s):
    """The series carry the labels a PodMonitor gives (namespace, pod, container, job,
    instance) and nothing the app invents; {{podRegex}} selects exactly the colour's pods."""
    world.create({"prePromotion": ["error-rate"], "metrics": [error_rate()]})
    world.env.set_image("v2")
    st = world.env.wait_phase("Healthy", activeColor="green", stableRevision="2", timeout=90)
    pods = kubernetes.client.CoreV1Api(k8s).list_namespaced_pod(world.env.ns, label_selector="teal.dev/rollout=app")
    by_color: dict[str, set[str]] = {}
    for p in pods.items:
        by_color.setdefault(p.metadata.labels["teal.dev/color"], set()).add(p.metadata.name)
    assert by_color["green"] and all(re.fullmatch(pod_regex("app-green"), n) for n in by_color["green"])
    assert not any(re.fullmatch(pod_regex("app-green"), n) for n in by_color.get("blue", ()))
    series = world.prometheus.query(f'http_requests_total{{namespace="{world.env.ns}"}}')
    assert series
    for s in series:
        assert set(s["metric"]) == {"__name__", "code", "namespace", "pod", "container", "job", "instance"}, s
        assert s["metric"]["container"] == "app"
    scraped = {s["metric"]["pod"] for s in series}
    assert by_color["green"] <= scraped  # every green pod is a target of its own
    measured = [m for m in st["analysis"] if m["color"] == "green"]
    assert measured and all(f'pod=~"{pod_regex("app-green")}"' in m["query"] for m in measured)


def test_the_documented_template_analyses_a_real_release(world, k8s):
    """The error-rate AnalysisTemplate of docs/analysis-queries.md, as written, catches a bad green."""
    tmpl = doc_template()
    kubernetes.client.CustomObjectsApi(k8s).create_namespaced_custom_object(
        "teal.dev", "v1alpha1", world.env.ns, "analysistemplates", tmpl
    )
    world.create(
        {"prePromotion": ["error-rate"], "metrics": [{"name": "error-rate", "templateRef": {"name": tmpl["metadata"]["name"]}}]}
    )
    world.apps["green"].set(error_rate=0.2)
    world.env.set_image("v2")
    st = world.env.wait_phase("Aborted", reason="AnalysisFailed", timeout=90)
    assert re.search(r"error-rate 0\.(1[5-9]\d*|2|2[0-5]\d*) > max 0\.01", st["message"]), st["message"]
    assert world.env.selector_color("app") == "blue"


def test_degradation_after_the_switch_is_reverted(world, k8s):
    world.create({"postPromotion": ["error-rate"], "metrics": [error_rate(count=30)]}, scaleDownDelaySeconds=60)
    world.env.set_image("v2")
    wait_for(lambda: world.env.selector_color("app") == "green", timeout=60, what="switch to green")
    broke = time.monotonic()
    world.apps["green"].set(error_rate=0.5)
    wait_for(lambda: world.env.selector_color("app") == "blue", timeout=60, interval=0.05, what="revert to blue")
    took = time.monotonic() - broke
    st = world.env.wait_phase("Aborted", reason="AnalysisFailed")
    assert "postPromotion" in st["message"]
    # within one analysis interval (1 s) plus scrape (1 s) plus the 5 s rate window filling
    assert took < 15, f"revert took {took:.1f}s"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_down_pauses_and_never_promotes(world):
    world.create(
        {"prePromotion": ["error-rate"], "metrics": [error_rate(consecutiveErrorLimit=1)]},
        address=f"http://127.0.0.1:{_closed_port()}",
    )
    world.env.set_image("v2")
    st = world.env.wait_phase("Paused", reason="AnalysisInconclusive", timeout=60)
    assert world.env.selector_color("app") == "blue"
    assert "inconclusive" in st["message"]
    # a human decides: abort leaves everything on blue
    world.env.abort()
    world.env.wait_phase("Aborted")
    assert world.env.selector_color("app") == "blue"


@pytest.mark.parametrize("policy,phase", [("inconclusive", "Paused"), ("pass", "Healthy"), ("fail", "Aborted")])
def test_empty_result_follows_no_data_policy(world, policy, phase):
    empty = {
        "name": "empty",
        "query": 'sum(rate(no_such_metric_total{namespace="{{namespace}}"}[5s]))',
        "thresholdRange": {"max": 1},
        "noData": policy,
    }
    world.create({"prePromotion": ["empty"], "metrics": [empty]})
    world.env.set_image("v2")
    st = world.env.wait_phase(phase, timeout=60, currentRevision="2")
    assert world.env.selector_color("app") == ("green" if phase == "Healthy" else "blue")
    assert any("no data" in (m.get("message") or "").lower() for m in st["analysis"])


def test_failing_dry_run_metric_does_not_abort(world):
    dry = {"name": "strict", "query": ERROR_RATE, "thresholdRange": {"max": -1}, "dryRun": True}
    world.create({"prePromotion": ["error-rate", "strict"], "metrics": [error_rate(), dry]})
    world.env.set_image("v2")
    st = world.env.wait_phase("Healthy", activeColor="green", stableRevision="2", timeout=90)
    assert any(m["metric"] == "strict" and m["verdict"] == "Failed" and m.get("dryRun") for m in st["analysis"])


BASELINE = {
    "name": "errors-vs-live",
    "query": ERROR_RATE,
    "baseline": ERROR_RATE.replace("{{podRegex}}", "{{stablePodRegex}}"),
    "maxRatio": 1.2,
    "floor": 0.01,
}


def test_baseline_passes_when_both_colours_are_equally_bad(world):
    world.create({"prePromotion": ["errors-vs-live"], "metrics": [BASELINE]})
    world.apps["blue"].set(error_rate=0.2)
    world.apps["green"].set(error_rate=0.2)
    world.env.set_image("v2")
    world.env.wait_phase("Healthy", activeColor="green", stableRevision="2", timeout=90)


def test_baseline_fails_when_only_green_is_bad(world):
    world.create({"prePromotion": ["errors-vs-live"], "metrics": [BASELINE]})
    world.apps["green"].set(error_rate=0.2)
    world.env.set_image("v2")
    st = world.env.wait_phase("Aborted", reason="AnalysisFailed", timeout=90)
    assert world.env.selector_color("app") == "blue"
    assert "errors-vs-live" in st["message"]


@pytest.mark.parametrize(
    "analysis,expect",
    [
        ({"metrics": [{"name": "m", "query": "sum(rate(http_requests_total[5s])", "thresholdRange": {"max": 1}}]}, "m"),
        ({"metrics": [{"name": "m", "templateRef": {"name": "no-such-template"}}]}, "no-such-template"),
        (
            {
                "prometheus": {"bearerTokenSecretRef": {"name": "no-such-secret", "key": "token"}},
                "metrics": [error_rate(name="m")],
            },
            "no-such-secret",
        ),
    ],
    ids=["invalid-promql", "unknown-template", "missing-secret"],
)
def test_bad_analysis_config_is_reported_and_stable_keeps_traffic(world, analysis, expect):
    analysis = {"prePromotion": ["m"], **analysis}
    prom = analysis.pop("prometheus", {})
    world.create(analysis)
    if prom:
        world.env.patch_spec({"analysis": {"prometheus": prom}})
    world.env.set_image("v2")
    st = world.env.wait_phase("Aborted", reason="AnalysisError", timeout=60)
    assert expect in st["message"]
    assert world.env.selector_color("app") == "blue"
    stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and expect in stalled["message"]


def test_a_dead_prometheus_delays_only_its_own_rollouts(world, k8s):
    """A Prometheus that never answers holds one Rollout; another one releases meanwhile."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(64)  # accepts connections, never answers
        port = black_hole.getsockname()[1]
        world.create(
            {"prePromotion": ["error-rate"], "metrics": [error_rate(consecutiveErrorLimit=100)]},
            address=f"http://127.0.0.1:{port}",
        )
        world.env.set_image("v2")
        world.env.wait(lambda s: (s.get("release") or {}).get("analysisKey"), what="analysis running")
        other = rollout(name="other")
        other["spec"]["selector"] = {"matchLabels": {"app": "other"}}
        other["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
        world.env.create_service("other", {"app": "other"})
        world.env.create_service("other-preview", {"app": "other"})
        world.env.create_rollout(other)
        world.env.wait_phase("Healthy", name="other", stableRevision="1", timeout=30)
        world.env.set_image("v2", name="other", labels={"app": "other"})
        world.env.wait_phase("Healthy", name="other", stableRevision="2", timeout=30)
        assert world.env.status()["phase"] == "Progressing"
        assert world.env.selector_color("app") == "blue"
