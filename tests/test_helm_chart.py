"""The Helm chart: lint, values schema, rendered manifests, and the real apiserver.

Offline: `helm lint --strict`, the values schema rejects bad values, the rendered
Deployment is hardened and the RBAC rules are exactly what the operator uses.
Cluster: `helm template | kubectl apply --dry-run=server` in both RBAC modes and
`helm install` into the local control plane.
The RBAC itself (enough, and not too much) is tested in test_helm_rbac.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli_helpers import (
    CHART,
    release_name,
    run,
)
from teal_devenv.wait import wait_for

# What the operator uses (docs/status-and-api.md, issue 6): (apiGroup, resource) -> verbs.
NAMESPACED_NEEDS: dict[tuple[str, str], set[str]] = {
    ("teal.dev", "rollouts"): {"get", "list", "watch", "patch", "update"},
    ("teal.dev", "rollouts/status"): {"get", "patch", "update"},
    ("teal.dev", "rollouts/finalizers"): {"update"},
    ("teal.dev", "analysistemplates"): {"get", "list", "watch"},
    ("teal.dev", "releasepolicies"): {"get", "list", "watch"},
    ("teal.dev", "releasepolicies/status"): {"get", "patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("apps", "deployments/scale"): {"patch"},
    ("apps", "controllerrevisions"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "update", "patch"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("", "secrets"): {"get"},
    ("gateway.networking.k8s.io", "httproutes"): {"get", "list", "watch", "update", "patch"},
    ("networking.k8s.io", "ingresses"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("networking.istio.io", "virtualservices"): {"get", "list", "watch", "update", "patch"},
}
CLUSTER_NEEDS: dict[tuple[str, str], set[str]] = {
    ("teal.dev", "clusteranalysistemplates"): {"get", "list", "watch"},
    ("teal.dev", "clusterreleasepolicies"): {"get", "list", "watch"},
    ("teal.dev", "clusterreleasepolicies/status"): {"get", "patch"},
}
# Only a cluster-wide operator discovers namespaces and CRDs at run time (kopf's scanning).
CLUSTER_MODE_ONLY: dict[tuple[str, str], set[str]] = {
    ("", "namespaces"): {"list", "watch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
}
LEASE_VERBS = {"get", "list", "watch", "create", "update", "delete"}  # shard and membership Leases (teal.leases)


def template(
    helm: str, chart: Path, *sets: str, namespace: str = "teal-system", name: str = "teal", extra: list[str] | None = None
) -> list[dict[str, Any]]:
    args = [helm, "template", name, str(chart), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    proc = run(args + (extra or []))
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def rules_of(docs: list[dict[str, Any]], kind: str, namespace: str | None = None) -> dict[tuple[str, str], set[str]]:
    """The operator's own rules (the roles aggregated into view/edit/admin are for users: test_helm_aggregate.py)."""
    out: dict[tuple[str, str], set[str]] = {}
    for d in docs:
        if d["kind"] != kind or (namespace is not None and d["metadata"].get("namespace") != namespace):
            continue
        if any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in d["metadata"].get("labels") or {}):
            continue
        for rule in d.get("rules") or []:
            for g in rule.get("apiGroups") or []:
                for r in rule.get("resources") or []:
                    out.setdefault((g, r), set()).update(rule.get("verbs") or [])
    return out


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# ---------------------------------------------------------------- offline


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["rbac.scope=namespaced", "watchNamespaces={shop,payments}"],
        ["replicas=3", "leaderElection.enabled=true", "podDisruptionBudget.enabled=true", "metrics.serviceMonitor.enabled=true"],
    ],
    ids=["cluster", "namespaced", "ha"],
)
def test_helm_lint_strict(helm, sets):
    args = [helm, "lint", "--strict", str(CHART)]
    for s in sets:
        args += ["--set", s]
    proc = run(args)
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(
    "sets, message",
    [
        (["rbac.scope=everything"], "value must be one of 'cluster', 'namespaced'"),
        (["replicas=-1"], "/replicas"),
        (["rbac.scope=namespaced"], "/watchNamespaces"),
        (["replicas=2"], "/leaderElection/enabled"),
        (["leaderElection.shards=0"], "/leaderElection/shards"),
        (["podDisruptionBudget.enabled=true"], "/replicas"),
        (["metrics.enabled=false", "metrics.serviceMonitor.enabled=true"], "/metrics/enabled"),
        (["operator.logLevel=verbose"], "/operator/logLevel"),
        (["operator.logFormat=xml"], "/operator/logFormat"),
        (["operator.prometheusAddress=prometheus:9090"], "/operator/prometheusAddress"),
        (["watchNamespaces={Not_A_Namespace}", "rbac.scope=namespaced"], "/watchNamespaces/0"),
        (["metrics.port=70000"], "/metrics/port"),
        (["image.digest=latest"], "/image/digest"),
        (["replicaCount=2"], "additional properties 'replicaCount' not allowed"),
    ],
    ids=lambda x: x if isinstance(x, str) else ",".join(x),
)
def test_values_schema_rejects_bad_values(helm, sets, message):
    args = [helm, "template", "t", str(CHART)]
    for s in sets:
        args += ["--set", s]
    proc = run(args, check=False)
    assert proc.returncode != 0, proc.stdout[:500]
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_schema_is_valid_json_and_documents_every_default(helm):
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"]), set(values) - set(schema["properties"])


