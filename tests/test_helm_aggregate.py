"""The chart's ClusterRoles aggregated into view, edit and admin (`rbac.aggregateToDefaultRoles`).

Users are ServiceAccounts with a TokenRequest token, bound by a RoleBinding in one namespace
to a built-in ClusterRole: `jane` to edit, `joe` to view. With their kubeconfig,
`kubectl teal` (the plugin's own code):
* jane promotes and aborts a release in her namespace (both write rollouts/status),
  and is refused in a namespace where she has no binding;
* joe reads (`kubectl teal get`) and is refused `promote`.
The clusterrole-aggregation controller of the local kube-controller-manager does the copying.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from cli_helpers import (
    Rollouts,
    installed_chart,
    kubeconfig_env,
    progressing_status,
    rollout_manifest,
    run,
    teal,
    temp_kubeconfig,
)
from test_helm_chart import by_kind

pytestmark = pytest.mark.cluster

WRITE = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
READ = {"get", "list", "watch"}


def _rules(role: dict[str, Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["teal.dev"], rule
        for r in rule["resources"]:
            out.setdefault(r, set()).update(rule["verbs"])
    return out


def test_aggregated_roles_rendered(helm, chart_dir):
    out = run([helm, "template", "t", str(chart_dir), "--namespace", "teal-system"]).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    roles = {d["metadata"]["name"]: d for d in by_kind(docs, "ClusterRole") if "aggregate" in d["metadata"]["name"]}
    assert set(roles) == {"t-teal-aggregate-to-view", "t-teal-aggregate-to-edit", "t-teal-aggregate-to-admin"}
    for name, role in roles.items():
        kind = name.rsplit("-", 1)[1]
        assert role["metadata"]["labels"][f"rbac.authorization.k8s.io/aggregate-to-{kind}"] == "true"
    status = {"get", "update", "patch"}
    assert _rules(roles["t-teal-aggregate-to-view"]) == {
        "rollouts": READ,
        "rollouts/status": READ,
        "rollouts/scale": READ,
        "analysistemplates": READ,
        "clusteranalysistemplates": READ,
        "releasepolicies": READ,
        "clusterreleasepolicies": READ,
    }
    assert _rules(roles["t-teal-aggregate-to-edit"]) == {
        "rollouts": WRITE,
        "rollouts/status": status,
        "rollouts/scale": status,
        "analysistemplates": WRITE,
        "clusteranalysistemplates": READ,
        "releasepolicies": WRITE,
        "clusterreleasepolicies": READ,
    }
    assert _rules(roles["t-teal-aggregate-to-admin"]) == {
        "rollouts": WRITE,
        "rollouts/status": status,
        "rollouts/scale": status,
        "analysistemplates": WRITE,
        "clusteranalysistemplates": WRITE,
        "releasepolicies": WRITE,
        "clusterreleasepolicies": WRITE,
    }

    out = run([helm, "template", "t", str(chart_dir), "--set", "rbac.aggregateToDefaultRoles=false"]).stdout
    assert "aggregate-to-" not in out


class User:
    def __init__(self, name: str, kubeconfig: str):
        self.name, self.kubeconfig = name, kubeconfig

    def teal(self, *argv: str):
        with kubeconfig_env(self.kubeconfig):
            return teal(*argv)


def _user(cluster: Any, k8s: Any, namespace: str, name: str, role: str) -> User:
    """A ServiceAccount `name` bound to the built-in ClusterRole `role` in `namespace`, with its own token."""
    from kubernetes import client

    client.CoreV1Api(k8s).create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    client.RbacAuthorizationV1Api(k8s).create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": f"{name}-{role}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )
    token = cluster.create_token(namespace, name)  # the TokenRequest API
    return User(name, temp_kubeconfig(cluster, token, name))


def _rules_of_builtin(k8s: Any, role: str) -> dict[str, set[str]]:
    from kubernetes import client

    out: dict[str, set[str]] = {}
    for rule in client.RbacAuthorizationV1Api(k8s).read_cluster_role(role).rules or []:
        if "teal.dev" in (rule.api_groups or []):
            for r in rule.resources or []:
                out.setdefault(r, set()).update(rule.verbs or [])
    return out


@pytest.fixture(scope="module")
def team(helm, chart_dir, cluster, k8s, teal_crds) -> Iterator[dict[str, Any]]:
    from kubernetes import client

    core = client.CoreV1Api(k8s)
    tag = uuid.uuid4().hex[:5]
    op, mine, other = f"agg-op-{tag}", f"agg-team-{tag}", f"agg-other-{tag}"
    for ns in (op, mine, other):
        core.create_namespace({"metadata": {"name": ns, "labels": {"teal.dev/test": "true"}}})
    try:
        with installed_chart(helm, chart_dir, cluster, k8s, op, release=f"teal-agg-{tag}"):
            from teal_devenv.wait import wait_for

            # the clusterrole-aggregation controller copies the rules into the built-in roles
            wait_for(
                lambda: "patch" in _rules_of_builtin(k8s, "edit").get("rollouts/status", set()),
                timeout=60,
                what="rollouts/status in the edit ClusterRole",
            )
            wait_for(
                lambda: "get" in _rules_of_builtin(k8s, "view").get("rollouts", set()),
                timeout=60,
                what="rollouts in the view ClusterRole",
            )
            for ns, name in ((mine, "checkout"), (mine, "cart"), (other, "checkout")):
                ros = Rollouts(k8s, ns)
                ros.create(rollout_manifest(name))
                ros.set_status(name, progressing_status())
            yield {
                "mine": mine,
                "other": other,
                "jane": _user(cluster, k8s, mine, "jane", "edit"),
                "joe": _user(cluster, k8s, mine, "joe", "view"),
            }
    finally:
        for ns in (op, mine, other):
            core.delete_namespace(ns)


def test_an_editor_promotes_and_aborts(team, k8s):
    jane, ns = team["jane"], team["mine"]
    r = jane.teal("promote", "checkout", "-n", ns)
    assert r.code == 0, r
    assert Rollouts(k8s, ns).get("checkout")["status"]["promote"]["revision"] == "2"
    r = jane.teal("abort", "checkout", "-n", ns, "--message", "checkout errors")
    assert r.code == 0, r
    abort = Rollouts(k8s, ns).get("checkout")["status"]["abort"]
    assert abort["reason"] == "AbortedByUser" and f"serviceaccount:{ns}:jane" in abort["message"], abort


def test_an_editor_elsewhere_is_refused(team, k8s):
    jane, other = team["jane"], team["other"]
    r = jane.teal("promote", "checkout", "-n", other)
    assert r.code != 0
    assert "forbidden" in r.err and "jane" in r.err and other in r.err, r
    assert "promote" not in (Rollouts(k8s, other).get("checkout").get("status") or {})


def test_a_viewer_reads_but_cannot_promote(team, k8s):
    joe, ns = team["joe"], team["mine"]
    r = joe.teal("get", "cart", "-n", ns)
    assert r.code == 0 and "cart" in r.out, r
    r = joe.teal("promote", "cart", "-n", ns)
    assert r.code != 0
    assert 'cannot patch resource "rollouts/status"' in r.err and "joe" in r.err, r
