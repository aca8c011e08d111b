"""The stable colour is always guarded (issue 12, failure 2), with the real operator.

A release paused awaiting promotion, then `kubectl delete deploy app-blue` (the stable
colour): it used to stay deleted while the status said Paused/AwaitingPromotion, and the
active Service had no endpoints. Now the stable colour is made again from the stable
revision's template (its ControllerRevision, not the spec, which asks for v2), a Warning
Event says so, the phase is Degraded/StableUnavailable while it has no ready pod, and the
paused release goes on afterwards. A stable colour scaled to zero is scaled back and
reported the same way for as long as it has no ready pod.
"""

from __future__ import annotations

import pytest

from operator_helpers import EndpointRecorder, Env, rollout
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def paused_release(env: Env) -> None:
    env.create_rollout(rollout(autoPromote=False))
    env.wait_phase("Healthy", activeColor="blue", stableRevision="1", timeout=60)
    env.set_image("v2")
    env.wait_phase("Paused", reason="AwaitingPromotion", previewColor="green", timeout=60)


def warnings(env: Env, reason: str) -> list[str]:
    evs = env.core.list_namespaced_event(env.ns, field_selector="involvedObject.name=app").items
    return [e.message for e in evs if e.type == "Warning" and e.reason == reason]


def blue_image(env: Env) -> str:
    return env.apps.read_namespaced_deployment("app-blue", env.ns).spec.template.spec.containers[0].image


def ready(env: Env, color: str) -> int:
    return env.apps.read_namespaced_deployment(f"app-{color}", env.ns).status.ready_replicas or 0


def test_a_deleted_stable_colour_is_made_again_from_the_stable_revision(env, k8s):
    paused_release(env)
    with EndpointRecorder(k8s, env.ns, "app") as rec:
        wait_for(lambda: rec.ready_colors().get("blue") == 2, timeout=30, what="blue endpoints")
        env.apps.delete_namespaced_deployment("app-blue", env.ns)
        wait_for(lambda: env.replicas("blue") == 2, timeout=30, what="app-blue made again")
        assert blue_image(env) == "example.com/app:v1"  # the stable revision, not the spec's v2
        wait_for(lambda: warnings(env, "StableRestored"), timeout=15, what="a StableRestored Warning Event")
        wait_for(lambda: warnings(env, "StableUnavailable"), timeout=15, what="a StableUnavailable Warning Event")
        assert "stable colour blue (revision 1) has no ready pods" in warnings(env, "StableUnavailable")[0]
        wait_for(lambda: rec.ready_colors().get("blue") == 2, timeout=30, what="blue endpoints back")
        env.wait_phase("Paused", reason="AwaitingPromotion", previewColor="green", timeout=30)
        assert env.selector_color("app") == "blue" and env.selector_color("app-preview") == "green"
        # never another colour on the active Service meanwhile
        assert all(set(c) <= {"blue"} for _, c in rec.timeline), rec.timeline
    env.promote()
    env.wait_phase("Healthy", activeColor="green", stableRevision="2", timeout=60)


def test_a_stable_colour_without_ready_pods_is_reported_while_it_lasts(env):
    """Scaled to zero while a quota lets no new pod start: scaled back at once, and Degraded
    (not Paused) for as long as it has no ready pod; the paused release shows again after."""
    paused_release(env)
    env.core.create_namespaced_resource_quota(env.ns, {"metadata": {"name": "pods"}, "spec": {"hard": {"pods": "2"}}})
    wait_for(
        lambda: env.core.read_namespaced_resource_quota("pods", env.ns).status.hard or {}, timeout=15, what="the quota's status"
    )
    env.apps.patch_namespaced_deployment_scale("app-blue", env.ns, {"spec": {"replicas": 0}})
    st = env.wait_phase("Degraded", reason="StableUnavailable", timeout=30)
    assert "the stable colour blue (revision 1) has no ready pods: 0/2 pods ready" in st["message"], st["message"]
    assert "meanwhile: revision 2 ready on green; waiting for promote" in st["message"], st["message"]
    stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "StableUnavailable")
    wait_for(lambda: warnings(env, "StableUnavailable"), timeout=15, what="a StableUnavailable Warning Event")
    wait_for(lambda: env.replicas("blue") == 2, timeout=15, what="blue scaled back to 2")
    assert env.selector_color("app") == "blue"  # never moved to the unpromoted colour
    env.core.delete_namespaced_resource_quota("pods", env.ns)
    wait_for(lambda: ready(env, "blue") == 2, timeout=60, what="blue ready again")
    st = env.wait_phase("Paused", reason="AwaitingPromotion", timeout=30)
    assert st["activeColor"] == "blue"