def test_deployment_is_hardened(helm, chart_dir):
    docs = template(helm, chart_dir)
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/teal-dev/teal:0.1.0"
    assert c["command"] == ["teal"]
    assert c["args"][0] == "run"
    assert "--all-namespaces" in c["args"]
    assert "--log-level=info" in c["args"] and "--log-format=text" in c["args"]
    assert "--liveness-port=8080" in c["args"] and "--metrics-port=9090" in c["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"name": "healthz", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert dep["spec"]["strategy"]["type"] == "Recreate"  # one replica, no Leases: never two at once
    (sa,) = by_kind(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["ports"][0]["port"] == 9090
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PodDisruptionBudget")
    assert not any(d["metadata"]["name"].endswith("-leases") for d in by_kind(docs, "Role"))
    assert not any(a.startswith(("--leader-elect", "--shards", "--peering")) for a in c["args"])


def test_operator_settings_become_flags(helm, chart_dir):
    docs = template(
        helm,
        chart_dir,
        "operator.prometheusAddress=http://prometheus.monitoring:9090",
        "operator.logLevel=debug",
        "operator.logFormat=json",
        "image.tag=0.2.0",
        "rbac.scope=namespaced",
        "watchNamespaces={shop,payments}",
    )
    (c,) = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "ghcr.io/teal-dev/teal:0.2.0"
    assert "--prometheus-address=http://prometheus.monitoring:9090" in c["args"]
    assert "--log-level=debug" in c["args"] and "--log-format=json" in c["args"]
    assert "--namespace=shop" in c["args"] and "--namespace=payments" in c["args"]
    assert "--all-namespaces" not in c["args"]
    (c,) = by_kind(template(helm, chart_dir, "metrics.enabled=false"), "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert "--metrics-port=0" in c["args"]  # the operator's "no metrics endpoint"
    assert [p["name"] for p in c["ports"]] == ["healthz"]
    digest = "sha256:" + "a" * 64
    (c,) = by_kind(template(helm, chart_dir, f"image.digest={digest}"), "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert c["image"] == f"ghcr.io/teal-dev/teal@{digest}"


def test_cluster_rbac_is_exactly_what_the_operator_uses(helm, chart_dir):
    docs = template(helm, chart_dir)
    assert not by_kind(docs, "Role")
    rules = rules_of(docs, "ClusterRole")
    want = {**NAMESPACED_NEEDS, **CLUSTER_NEEDS, **CLUSTER_MODE_ONLY}
    assert rules == want
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "teal", "namespace": "teal-system"}]


def test_namespaced_rbac_is_per_namespace(helm, chart_dir):
    docs = template(helm, chart_dir, "rbac.scope=namespaced", "watchNamespaces={shop,payments}")
    for ns in ("shop", "payments"):
        assert rules_of(docs, "Role", ns) == NAMESPACED_NEEDS
        (rb,) = [d for d in by_kind(docs, "RoleBinding") if d["metadata"]["namespace"] == ns]
        assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "teal"}
    assert rules_of(docs, "ClusterRole") == CLUSTER_NEEDS  # nothing else cluster-wide


def test_no_wildcards_anywhere(helm, chart_dir):
    for sets in ([], ["rbac.scope=namespaced", "watchNamespaces={a}"], ["leaderElection.enabled=true", "replicas=2"]):
        docs = template(helm, chart_dir, *sets)
        for d in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
            for rule in d["rules"]:
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(key, []), (d["metadata"]["name"], rule)
                assert "resourceNames" not in rule or rule["resourceNames"]


def test_router_and_secret_permissions_can_be_turned_off(helm, chart_dir):
    docs = template(
        helm,
        chart_dir,
        "rbac.trafficRouters.istio=false",
        "rbac.trafficRouters.nginx=false",
        "rbac.trafficRouters.gatewayAPI=false",
        "rbac.secrets=false",
    )
    rules = rules_of(docs, "ClusterRole")
    for gone in [
        ("networking.istio.io", "virtualservices"),
        ("networking.k8s.io", "ingresses"),
        ("gateway.networking.k8s.io", "httproutes"),
        ("", "secrets"),
    ]:
        assert gone not in rules


def test_leases_in_both_modes(helm, chart_dir):
    for mode in ([], ["rbac.scope=namespaced", "watchNamespaces={shop,payments}"]):
        docs = template(helm, chart_dir, "replicas=3", "leaderElection.enabled=true", "leaderElection.shards=3", *mode)
        (dep,) = by_kind(docs, "Deployment")
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert {"--leader-elect", "--lease-name=teal", "--lease-namespace=teal-system", "--shards=3"} <= set(c["args"])
        assert {"--lease-duration=8", "--renew-deadline=5", "--retry-period=1"} <= set(c["args"])
        assert dep["spec"]["replicas"] == 3
        assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
        env = {e["name"]: e for e in c["env"]}
        assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # the holder identity
        # the Leases live in the release's namespace, whatever the operator watches
        assert rules_of(docs, "Role", "teal-system") == {("coordination.k8s.io", "leases"): LEASE_VERBS}
        (rb,) = [d for d in by_kind(docs, "RoleBinding") if d["metadata"]["name"] == "teal-leases"]
        assert rb["metadata"]["namespace"] == "teal-system" and rb["roleRef"]["name"] == "teal-leases"
        assert ("coordination.k8s.io", "leases") not in rules_of(docs, "ClusterRole")
        assert not [d for d in docs if d["apiVersion"].startswith("kopf.dev")]

    # more than one shard turns Leases on by itself; the deprecated peering values still work
    sharded = template(helm, chart_dir, "leaderElection.shards=4")
    (c,) = by_kind(sharded, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert "--leader-elect" in c["args"] and "--shards=4" in c["args"]
    old = template(helm, chart_dir, "replicas=2", "peering.enabled=true", "peering.name=legacy")
    (c,) = by_kind(old, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert "--leader-elect" in c["args"] and "--lease-name=legacy" in c["args"]
    assert "TEAL_PRIORITY" not in {e["name"] for e in c["env"]}
    bad = run([helm, "template", "t", str(chart_dir), "--set", "leaderElection.renewDeadline=10"], check=False)
    assert bad.returncode != 0 and "leaseDuration > renewDeadline > retryPeriod" in bad.stderr, bad.stderr


def test_crds_ship_with_the_chart(helm, chart_dir):
    out = run([helm, "template", "t", str(chart_dir), "--include-crds"]).stdout
    names = {d["metadata"]["name"] for d in yaml.safe_load_all(out) if d and d["kind"] == "CustomResourceDefinition"}
    # Teal's own only (replicas meet on coordination.k8s.io Leases, not on kopf's peering CRDs)
    assert "rollouts.teal.dev" in names and not [n for n in names if n.endswith(".kopf.dev")]


def test_servicemonitor_and_pdb(helm, chart_dir):
    docs = template(
        helm,
        chart_dir,
        "replicas=2",
        "leaderElection.enabled=true",
        "podDisruptionBudget.enabled=true",
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=prom",
    )
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    (svc,) = by_kind(docs, "Service")
    assert all(svc["metadata"]["labels"][k] == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    (dep,) = by_kind(docs, "Deployment")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


@pytest.mark.cluster
def test_notes_tell_what_to_do_next(helm, chart_dir, cluster):
    # `helm install --dry-run=server` renders NOTES.txt (helm template does not); the server mode lets the
    # chart's lookup see that the CRDs exist already (applied by another fixture), as a real install would
    proc = run(
        [
            helm,
            "install",
            "t",
            str(chart_dir),
            "--dry-run=server",
            "--namespace",
            "teal-system",
            "--set",
            "rbac.scope=namespaced",
            "--set",
            "watchNamespaces={shop}",
        ],
        env={"KUBECONFIG": cluster.kubeconfig},
    )
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl teal -n shop list" in notes
    assert "kubectl teal -n shop get" in notes
    assert "kubectl -n shop apply -f" in notes
    assert "no default Prometheus" in notes


# ---------------------------------------------------------------- against the apiserver


def _ensure_namespaces(k8s, *names: str) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(k8s)
    for n in names:
        try:
            core.create_namespace({"metadata": {"name": n, "labels": {"teal.dev/test": "true"}}})
        except ApiException as exc:
            if exc.status != 409:
                raise


def _delete_namespaces(k8s, *names: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(k8s)
    for n in names:
        try:
            core.delete_namespace(n)
        except Exception:
            pass


@pytest.mark.cluster
@pytest.mark.parametrize("mode", ["cluster", "namespaced", "namespaced-leases", "cluster-leases"])
def test_template_applies_with_server_dry_run(helm, kubectl, chart_dir, cluster, k8s, namespace, mode):
    watched = [f"{namespace}-a", f"{namespace}-b"]
    sets = []
    if mode.startswith("namespaced"):
        sets += ["rbac.scope=namespaced", f"watchNamespaces={{{','.join(watched)}}}"]
        _ensure_namespaces(k8s, *watched)
    if mode.endswith("leases"):
        sets += ["replicas=2", "leaderElection.enabled=true", "leaderElection.shards=2", "podDisruptionBudget.enabled=true"]
    try:
        args = [helm, "template", release_name(), str(chart_dir), "--namespace", namespace, "--include-crds"]
        for s in sets:
            args += ["--set", s]
        docs = [d for d in yaml.safe_load_all(run(args).stdout) if d]
        crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
        rest = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
        # CRDs first (for real: a dry run cannot create kinds that the same dry run defines)
        run(
            [
                kubectl,
                "--kubeconfig",
                cluster.kubeconfig,
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager",
                "teal-tests",
                "-f",
                "-",
            ],
            input=yaml.safe_dump_all(crds),
        )
        for d in crds:
            run(
                [
                    kubectl,
                    "--kubeconfig",
                    cluster.kubeconfig,
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    f"crd/{d['metadata']['name']}",
                ]
            )
        proc = run(
            [kubectl, "--kubeconfig", cluster.kubeconfig, "apply", "--dry-run=server", "--validate=strict", "-f", "-"],
            input=yaml.safe_dump_all(rest),
        )
        kinds = {line.split("/")[0] for line in proc.stdout.splitlines()}
        assert any("deployment" in k for k in kinds) and any("serviceaccount" in k for k in kinds), proc.stdout
        assert all("(server dry run)" in line for line in proc.stdout.splitlines())
        if mode.startswith("namespaced"):
            roles = [line for line in proc.stdout.splitlines() if line.startswith("role.rbac.authorization.k8s.io/")]
            assert len(roles) == (3 if mode.endswith("leases") else 2), proc.stdout  # + the Leases' Role
    finally:
        if mode.startswith("namespaced"):
            _delete_namespaces(k8s, *watched)


@pytest.mark.cluster
def test_helm_install_upgrade_uninstall(helm, kubectl, chart_dir, cluster, k8s, namespace):
    from kubernetes import client

    name = release_name()
    watched = f"{namespace}-w"
    _ensure_namespaces(k8s, watched)
    env = {"KUBECONFIG": cluster.kubeconfig}
    apps = client.AppsV1Api(k8s)
    try:
        proc = run(
            [
                helm,
                "install",
                name,
                str(chart_dir),
                "--namespace",
                namespace,
                "--wait",
                "--timeout",
                "120s",
                "--set",
                "rbac.scope=namespaced",
                "--set",
                f"watchNamespaces={{{watched}}}",
            ],
            env=env,
            timeout=180,
        )
        assert "STATUS: deployed" in proc.stdout
        assert f"kubectl teal -n {watched} list" in proc.stdout
        dep = apps.read_namespaced_deployment(f"{name}-teal" if "teal" not in name else name, namespace)
        assert dep.status.ready_replicas == 1  # kwok plays the kubelet: the pod turns Ready
        crd = client.ApiextensionsV1Api(k8s).read_custom_resource_definition("rollouts.teal.dev")
        assert crd.spec.group == "teal.dev"
        roles = client.RbacAuthorizationV1Api(k8s).list_namespaced_role(watched).items
        assert [r.metadata.name for r in roles] == [dep.metadata.name]

        # upgrade to two replicas sharing two shards through Leases (in the release's namespace)
        proc = run(
            [
                helm,
                "upgrade",
                name,
                str(chart_dir),
                "--namespace",
                namespace,
                "--wait",
                "--timeout",
                "120s",
                "--reuse-values",
                "--set",
                "replicas=2",
                "--set",
                "leaderElection.enabled=true",
                "--set",
                "leaderElection.shards=2",
            ],
            env=env,
            timeout=180,
        )
        assert "STATUS: deployed" in proc.stdout
        wait_for(
            lambda: apps.read_namespaced_deployment(dep.metadata.name, namespace).status.ready_replicas == 2,
            timeout=60,
            what="2 ready operator replicas",
        )
        lease_roles = client.RbacAuthorizationV1Api(k8s).list_namespaced_role(namespace).items
        assert [r.metadata.name for r in lease_roles] == [f"{dep.metadata.name}-leases"]
    finally:
        run([helm, "uninstall", name, "--namespace", namespace, "--wait", "--timeout", "60s"], env=env, check=False)
        _delete_namespaces(k8s, watched)
    assert run([helm, "status", name, "--namespace", namespace], env=env, check=False).returncode != 0
    assert not client.RbacAuthorizationV1Api(k8s).list_cluster_role(label_selector=f"app.kubernetes.io/instance={name}").items
