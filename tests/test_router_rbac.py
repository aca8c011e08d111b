"""Traffic routers the chart's RBAC leaves out, and router CRDs the cluster lacks.

The operator runs as it runs in the chart: with the chart's ServiceAccount (a TokenRequest
token) and the arguments of the chart's own Deployment. The cluster is a fresh local
control plane of this module (its own ports), because the suite's cluster has the Gateway
API and Istio CRDs installed for the whole session and a CRD cannot be removed without
disturbing the other tests.

With `rbac.trafficRouters.nginx=false` and `istio=false` (so Ingresses, which every cluster
serves, may not be watched) and no Gateway API CRDs at all, the operator must start, keep
running without an error in its log, release a plain Rollout, and report reason
RouterUnavailable on exactly the Rollouts that name a router it cannot use.
"""

from __future__ import annotations

import re
import signal
import uuid
from collections.abc import Iterator

import kubernetes
import pytest

from cli_helpers import installed_chart
from operator_helpers import Env, OperatorProcess, rollout
from teal_devenv.cluster import LocalCluster
from teal_devenv.wait import wait_for
from test_helm_chart import by_kind, template

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

SETS = ("rbac.trafficRouters.nginx=false", "rbac.trafficRouters.istio=false")
ROUTES = {"gatewayAPI": {"httpRoute": "web"}, "nginx": {"ingress": "web"}, "istio": {"virtualService": "web"}}


@pytest.mark.parametrize(
    "sets, routers",
    [
        ((), "gatewayAPI,istio,nginx"),
        (SETS, "gatewayAPI"),
        (("rbac.trafficRouters.gatewayAPI=false", *SETS), "none"),
    ],
)
def test_the_chart_passes_the_routers_its_rbac_covers(helm, chart_dir, sets, routers):
    (dep,) = by_kind(template(helm, chart_dir, *sets), "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--routers")] == [f"--routers={routers}"]


def test_routers_setting_is_checked_at_start(monkeypatch, capsys):
    from teal.main import parser

    assert parser().parse_args(["run", "--routers", "nginx, istio"]).routers == ("nginx", "istio")
    assert parser().parse_args(["run", "--routers", "none"]).routers == ()
    monkeypatch.delenv("TEAL_ROUTERS", raising=False)
    assert parser().parse_args(["run"]).routers == ("gatewayAPI", "nginx", "istio")
    monkeypatch.setenv("TEAL_ROUTERS", "istio")
    assert parser().parse_args(["run"]).routers == ("istio",)
    for bad in (["--routers", "gateway"], []):
        monkeypatch.setenv("TEAL_ROUTERS", "bogus")
        with pytest.raises(SystemExit):
            parser().parse_args(["run", *bad])
        assert "unknown traffic router" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """A second local control plane: Teal's chart only, no Gateway API or Istio CRDs."""
    c = LocalCluster(tmp_path_factory.mktemp("bare-cluster"), keep_logs=True, nodes=1, name="teal-bare")
    try:
        c.start()
        yield c
    finally:
        c.stop()
        left = c.leftover_processes()
        assert not left, f"the bare cluster left processes: {left}"


@pytest.fixture(scope="module")
def bare_k8s(bare_cluster):
    api = bare_cluster.api_client()
    try:
        yield api
    finally:
        api.close()


def chart_args(k8s, namespace: str) -> list[str]:
    """`teal run` arguments of the chart's Deployment, minus its ports (the test's operator
    runs outside the cluster, without probes or metrics)."""
    (dep,) = (
        kubernetes.client.AppsV1Api(k8s)
        .list_namespaced_deployment(namespace, label_selector="app.kubernetes.io/component=operator")
        .items
    )
    args = dep.spec.template.spec.containers[0].args
    assert args[0] == "run", args
    return [a for a in args[1:] if not a.startswith(("--liveness-port", "--metrics-port"))]


