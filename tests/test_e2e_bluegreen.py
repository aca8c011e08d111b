"""The blue/green lifecycle with the real operator on the local control plane.

Every test records the active Service's ready endpoints (from its EndpointSlices) and
checks that once the first release is ready they never drop to zero and never mix colours.
"""

from __future__ import annotations

import pytest

from operator_helpers import EndpointRecorder, Env, pod_template, rollout
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def first_release(env: Env, **bg) -> dict:
    env.create_rollout(rollout(**bg))
    return env.wait_phase("Healthy", activeColor="blue", stableRevision="1")


def test_first_then_second_release_with_auto_promotion(env, k8s):
    with EndpointRecorder(k8s, env.ns, "app") as rec:
        st = first_release(env)
        assert env.selector_color("app") == "blue"
        assert st["conditions"][0] == {**st["conditions"][0], "type": "Ready", "status": "True"}
        wait_for(lambda: rec.ready_colors().get("blue") == 2, timeout=30, what="blue endpoints")
        env.set_image("v2")
        st = env.wait_phase("Healthy", activeColor="green", stableRevision="2")
        assert env.selector_color("app") == "green"
        assert env.selector_color("app-preview") == "green"
        wait_for(lambda: rec.ready_colors().get("green") == 2, timeout=30, what="green endpoints")
        # the old colour stays warm for scaleDownDelaySeconds, then scales to zero
        wait_for(lambda: env.replicas("blue") == 0, timeout=30, what="blue scaled down")
        rec.assert_safe()
    assert st["stats"]["promoted"] == 2
    assert {"Switched", "Promoted", "ScaledDown"} <= set(env.events())
    # each revision's template is kept for `kubectl teal undo`
    crs = env.apps.list_namespaced_controller_revision(env.ns, label_selector="teal.dev/rollout=app").items
    by_rev = {c.revision: c.data["template"]["spec"]["containers"][0]["image"] for c in crs}
    assert by_rev == {1: "example.com/app:v1", 2: "example.com/app:v2"}


def test_revision_history_is_pruned(env):
    body = rollout()
    body["spec"]["revisionHistoryLimit"] = 2
    env.create_rollout(body)
    env.wait_phase("Healthy", stableRevision="1")
    for i in (2, 3, 4):
        env.set_image(f"v{i}")
        env.wait_phase("Healthy", stableRevision=str(i))
    crs = env.apps.list_namespaced_controller_revision(env.ns, label_selector="teal.dev/rollout=app").items
    assert sorted(c.revision for c in crs) == [3, 4]


def test_manual_promotion(env, k8s):
    first_release(env, autoPromote=False)
    with EndpointRecorder(k8s, env.ns, "app") as rec:
        env.set_image("v2")
        st = env.wait_phase("Paused", reason="AwaitingPromotion", previewColor="green")
        assert env.selector_color("app") == "blue"
        wait_for(lambda: env.selector_color("app-preview") == "green", timeout=10, what="preview on green")
        assert st["conditions"][1]["type"] == "Reconciling" and st["conditions"][1]["status"] == "True"
        env.promote()
        env.wait_phase("Healthy", activeColor="green", stableRevision="2")
        assert env.selector_color("app") == "green"
        rec.assert_safe()


def test_abort_and_retry(env, k8s):
    first_release(env, autoPromote=False)
    with EndpointRecorder(k8s, env.ns, "app") as rec:
        env.set_image("v2")
        env.wait_phase("Paused", reason="AwaitingPromotion")
        env.abort()
        st = env.wait_phase("Aborted", reason="AbortedByUser")
        assert env.selector_color("app") == "blue"
        assert "revision 1 serves all traffic on blue" in st["message"]
        stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
        assert stalled["status"] == "True" and stalled["reason"] == "AbortedByUser"
        wait_for(lambda: env.replicas("green") == 0, timeout=30, what="green scaled down after abort")
        env.retry()
        env.wait_phase("Paused", reason="AwaitingPromotion", currentRevision="2")
        assert env.replicas("green") == 2
        env.promote()
        env.wait_phase("Healthy", activeColor="green", stableRevision="2")
        rec.assert_safe()
    assert {"Aborted", "Retry"} <= set(env.events())


def test_progress_deadline_aborts(env, k8s):
    first_release(env)
    env.patch_spec({"strategy": {"blueGreen": {"progressDeadlineSeconds": 5}}})
    with EndpointRecorder(k8s, env.ns, "app") as rec:
        # pods that can never be scheduled never become available
        env.set_image("v2", nodeSelector={"teal.dev/no-such-node": "true"})
        st = env.wait_phase("Aborted", timeout=60, reason="ProgressDeadlineExceeded")
        assert "green not available" in st["message"]
        assert env.selector_color("app") == "blue"
        rec.assert_safe()
    # a new template after an abort starts a new release (no deadlock)
    # (a merge patch: nodeSelector null removes the unschedulable constraint)
    env.patch_spec(
        {"template": pod_template("v3", nodeSelector=None), "strategy": {"blueGreen": {"progressDeadlineSeconds": 120}}}
    )
    env.wait_phase("Healthy", activeColor="green", currentRevision="3", timeout=90)


