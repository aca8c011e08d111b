"""Weighted blue/green with the real operator: Gateway API, NGINX Ingress and Istio.

Each release walks its steps while a sampler reads the weights back from the cluster
(through the same router code, never from Teal's memory) together with each colour's
ready pods, and asserts weight > 0 only ever goes to a colour with ready pods.
"""

from __future__ import annotations

import contextlib
import threading

import kubernetes
import pytest

from operator_helpers import Env, pod_template
from routing_helpers import ACTIVE, ROLLOUT, RoutingEnv
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

STEPS = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {"duration": "1s"}}, {"setWeight": 100}]


def weighted_rollout(kind: str, routing: dict, steps=STEPS, **bg) -> dict:
    body = {
        "apiVersion": "teal.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": ROLLOUT},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "checkout"}},
            "template": pod_template("v1") | {"metadata": {"labels": {"app": "checkout"}}},
            "strategy": {
                "blueGreen": {
                    "activeServices": [ACTIVE],
                    "scaleDownDelaySeconds": 5,
                    "abortScaleDownDelaySeconds": 2,
                    "trafficRouting": {kind: routing},
                    "steps": steps,
                    **bg,
                }
            },
        },
    }
    return body


class Sampler(threading.Thread):
    """Reads (weights, ready pods per colour) from the cluster until stopped."""

    def __init__(self, router, env: Env):
        super().__init__(daemon=True)
        self.router, self.env = router, env
        self.samples: list[tuple[dict, dict]] = []
        self.stop_flag = threading.Event()

    def ready(self) -> dict[str, int]:
        """Ready pods per colour; a failed read raises (the sample is dropped, never counted as 0)."""
        out = {}
        for c in ("blue", "green"):
            try:
                d = self.env.apps.read_namespaced_deployment(f"{ROLLOUT}-{c}", self.env.ns, _request_timeout=(5, 10))
            except kubernetes.client.exceptions.ApiException as e:
                if e.status != 404:
                    raise
                out[c] = 0  # no Deployment: certainly no ready pods
                continue
            out[c] = d.status.ready_replicas or 0
        return out

    def run(self) -> None:
        while not self.stop_flag.is_set():
            with contextlib.suppress(Exception):
                ready_before = self.ready()
                weights = self.router.get_weights()
                ready_after = self.ready()
                # a colour counts as ready when it was ready on both sides of the read
                ready = {c: min(ready_before[c], ready_after[c]) for c in ready_before}
                self.samples.append((weights, ready))
            self.stop_flag.wait(0.05)

    def weights_seen(self) -> list[int]:
        seen = []
        for w, _ in self.samples:
            g = w.get("green", 0)
            if not seen or seen[-1] != g:
                seen.append(g)
        return seen

    def assert_safe(self) -> None:
        for weights, ready in self.samples:
            for color, w in weights.items():
                assert w == 0 or ready.get(color, 0) > 0, f"{w}% to {color} without ready pods: {weights} {ready}"


