"""The chart's RBAC, seen from the operator's own ServiceAccount.

The chart is installed with `helm install` in each RBAC mode; a token for its
ServiceAccount comes from the TokenRequest API. With that token:
* a SelfSubjectAccessReview says yes to every verb the operator uses, where it uses it;
* real calls succeed (list Rollouts, read a Secret in a watched namespace, ...);
* what the operator must not do is refused, by the review and by a real call (Secrets
  outside the watched namespaces, deleting Services, listing Secrets, ...);
* a SelfSubjectRulesReview lists nothing beyond the operator's needs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cli_helpers import installed_chart, teal
from test_helm_chart import CLUSTER_MODE_ONLY, CLUSTER_NEEDS, LEASE_VERBS, NAMESPACED_NEEDS

pytestmark = pytest.mark.cluster

# Granted to every authenticated user by the default ClusterRoles (system:basic-user, ...).
BASELINE = {
    ("authorization.k8s.io", "selfsubjectaccessreviews"): {"create"},
    ("authorization.k8s.io", "selfsubjectrulesreviews"): {"create"},
    ("authentication.k8s.io", "selfsubjectreviews"): {"create"},
}


class Installed:
    def __init__(
        self, mode: str, operator_ns: str, watched: list[str], other: str, release: str, token: str, client: Any, kubeconfig: str
    ):
        self.mode, self.operator_ns, self.watched, self.other = mode, operator_ns, watched, other
        self.release, self.token, self.client, self.kubeconfig = release, token, client, kubeconfig

    def review(self, verb: str, group: str, resource: str, namespace: str | None = None, name: str | None = None) -> bool:
        from kubernetes import client

        sub = None
        if "/" in resource:
            resource, sub = resource.split("/", 1)
        attrs = {"verb": verb, "group": group, "resource": resource}
        if sub:
            attrs["subresource"] = sub
        if namespace:
            attrs["namespace"] = namespace
        if name:
            attrs["name"] = name
        answer = client.AuthorizationV1Api(self.client).create_self_subject_access_review(
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": attrs}}
        )
        return bool(answer.status.allowed)

    def rules(self, namespace: str) -> dict[tuple[str, str], set[str]]:
        from kubernetes import client

        answer = client.AuthorizationV1Api(self.client).create_self_subject_rules_review(
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": namespace}}
        )
        out: dict[tuple[str, str], set[str]] = {}
        for rule in answer.status.resource_rules:
            for g in rule.api_groups or []:
                for r in rule.resources or []:
                    out.setdefault((g, r), set()).update(rule.verbs or [])
        return out


def _namespace(core, name: str) -> str:
    core.create_namespace({"metadata": {"name": name, "labels": {"teal.dev/test": "true"}}})
    return name


@pytest.fixture(scope="module", params=["namespaced", "cluster"])
def installed(request, helm, chart_dir, cluster, k8s) -> Iterator[Installed]:
    from kubernetes import client

    core = client.CoreV1Api(k8s)
    tag = uuid.uuid4().hex[:5]
    mode = request.param
    op = _namespace(core, f"rbac-{mode[:3]}-op-{tag}")
    watched = [_namespace(core, f"rbac-{mode[:3]}-w{i}-{tag}") for i in (1, 2)]
    other = _namespace(core, f"rbac-{mode[:3]}-other-{tag}")
    sets = ["leaderElection.enabled=true", "leaderElection.shards=2"]
    if mode == "namespaced":
        sets += ["rbac.scope=namespaced", f"watchNamespaces={{{','.join(watched)}}}"]
    try:
        with installed_chart(helm, chart_dir, cluster, k8s, op, *sets, release=f"teal-{tag}") as chart:
            api = cluster.api_client(chart.token)
            try:
                yield Installed(mode, op, watched, other, chart.release, chart.token, api, chart.kubeconfig)
            finally:
                api.close()
    finally:
        for ns in (op, *watched, other):
            try:
                core.delete_namespace(ns)
            except Exception:
                pass


def test_the_token_is_the_service_account(installed):
    from kubernetes import client

    review = client.AuthenticationV1Api(installed.client).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    assert review.status.user_info.username == f"system:serviceaccount:{installed.operator_ns}:{installed.release}"


def test_every_verb_the_operator_uses_is_allowed(installed):
    places = installed.watched if installed.mode == "namespaced" else [*installed.watched, installed.other]
    missing = []
    for ns in places:
        for (group, resource), verbs in NAMESPACED_NEEDS.items():
            for verb in sorted(verbs):
                if not installed.review(verb, group, resource, ns):
                    missing.append((ns, group, resource, verb))
    for (group, resource), verbs in CLUSTER_NEEDS.items():
        for verb in verbs:
            if not installed.review(verb, group, resource):
                missing.append(("<cluster>", group, resource, verb))
    if installed.mode == "cluster":
        for verb in ("list", "watch"):
            if not installed.review(verb, "", "namespaces"):
                missing.append(("<cluster>", "", "namespaces", verb))
            # kopf watches Rollouts across all namespaces
            if not installed.review(verb, "teal.dev", "rollouts"):
                missing.append(("<all namespaces>", "teal.dev", "rollouts", verb))
    for verb in LEASE_VERBS:  # the replicas' Leases, in the operator's own namespace (both modes)
        if not installed.review(verb, "coordination.k8s.io", "leases", installed.operator_ns):
            missing.append((installed.operator_ns, "coordination.k8s.io", "leases", verb))
    assert not missing, missing


def test_real_calls_succeed_where_they_should(installed, k8s):
    from kubernetes import client

    ns = installed.watched[0]
    client.CoreV1Api(k8s).create_namespaced_secret(ns, {"metadata": {"name": "prom-token"}, "stringData": {"token": "t"}})
    sa_core = client.CoreV1Api(installed.client)
    assert sa_core.read_namespaced_secret("prom-token", ns).data["token"]
    custom = client.CustomObjectsApi(installed.client)
    assert custom.list_namespaced_custom_object("teal.dev", "v1alpha1", ns, "rollouts")["items"] == []
    assert custom.list_cluster_custom_object("teal.dev", "v1alpha1", "clusteranalysistemplates")["items"] is not None
    apps = client.AppsV1Api(installed.client)
    dep = apps.create_namespaced_deployment(
        ns,
        {
            "metadata": {"name": "probe-blue"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "probe"}},
                "template": {
                    "metadata": {"labels": {"app": "probe"}},
                    "spec": {"containers": [{"name": "app", "image": "registry.example.com/x:1"}]},
                },
            },
        },
    )
    apps.patch_namespaced_deployment_scale("probe-blue", ns, {"spec": {"replicas": 1}})
    apps.delete_namespaced_deployment(dep.metadata.name, ns)
    svc = sa_core.create_namespaced_service(
        ns, {"metadata": {"name": "probe"}, "spec": {"ports": [{"port": 80}], "selector": {"app": "probe"}}}
    )
    sa_core.patch_namespaced_service(svc.metadata.name, ns, {"spec": {"selector": {"teal.dev/color": "blue"}}})
    sa_core.create_namespaced_event(
        ns,
        {
            "metadata": {"generateName": "probe."},
            "involvedObject": {"kind": "Service", "name": "probe", "namespace": ns},
            "reason": "Probe",
            "message": "rbac test",
            "type": "Normal",
        },
    )
    leases = client.CoordinationV1Api(installed.client)
    op_ns = installed.operator_ns
    lease = leases.create_namespaced_lease(op_ns, {"metadata": {"name": "probe-0"}, "spec": {"holderIdentity": "probe"}})
    lease.spec.holder_identity = "probe-2"
    assert leases.replace_namespaced_lease("probe-0", op_ns, lease).spec.holder_identity == "probe-2"
    assert [x.metadata.name for x in leases.list_namespaced_lease(op_ns).items if x.metadata.name == "probe-0"] == ["probe-0"]
    leases.delete_namespaced_lease("probe-0", op_ns)


def _forbidden(call) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        call()
    except ApiException as exc:
        return exc.status == 403
    return False


def test_what_the_operator_must_not_do_is_refused(installed, k8s):
    from kubernetes import client

    ns = installed.watched[0]
    refused = [
        ("delete", "", "services", ns),
        ("list", "", "secrets", ns),
        ("watch", "", "secrets", ns),
        ("create", "", "secrets", ns),
        ("update", "", "secrets", ns),
        ("create", "", "pods", ns),
        ("create", "", "pods/exec", ns),
        ("delete", "teal.dev", "rollouts", ns),
        ("create", "teal.dev", "rollouts", ns),
        ("create", "teal.dev", "analysistemplates", ns),
        ("update", "teal.dev", "clusteranalysistemplates", None),
        ("create", "gateway.networking.k8s.io", "httproutes", ns),
        ("delete", "gateway.networking.k8s.io", "httproutes", ns),
        ("create", "rbac.authorization.k8s.io", "clusterroles", None),
        ("create", "rbac.authorization.k8s.io", "rolebindings", ns),
        ("escalate", "rbac.authorization.k8s.io", "roles", ns),
        ("update", "apps", "deployments/status", ns),
        ("delete", "", "namespaces", None),
        ("create", "apiextensions.k8s.io", "customresourcedefinitions", None),
        ("create", "coordination.k8s.io", "leases", ns),  # Leases only in the operator's namespace
        ("update", "coordination.k8s.io", "leases", None),
    ]
    if installed.mode == "namespaced":
        refused += [
            ("get", "", "secrets", installed.other),
            ("list", "teal.dev", "rollouts", installed.other),
            ("list", "teal.dev", "rollouts", None),  # all namespaces
            ("create", "apps", "deployments", installed.other),
            ("patch", "", "services", installed.other),
            ("get", "", "secrets", installed.operator_ns),
            ("list", "", "namespaces", None),
            ("create", "coordination.k8s.io", "leases", installed.other),
        ]
    allowed = [r for r in refused if installed.review(r[0], r[1], r[2], r[3])]
    assert not allowed, allowed

    # and for real
    admin = client.CoreV1Api(k8s)
    for where in ([installed.other] if installed.mode == "namespaced" else []) + [ns]:
        admin.create_namespaced_secret(where, {"metadata": {"name": "db-password"}, "stringData": {"p": "x"}})
    sa_core = client.CoreV1Api(installed.client)
    assert _forbidden(lambda: sa_core.list_namespaced_secret(ns))
    svc = admin.create_namespaced_service(ns, {"metadata": {"name": "keep"}, "spec": {"ports": [{"port": 80}]}})
    assert _forbidden(lambda: sa_core.delete_namespaced_service(svc.metadata.name, ns))
    if installed.mode == "namespaced":
        assert _forbidden(lambda: sa_core.read_namespaced_secret("db-password", installed.other))
        custom = client.CustomObjectsApi(installed.client)
        assert _forbidden(lambda: custom.list_namespaced_custom_object("teal.dev", "v1alpha1", installed.other, "rollouts"))
        assert _forbidden(lambda: sa_core.list_namespace())


def test_nothing_beyond_the_needs(installed):
    expected_ns = {**NAMESPACED_NEEDS, **CLUSTER_NEEDS, **BASELINE}
    if installed.mode != "namespaced":
        expected_ns.update(CLUSTER_MODE_ONLY)
    for ns in installed.watched:
        rules = installed.rules(ns)
        extra = {k: v - expected_ns.get(k, set()) for k, v in rules.items() if v - expected_ns.get(k, set())}
        assert not extra, extra
        missing = {k: v - rules.get(k, set()) for k, v in NAMESPACED_NEEDS.items() if v - rules.get(k, set())}
        assert not missing, missing
    outside = installed.rules(installed.other)
    if installed.mode == "namespaced":
        # outside the watched namespaces: only the cluster-wide read of ClusterAnalysisTemplates
        assert {k: v for k, v in outside.items() if k not in BASELINE} == CLUSTER_NEEDS


def test_the_service_accounts_kubeconfig_works_with_kubectl_teal(installed):
    ok = teal("--kubeconfig", installed.kubeconfig, "list", "-n", installed.watched[1])
    assert ok.code == 0, ok
    other = teal("--kubeconfig", installed.kubeconfig, "list", "-n", installed.other)
    if installed.mode == "namespaced":
        assert other.code == 5 and "forbidden" in other.err.lower(), other
    else:
        assert other.code == 0, other
