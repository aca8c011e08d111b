"""Leaving Teal (issue 12, failure 5): deleting a Rollout takes both colours with it, and
`kubectl teal handover` keeps the stable colour as a Deployment the user owns, with the
real operator running and the active Service's endpoints watched throughout."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from cli_helpers import teal
from operator_helpers import EndpointRecorder, Env, app_env, live_rollout
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def gone(fn, *args) -> bool:
    try:
        fn(*args)
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


@pytest.fixture
def env(k8s, namespace, teal_operator) -> Env:
    return live_rollout(app_env(k8s, namespace))


def test_deleting_a_rollout_deletes_both_colours_and_the_service_loses_its_endpoints(env):
    with EndpointRecorder(env.api, env.ns, "app") as rec:
        wait_for(lambda: rec.ready_colors() == {"blue": 2}, timeout=30, what="blue serving")
        env.custom.delete_namespaced_custom_object("teal.dev", "v1alpha1", env.ns, "rollouts", "app")
        wait_for(
            lambda: gone(env.apps.read_namespaced_deployment, "app-blue", env.ns), timeout=60, what="app-blue garbage-collected"
        )
        wait_for(lambda: not rec.ready_colors(), timeout=60, what="the Service without endpoints")
    assert env.selector_color("app") == "blue"  # the Service stays, selecting pods that are gone


def test_handover_keeps_the_stable_colour_and_its_endpoints(env):
    with EndpointRecorder(env.api, env.ns, "app") as rec:
        env.set_image("v2")
        env.wait_phase("Paused", reason="AwaitingPromotion")
        refused = teal("handover", "app", "-n", env.ns)
        assert refused.code == 4 and "release in progress" in refused.err, refused
        assert teal("promote", "app", "-n", env.ns).code == 0
        env.wait_phase("Healthy", activeColor="green", stableRevision="2")
        wait_for(lambda: rec.ready_colors() == {"green": 2}, timeout=30, what="green serving")

        done = teal("handover", "app", "-n", env.ns)
        assert done.code == 0, done
        assert "Deployment app-green is yours" in done.out, done.out
        assert gone(env.get, "app")
        wait_for(
            lambda: gone(env.apps.read_namespaced_deployment, "app-blue", env.ns), timeout=60, what="the other colour deleted"
        )
        assert not env.apps.list_namespaced_controller_revision(env.ns, label_selector="teal.dev/rollout=app").items
        kept = env.apps.read_namespaced_deployment("app-green", env.ns)
        assert not kept.metadata.owner_references
        assert kept.metadata.annotations["teal.dev/handed-over-from"] == "rollout/app"
        assert "teal.dev/rollout" not in (kept.metadata.labels or {})
        assert kept.status.ready_replicas == 2
        # the garbage collector has handled the Rollout's deletion (it finished the orphaning);
        # the Deployment the Service selects is still there and serving
        assert env.selector_color("app") == "green"
        assert rec.ready_colors() == {"green": 2}
    rec.assert_safe()
    assert teal("handover", "app", "-n", env.ns).code == 3  # nothing left to hand over
