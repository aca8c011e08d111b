"""A colour the apiserver refuses, with the real operator on the local control plane.

A pod template the Deployment API refuses (422: `restartPolicy: Never`, a container
named `App_1`), a ResourceQuota that refuses the Deployment itself (403) and one that
lets no pod start (the ReplicaSet's ReplicaFailure condition): the Rollout says so at
once (reason DeploymentRejected, the apiserver's words, a Warning Event), keeps traffic on
the stable colour, and does not send the same Deployment again in a loop.

The module runs its own operator with a metrics endpoint (the session operator stands by,
fixture `no_operator`): `teal_reconciles_total` shows that the Rollout's loop woke up, and
`teal_deployments_rejected_total` how often a Deployment was sent and refused.
"""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from operator_helpers import _SESSION_OPERATORS, EndpointRecorder, Env, OperatorProcess, pod_template, rollout
from teal_devenv.procs import free_port
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

NEVER = pod_template("v1", restartPolicy="Never")


class MeteredOperator:
    """`teal run` cluster-wide with its metrics endpoint on a free port."""

    def __init__(self, kubeconfig: str, log_path):
        self.port = free_port()
        self.proc = OperatorProcess(kubeconfig, log_path, extra_args=["--metrics-port", str(self.port)])

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


@pytest.fixture(scope="module")
def metered(cluster, teal_crds, no_operator, tmp_path_factory) -> Iterator[MeteredOperator]:
    op = MeteredOperator(cluster.kubeconfig, tmp_path_factory.mktemp("metered") / "operator.log")
    op.proc.start()
    _SESSION_OPERATORS.append(op.proc)  # a failing test shows its log
    try:
        wait_for(
            lambda: op.value("teal_reconcile_duration_seconds_count") >= 0, timeout=30, what="the operator's metrics endpoint"
        )
        yield op
    finally:
        _SESSION_OPERATORS.remove(op.proc)
        op.proc.kill(signal.SIGTERM)


@pytest.fixture
def env(k8s, namespace, metered) -> Env:
    e = Env(k8s, namespace)
    e.create_service("app")
    e.create_service("app-preview")
    return e


def warnings(env: Env, reason: str, name: str = "app") -> list[str]:
    evs = env.core.list_namespaced_event(env.ns, field_selector=f"involvedObject.name={name}").items
    return [e.message for e in evs if e.type == "Warning" and e.reason == reason]


def rejections(metered: MeteredOperator, env: Env) -> float:
    return metered.value("teal_deployments_rejected_total", namespace=env.ns, rollout="app")


def assert_quiet(env: Env, metered: MeteredOperator, wakeups: int = 5) -> None:
    """Wake the Rollout's loop `wakeups` times (an event of its active Service each time):
    no status write (resourceVersion), no Deployment sent again."""
    rv = env.get()["metadata"]["resourceVersion"]
    refused = rejections(metered, env)
    for i in range(wakeups):
        seen = metered.value("teal_reconciles_total", namespace=env.ns, rollout="app")
        env.core.patch_namespaced_service("app", env.ns, {"metadata": {"annotations": {"test/poke": str(i)}}})
        wait_for(
            lambda: metered.value("teal_reconciles_total", namespace=env.ns, rollout="app") > seen,
            timeout=15,
            what=f"reconcile after poke {i}",
        )
    assert env.get()["metadata"]["resourceVersion"] == rv, "the status was written again"
    assert rejections(metered, env) == refused, "the refused Deployment was sent again"


def test_an_invalid_first_release_says_so_at_once_and_stays_quiet(env, metered):
    body = rollout()
    body["spec"]["template"] = NEVER
    env.create_rollout(body)
    st = env.wait_phase("Degraded", reason="DeploymentRejected", timeout=30)
    msg = 'Deployment.apps "app-blue" is invalid: spec.template.spec.restartPolicy: Unsupported value: "Never"'
    assert msg in st["message"] and "(422)" in st["message"], st["message"]
    assert st["rejected"]["code"] == 422 and msg in st["rejected"]["message"]
    stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "DeploymentRejected")
    wait_for(lambda: any(msg in m for m in warnings(env, "DeploymentRejected")), timeout=10, what="Warning Event")
    assert env.replicas("blue") is None  # nothing was created
    assert_quiet(env, metered)
    assert rejections(metered, env) == 1
    env.patch_spec({"template": {"spec": {"restartPolicy": "Always"}}})  # the fixed template is acted on at once
    st = env.wait_phase("Healthy", activeColor="blue", stableRevision="1", timeout=60)
    assert "rejected" not in st and env.selector_color("app") == "blue"


