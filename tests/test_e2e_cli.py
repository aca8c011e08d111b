"""kubectl teal driving the real operator: promote, abort/retry, undo (a fast rollback),
and `status` as a CI gate that exits 0 on a healthy release and 1 on an aborted one."""

from __future__ import annotations

import pytest

from cli_helpers import teal
from operator_helpers import Env, app_env, live_rollout

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


@pytest.fixture
def env(k8s, namespace, teal_operator) -> Env:
    return live_rollout(app_env(k8s, namespace))


def test_promote_then_status_succeeds(env):
    env.set_image("v2")
    env.wait_phase("Paused", reason="AwaitingPromotion")
    waiting = teal("status", "app", "-n", env.ns, "--timeout", "2s")
    assert waiting.code == 2, waiting  # still waiting for a human
    ok = teal("promote", "app", "-n", env.ns)
    assert ok.code == 0, ok
    done = teal("status", "app", "-n", env.ns, "--timeout", "60s")
    assert done.code == 0, done
    assert env.selector_color("app") == "green"
    shown = teal("get", "app", "-n", env.ns)
    assert shown.code == 0 and "green" in shown.out


def test_abort_status_fails_and_retry_recovers(env):
    env.set_image("v2")
    env.wait_phase("Paused", reason="AwaitingPromotion")
    assert teal("abort", "app", "-n", env.ns).code == 0
    failed = teal("status", "app", "-n", env.ns, "--timeout", "60s")
    assert failed.code == 1, failed
    assert env.selector_color("app") == "blue"
    assert teal("retry", "app", "-n", env.ns).code == 0
    env.wait_phase("Paused", reason="AwaitingPromotion", currentRevision="2")


def test_undo_rolls_back_to_the_warm_colour(env):
    env.set_image("v2")
    env.wait_phase("Paused", reason="AwaitingPromotion")
    assert teal("promote", "app", "-n", env.ns).code == 0
    env.wait_phase("Healthy", activeColor="green", stableRevision="2")
    undo = teal("undo", "app", "-n", env.ns, "--yes")
    assert undo.code == 0, undo
    st = env.wait_phase("Healthy", activeColor="blue", timeout=30)
    assert st["stats"]["rollbacks"] == 1  # the warm colour took the traffic back at once
    assert "FastRollback" in env.events()


def test_restart_replaces_the_stable_pods_without_a_release(env):
    before = env.wait_phase("Healthy", activeColor="blue")
    dep = env.apps.read_namespaced_deployment("app-blue", env.ns)
    old_pods = {p.metadata.name for p in env.core.list_namespaced_pod(env.ns, label_selector="teal.dev/color=blue").items}
    r = teal("restart", "app", "-n", env.ns)
    assert r.code == 0, r
    from teal_devenv.wait import wait_for

    def stamped():
        tmpl = env.apps.read_namespaced_deployment("app-blue", env.ns).spec.template
        return (tmpl.metadata.annotations or {}).get("teal.dev/restart-at")

    assert wait_for(stamped, timeout=60, what="the restart stamped on app-blue") in r.out
    wait_for(
        lambda: (
            not old_pods
            & {p.metadata.name for p in env.core.list_namespaced_pod(env.ns, label_selector="teal.dev/color=blue").items}
        ),
        timeout=90,
        what="new pods for blue",
    )
    after = env.wait_phase("Healthy", activeColor="blue", timeout=60)
    assert after["currentRevision"] == before["currentRevision"] == after["stableRevision"]  # no release
    assert (
        env.apps.read_namespaced_deployment("app-blue", env.ns).metadata.annotations["teal.dev/template-hash"]
        == (dep.metadata.annotations["teal.dev/template-hash"])
    )
    assert "Restarted" in env.events()