def weighted(kind: str) -> dict:
    body = rollout(name=f"via-{kind.lower()}", trafficRouting={kind: ROUTES[kind]}, steps=[{"setWeight": 50}])
    # a Service of its own: two Rollouts may not steer one Service (ServiceClaimed)
    body["spec"]["strategy"]["blueGreen"]["activeServices"] = [body["metadata"]["name"]]
    del body["spec"]["strategy"]["blueGreen"]["previewService"]
    return body


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_disabled_and_absent_routers(bare_cluster, bare_k8s, helm, chart_dir, tmp_path, scope):
    core = kubernetes.client.CoreV1Api(bare_k8s)
    tag = uuid.uuid4().hex[:5]
    op_ns, app_ns = f"teal-{scope[:3]}-{tag}", f"shop-{scope[:3]}-{tag}"
    for ns in (op_ns, app_ns):
        core.create_namespace({"metadata": {"name": ns}})
    sets = [*SETS] + (["rbac.scope=namespaced", f"watchNamespaces={{{app_ns}}}"] if scope == "namespaced" else [])
    with installed_chart(helm, chart_dir, bare_cluster, bare_k8s, op_ns, *sets) as chart:
        args = chart_args(bare_k8s, op_ns)
        assert "--routers=gatewayAPI" in args, args
        wait_for(
            lambda: (
                kubernetes.client.CustomObjectsApi(bare_k8s).list_namespaced_custom_object(
                    "teal.dev", "v1alpha1", app_ns, "rollouts"
                )
                is not None
            ),
            timeout=60,
            what="the Rollout CRD served",
        )
        op = OperatorProcess(chart.kubeconfig, tmp_path / "operator.log", extra_args=args).start()
        try:
            env = Env(bare_k8s, app_ns)
            env.create_service("app")
            env.create_service("app-preview")
            env.create_rollout(rollout())
            for kind in ROUTES:
                body = weighted(kind)
                env.create_service(body["metadata"]["name"])
                env.create_rollout(body)
            env.wait_phase("Healthy", activeColor="blue", stableRevision="1", timeout=90)
            for kind in ("nginx", "istio"):  # switched off in the chart
                st = env.wait_phase("Degraded", name=f"via-{kind.lower()}", reason="RouterUnavailable", timeout=30)
                assert f"rbac.trafficRouters.{kind}" in st["message"] and "enabled: gatewayAPI" in st["message"], st
            st = env.wait_phase("Degraded", name="via-gatewayapi", reason="RouterUnavailable", timeout=30)
            assert "gateway.networking.k8s.io" in st["message"] and "not served" in st["message"], st
            # the plain Rollout is not held up by the others: a second release completes
            env.set_image("v2")
            env.wait_phase("Healthy", activeColor="green", stableRevision="2", timeout=90)
            assert op.proc.poll() is None, "the operator exited:\n" + op.log_tail(80)
            log = op.log_tail(5000)
            bad = [
                line
                for line in log.splitlines()
                if re.search(r"\b(ERROR|CRITICAL)\b|Traceback|forbidden|ingresses|virtualservices", line)
            ]
            assert not bad, "\n".join(bad[:20])
        finally:
            op.kill(signal.SIGTERM)
            for ns in (op_ns, app_ns):
                core.delete_namespace(ns)


def test_a_router_crd_installed_later_is_used_without_a_restart(bare_cluster, bare_k8s, helm, chart_dir, tmp_path):
    """Cluster-wide, the operator starts without the Gateway API; once its CRDs are installed
    the same Rollout goes on (no restart) and its first release completes through the route.
    Runs last in the module: it leaves the router CRDs in the module's cluster."""
    from routing_helpers import crd_documents, fetch_router_crds, install_crds

    core = kubernetes.client.CoreV1Api(bare_k8s)
    tag = uuid.uuid4().hex[:5]
    op_ns, app_ns = f"teal-late-{tag}", f"shop-late-{tag}"
    for ns in (op_ns, app_ns):
        core.create_namespace({"metadata": {"name": ns}})
    with installed_chart(helm, chart_dir, bare_cluster, bare_k8s, op_ns, *SETS) as chart:
        op = OperatorProcess(chart.kubeconfig, tmp_path / "operator.log", extra_args=chart_args(bare_k8s, op_ns)).start()
        try:
            env = Env(bare_k8s, app_ns)
            body = weighted("gatewayAPI")
            env.create_service(body["metadata"]["name"])
            env.create_rollout(body)
            name = body["metadata"]["name"]
            env.wait_phase("Degraded", name=name, reason="RouterUnavailable", timeout=60)
            install_crds(bare_k8s, crd_documents(fetch_router_crds().values()))
            env.custom.patch_namespaced_custom_object(  # any event wakes the Rollout (else the 30 s resync)
                "teal.dev", "v1alpha1", app_ns, "rollouts", name, {"metadata": {"annotations": {"test/poke": "1"}}}
            )
            st = env.wait_phase("Degraded", name=name, reason="TrafficRouterError", timeout=60)
            assert "HTTPRoute web not found" in st["message"], st["message"]
            env.custom.create_namespaced_custom_object(
                "gateway.networking.k8s.io",
                "v1",
                app_ns,
                "httproutes",
                {
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "HTTPRoute",
                    "metadata": {"name": "web"},
                    "spec": {
                        "parentRefs": [{"name": "public"}],
                        "rules": [{"backendRefs": [{"name": f"{name}-blue", "port": 80}]}],
                    },
                },
            )
            st = env.wait_phase("Healthy", name=name, activeColor="blue", timeout=90)
            assert st["weights"] == {"blue": 100, "green": 0}
            assert op.proc.poll() is None, "the operator exited:\n" + op.log_tail(80)
        finally:
            op.kill(signal.SIGTERM)
            for ns in (op_ns, app_ns):
                core.delete_namespace(ns)