def test_an_invalid_release_aborts_and_traffic_stays_on_stable(env, metered, k8s):
    env.create_rollout(rollout())
    env.wait_phase("Healthy", activeColor="blue", stableRevision="1", timeout=60)
    with EndpointRecorder(k8s, env.ns, "app") as rec:
        wait_for(lambda: rec.ready_colors().get("blue") == 2, timeout=30, what="blue endpoints")
        template = pod_template("v2")
        template["spec"]["containers"][0]["name"] = "App_1"
        env.patch_spec({"template": template})
        st = env.wait_phase("Aborted", reason="DeploymentRejected", timeout=30)
        assert 'Deployment.apps "app-green" is invalid' in st["message"] and '"App_1"' in st["message"], st["message"]
        assert "revision 1 serves all traffic on blue" in st["message"]
        assert st["activeColor"] == "blue" and env.selector_color("app") == "blue"
        assert env.replicas("green") is None
        wait_for(lambda: warnings(env, "DeploymentRejected") and warnings(env, "Aborted"), timeout=10, what="Warning Events")
        env.wait(lambda s: "scaleDown" not in s, timeout=30, what="the abort's scale-down settled")
        assert_quiet(env, metered)
        assert rejections(metered, env) == 1
        assert rec.ready_colors() == {"blue": 2}
        rec.assert_safe()
    env.set_image("v3")  # a new template is a new release
    env.wait_phase("Healthy", activeColor="green", stableRevision="3", timeout=60)


def test_a_quota_that_refuses_the_deployment_is_retried_once_lifted(env, metered):
    quota = {"metadata": {"name": "no-deployments"}, "spec": {"hard": {"count/deployments.apps": "0"}}}
    env.core.create_namespaced_resource_quota(env.ns, quota)
    wait_for(
        lambda: env.core.read_namespaced_resource_quota("no-deployments", env.ns).status.hard or {},
        timeout=15,
        what="the quota's status",
    )
    env.create_rollout(rollout())
    st = env.wait_phase("Degraded", reason="DeploymentRejected", timeout=30)
    assert 'deployments.apps "app-blue" is forbidden: exceeded quota: no-deployments' in st["message"], st["message"]
    assert "(403)" in st["message"] and "tried again with backoff" in st["message"]
    assert_quiet(env, metered, wakeups=3)  # the first try again is 30 s after the refusal
    env.core.delete_namespaced_resource_quota("no-deployments", env.ns)
    st = env.wait_phase("Healthy", activeColor="blue", timeout=90)
    assert "rejected" not in st
    assert rejections(metered, env) == 1  # refused once, accepted on the next try


def test_a_quota_that_lets_no_pod_start_is_named(env, metered):
    quota = {"metadata": {"name": "pods"}, "spec": {"hard": {"pods": "2"}}}
    env.core.create_namespaced_resource_quota(env.ns, quota)
    wait_for(
        lambda: env.core.read_namespaced_resource_quota("pods", env.ns).status.hard or {}, timeout=15, what="the quota's status"
    )
    body = rollout(replicas=3)
    env.create_rollout(body)
    # first release: 2 of 3 pods start, the third is refused by the quota
    st = env.wait_phase("Degraded", reason="DeploymentRejected", timeout=60)
    assert "blue cannot create pods" in st["message"] and "exceeded quota: pods" in st["message"], st["message"]
    wait_for(lambda: warnings(env, "DeploymentRejected"), timeout=10, what="Warning Event")
    env.patch_spec({"replicas": 2})
    env.wait_phase("Healthy", activeColor="blue", stableRevision="1", timeout=60)
    # a release: the stable colour uses the whole quota, the new colour gets no pod
    env.set_image("v2")
    st = env.wait_phase("Aborted", reason="DeploymentRejected", timeout=60)
    assert "green cannot create pods" in st["message"] and "exceeded quota: pods" in st["message"], st["message"]
    assert env.selector_color("app") == "blue"