def make_route(routing: RoutingEnv, kind: str) -> dict:
    both = [{"name": f"{ROLLOUT}-blue", "port": 80, "weight": 100}, {"name": f"{ROLLOUT}-green", "port": 80, "weight": 0}]
    if kind == "gatewayAPI":
        routing.httproute(rules=[{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": both}])
        return {"httpRoute": "checkout", "port": 80}
    if kind == "istio":
        host = f"{ROLLOUT}-{{}}.{routing.ns}.svc.cluster.local"
        routing.virtualservice(
            http=[
                {
                    "name": "primary",
                    "route": [
                        {"destination": {"host": host.format("blue"), "port": {"number": 80}}, "weight": 100},
                        {"destination": {"host": host.format("green"), "port": {"number": 80}}, "weight": 0},
                    ],
                }
            ]
        )
        return {"virtualService": "checkout", "routes": ["primary"], "port": 80}
    routing.ingress(backend=ACTIVE)
    return {"ingress": "checkout", "port": 80}


@pytest.fixture(params=["gatewayAPI", "nginx", "istio"])
def weighted(request, k8s, namespace, owner, router_crds, teal_operator):
    kind = request.param
    routing = RoutingEnv(k8s, namespace, owner)
    routing.active_service(color=None)
    spec = make_route(routing, kind)
    env = Env(k8s, namespace)
    env.create_rollout(weighted_rollout(kind, spec))
    env.wait_phase("Healthy", name=ROLLOUT, activeColor="blue", stableRevision="1", timeout=60)
    router = routing.router(kind, **({"routes": ("primary",)} if kind == "istio" else {}))
    wait_for(lambda: router.get_weights() == {"blue": 100, "green": 0}, timeout=20, what="weights 100/0")
    return kind, routing, env, router


def test_release_walks_every_step(weighted):
    kind, routing, env, router = weighted
    sampler = Sampler(router, env)
    sampler.start()
    try:
        env.set_image("v2", name=ROLLOUT, labels={"app": "checkout"})
        st = env.wait_phase("Paused", name=ROLLOUT, reason="PausedAtStep", currentStep="2", timeout=60)
        assert router.get_weights() == {"blue": 80, "green": 20}
        assert st["weights"] == {"blue": 80, "green": 20}
        assert env.selector_color(ACTIVE) == "blue"
        env.promote(name=ROLLOUT)
        env.wait_phase("Healthy", name=ROLLOUT, activeColor="green", stableRevision="2", timeout=60)
        assert router.get_weights() == {"blue": 0, "green": 100}
        assert env.selector_color(ACTIVE) == "green"  # the route and the selectors agree
        wait_for(lambda: sampler.weights_seen()[-1:] == [100], timeout=10, what="sampler saw 100")
    finally:
        sampler.stop_flag.set()
        sampler.join(5)
    seen = sampler.weights_seen()
    assert [w for w in seen if w in (20, 60, 100)] == [20, 60, 100], seen
    sampler.assert_safe()


@pytest.mark.parametrize("step", [2, 4])
def test_abort_at_a_step_returns_all_weight_to_stable(weighted, step):
    kind, routing, env, router = weighted
    steps = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}, {"setWeight": 100}]
    env.patch_spec({"strategy": {"blueGreen": {"steps": steps}}}, name=ROLLOUT)
    env.set_image("v2", name=ROLLOUT, labels={"app": "checkout"})
    if step == 4:
        env.wait_phase("Paused", name=ROLLOUT, currentStep="2", timeout=60)
        env.promote(name=ROLLOUT)
    env.wait_phase("Paused", name=ROLLOUT, currentStep=str(step), timeout=60)
    assert router.get_weights()["green"] == (20 if step == 2 else 60)
    env.abort(name=ROLLOUT)
    env.wait_phase("Aborted", name=ROLLOUT, timeout=30)
    wait_for(lambda: router.get_weights() == {"blue": 100, "green": 0}, timeout=10, what="100/0 after abort")
    assert env.selector_color(ACTIVE) == "blue"


# One router is enough for the operator-level check (it reacts to the route's watch event);
# each router's own tests cover edits of all three.
@pytest.mark.parametrize("weighted", ["gatewayAPI"], indirect=True)
def test_route_edited_mid_release_keeps_user_change_and_gets_weights_back(weighted):
    kind, routing, env, router = weighted
    env.set_image("v2", name=ROLLOUT, labels={"app": "checkout"})
    env.wait_phase("Paused", name=ROLLOUT, currentStep="2", timeout=60)
    route = routing.get_httproute()
    route["spec"]["hostnames"].append("edited.example")
    for ref in route["spec"]["rules"][0]["backendRefs"]:
        ref["weight"] = 50  # a GitOps sync puts back what Git says
    routing.replace_httproute(route)
    wait_for(lambda: router.get_weights() == {"blue": 80, "green": 20}, timeout=10, what="Teal's weights back")
    assert "edited.example" in routing.get_httproute()["spec"]["hostnames"]
    wait_for(lambda: "WeightsReapplied" in env.events(name=ROLLOUT), timeout=10, what="WeightsReapplied event")


def test_missing_route_is_a_clear_error(k8s, namespace, owner, router_crds, teal_operator):
    routing = RoutingEnv(k8s, namespace, owner)
    routing.active_service(color=None)
    env = Env(k8s, namespace)
    env.create_rollout(weighted_rollout("gatewayAPI", {"httpRoute": "no-such-route"}))
    st = env.wait_phase("Degraded", name=ROLLOUT, reason="TrafficRouterError", timeout=30)
    assert "no-such-route" in st["message"]


def test_httproute_without_colour_backends_is_a_clear_error(k8s, namespace, owner, router_crds, teal_operator):
    routing = RoutingEnv(k8s, namespace, owner)
    routing.active_service(color=None)
    routing.httproute(rules=[{"backendRefs": [{"name": ACTIVE, "port": 80}]}])
    env = Env(k8s, namespace)
    env.create_rollout(weighted_rollout("gatewayAPI", {"httpRoute": "checkout"}))
    st = env.wait_phase("Degraded", name=ROLLOUT, reason="TrafficRouterError", timeout=30)
    assert f"{ROLLOUT}-blue" in st["message"] and f"{ROLLOUT}-green" in st["message"]


@pytest.mark.prometheus
def test_traffic_follows_the_route_and_analysis_runs_at_each_step(k8s, namespace, owner, router_crds, teal_operator, prometheus):
    """A load generator splits its requests by the weights it reads from the HTTPRoute;
    the real Prometheus sees the traffic move, and the steps' analysis runs on it."""
    from teal_devenv.fakeapp import run_fakeapp
    from teal_devenv.traffic import ClusterTraffic

    routing = RoutingEnv(k8s, namespace, owner)
    routing.active_service(color=None)
    spec = make_route(routing, "gatewayAPI")
    env = Env(k8s, namespace)
    rate = (
        'sum(rate(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}",code=~"5.."}[4s]))'
        ' / sum(rate(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}"}[4s]))'
    )
    body = weighted_rollout("gatewayAPI", spec, steps=[{"setWeight": 25}, {"pause": {}}, {"setWeight": 75}, {"setWeight": 100}])
    body["spec"]["analysis"] = {
        "prometheus": {"address": prometheus.url, "timeout": "3s"},
        "interval": "1s",
        "count": 3,
        "initialDelay": "8s",
        "steps": ["error-rate"],  # new pods are scraped after 4-6 s
        "metrics": [{"name": "error-rate", "query": rate, "thresholdRange": {"max": 0.05}}],
    }
    with contextlib.ExitStack() as stack:
        apps = {c: stack.enter_context(run_fakeapp(c, namespace)) for c in ("blue", "green")}
        stack.enter_context(
            prometheus.scrape_pods(namespace, k8s, namespace, {c: a.target for c, a in apps.items()}, rollout=ROLLOUT)
        )
        env.create_rollout(body)
        env.wait_phase("Healthy", name=ROLLOUT, stableRevision="1", timeout=60)
        router = routing.router("gatewayAPI")
        stack.enter_context(ClusterTraffic(k8s, namespace, apps, ACTIVE, router=router, rps=80, duration=300, preview_share=0))
        share = (
            f'sum(rate(http_requests_total{{namespace="{namespace}",pod=~"{ROLLOUT}-green-.+"}}[3s]))'
            f' / sum(rate(http_requests_total{{namespace="{namespace}"}}[3s]))'
        )
        env.set_image("v2", name=ROLLOUT, labels={"app": "checkout"})
        env.wait_phase("Paused", name=ROLLOUT, currentStep="2", timeout=90)
        prometheus.wait_for(share, lambda v: 0.15 <= v <= 0.35, timeout=30)  # Prometheus sees 25% on green
        env.promote(name=ROLLOUT)
        env.wait(
            lambda s: s.get("currentStep") == 3 and (s.get("release") or {}).get("analysisKey"),
            name=ROLLOUT,
            timeout=60,
            what="analysis at 75%",
        )
        prometheus.wait_for(share, lambda v: 0.6 <= v <= 0.9, timeout=30)  # ... then 75%
        st = env.wait_phase("Healthy", name=ROLLOUT, activeColor="green", stableRevision="2", timeout=90)
        prometheus.wait_for(share, lambda v: v >= 0.95, timeout=30)  # ... then all of it
    runs = {m["run"] for m in st["analysis"] if m["color"] == "green"}
    assert {"2:steps:0", "2:steps:2"} <= runs, runs