def test_fast_rollback_to_warm_colour(env, k8s):
    first_release(env, scaleDownDelaySeconds=300)
    env.set_image("v2")
    env.wait_phase("Healthy", activeColor="green", stableRevision="2")
    with EndpointRecorder(k8s, env.ns, "app") as rec:
        env.set_image("v1")
        st = env.wait_phase("Healthy", activeColor="blue", timeout=20)
        assert st["stats"]["rollbacks"] == 1
        rec.assert_safe()
    assert "FastRollback" in env.events()


def test_superseding_release(env, k8s):
    first_release(env, autoPromote=False)
    env.set_image("v2")
    env.wait(lambda s: s.get("currentRevision") == "2", what="revision 2 started")
    env.set_image("v3")
    st = env.wait_phase("Paused", reason="AwaitingPromotion", currentRevision="3")
    assert st["release"]["color"] == "green"
    apps = env.apps.read_namespaced_deployment("app-green", env.ns)
    assert apps.spec.template.spec.containers[0].image == "example.com/app:v3"
    env.promote()
    env.wait_phase("Healthy", activeColor="green", stableRevision="3")
    assert "Superseded" in env.events()


def test_operator_restarted_mid_release(env, k8s, teal_operator):
    first_release(env, autoPromote=False)
    with EndpointRecorder(k8s, env.ns, "app") as rec:
        env.set_image("v2")
        env.wait(lambda s: s.get("currentRevision") == "2", what="release started")
        teal_operator.kill()  # SIGKILL at an arbitrary point
        env.promote()  # the request waits in status while nobody runs
        teal_operator.start()
        env.wait_phase("Healthy", activeColor="green", stableRevision="2", timeout=90)
        rec.assert_safe()
    deps = env.apps.list_namespaced_deployment(env.ns, label_selector="teal.dev/rollout=app").items
    assert sorted(d.metadata.name for d in deps) == ["app-blue", "app-green"]


def test_missing_service_is_reported_and_nothing_touched(k8s, namespace, teal_operator):
    env = Env(k8s, namespace)
    env.create_service("app")
    body = rollout(activeServices=["app", "app-missing"])
    env.create_rollout(body)
    st = env.wait_phase("Degraded", reason="ServiceNotFound")
    assert "app-missing" in st["message"] and "app-preview" in st["message"]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "app-missing" in ready["message"]
    assert env.apps.list_namespaced_deployment(namespace).items == []
    assert env.selector_color("app") is None
    # once the Services exist, the release goes ahead
    env.create_service("app-missing")
    env.create_service("app-preview")
    env.wait_phase("Healthy", activeColor="blue")


def test_deleting_rollout_keeps_user_services(env, k8s):
    first_release(env)
    env.custom.delete_namespaced_custom_object("teal.dev", "v1alpha1", env.ns, "rollouts", "app")
    wait_for(lambda: not env.apps.list_namespaced_deployment(env.ns).items, timeout=60, what="Deployments garbage-collected")
    assert env.selector_color("app") == "blue"  # the user's Service stays, pointing at the last active colour


def test_workload_ref_releases_the_deployments_template(k8s, namespace, teal_operator):
    env = Env(k8s, namespace)
    env.create_service("app")
    body = rollout()
    del body["spec"]["template"]
    body["spec"]["workloadRef"] = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
    body["spec"]["strategy"]["blueGreen"].pop("previewService")
    env.create_rollout(body)
    st = env.wait_phase("Degraded", reason="TemplateNotFound")
    assert "Deployment web not found" in st["message"]
    # the Deployment GitOps owns; scaled to zero so its pods don't run twice
    env.apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "demo"}}, "template": pod_template("v1")},
        },
    )
    env.wait_phase("Healthy", activeColor="blue", stableRevision="1")
    before = env.apps.read_namespaced_deployment("web", namespace).metadata.resource_version
    env.apps.patch_namespaced_deployment("web", namespace, {"spec": {"template": pod_template("v2")}})
    env.wait_phase("Healthy", activeColor="green", stableRevision="2")
    green = env.apps.read_namespaced_deployment("app-green", namespace)
    assert green.spec.template.spec.containers[0].image == "example.com/app:v2"
    web = env.apps.read_namespaced_deployment("web", namespace)
    assert web.spec.replicas == 0 and web.metadata.resource_version != before  # only the user's own edit
    assert not (web.metadata.owner_references or [])  # Teal never adopts or writes it


def test_selector_edited_by_hand_is_repaired_at_once(env, k8s):
    first_release(env)
    # a person (or a GitOps sync replacing the object) drops Teal's key from the selector
    svc = env.core.read_namespaced_service("app", env.ns)
    svc.spec.selector = {"app": "demo"}
    env.core.replace_namespaced_service("app", env.ns, svc)
    wait_for(
        lambda: env.selector_color("app") == "blue",
        timeout=5,
        interval=0.05,
        what="selector repaired (well before the 30 s resync)",
    )
