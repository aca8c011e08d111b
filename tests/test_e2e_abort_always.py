"""Abort always works (issue 12, failure 3), with the real operator on the local control plane.

Durations past what dates can hold used to be accepted by the apiserver and crash every
reconcile (OverflowError), freezing the status, and an abort of such a Rollout was never
acted on. Now the CRD refuses durations over 720h; and for a spec the operator still cannot
process (here: the CRD as it was before the bound, as in a cluster whose CRD is older than
its operator) the Rollout is Degraded naming the error and an abort still moves every
Service back to the stable colour.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import kubernetes.client as k
import pytest
from kubernetes.client.rest import ApiException

from operator_helpers import EndpointRecorder, Env, rollout
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

HUGE = "100000000000000000000h"
CRD = "rollouts.teal.dev"


def _without_bounds(node):
    """The schema minus the 720h rules (what the CRD was before issue 12)."""
    if isinstance(node, dict):
        return {
            key: (
                [r for r in value if "720h" not in r.get("rule", "")]
                if key == "x-kubernetes-validations"
                else _without_bounds(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_without_bounds(v) for v in node]
    return node


@pytest.fixture
def unbounded_crd(k8s) -> Iterator[None]:
    ext = k.ApiextensionsV1Api(k8s)
    original = k8s.sanitize_for_serialization(ext.read_custom_resource_definition(CRD))

    def replace(spec) -> None:
        body = k8s.sanitize_for_serialization(ext.read_custom_resource_definition(CRD))
        body["spec"] = spec
        ext.replace_custom_resource_definition(CRD, body)

    replace(_without_bounds(copy.deepcopy(original["spec"])))
    try:
        yield
    finally:
        replace(original["spec"])


def create_error(env: Env, body) -> str:
    with pytest.raises(ApiException) as err:
        env.create_rollout(body)
    assert err.value.status == 422, err.value
    return err.value.body


@pytest.mark.parametrize("duration", ["721h", HUGE])
def test_the_apiserver_refuses_a_pause_past_30_days(env, duration):
    body = rollout(steps=[{"pause": {"duration": duration}}])
    answer = create_error(env, body)
    assert "spec.strategy.blueGreen.steps[0].pause.duration" in answer, answer


def test_the_apiserver_refuses_an_initial_delay_past_30_days(env):
    body = rollout()
    body["spec"]["analysis"] = {
        "prePromotion": ["m"],
        "metrics": [{"name": "m", "query": "up", "thresholdRange": {"max": 1}, "initialDelay": "9999999999h"}],
    }
    assert "initialDelay" in create_error(env, body)


def test_an_abort_is_acted_on_when_the_spec_cannot_be_processed(env, k8s, unbounded_crd):
    env.create_rollout(rollout(autoPromote=False))
    env.wait_phase("Healthy", activeColor="blue", stableRevision="1", timeout=60)
    with EndpointRecorder(k8s, env.ns, "app") as rec:
        env.set_image("v2")
        env.wait_phase("Paused", reason="AwaitingPromotion", previewColor="green", timeout=60)
        wait_for(lambda: env.selector_color("app-preview") == "green", timeout=15, what="preview on green")
        # accepted by the old schema; the operator cannot process it
        env.patch_spec({"strategy": {"blueGreen": {"steps": [{"pause": {"duration": HUGE}}]}}})
        st = env.wait_phase("Degraded", reason="InvalidSpec", timeout=30)
        assert "longer than the limit of 720h" in st["message"], st["message"]
        env.abort()
        st = env.wait(
            lambda s: (s.get("release") or {}).get("abortedAt") and s.get("previewColor") is None,
            timeout=30,
            what="the abort acted on",
        )
        assert st["phase"] == "Degraded" and st["reason"] == "InvalidSpec", st
        assert "revision 2 aborted, revision 1 on blue" in st["message"], st["message"]
        wait_for(lambda: env.selector_color("app-preview") == "blue", timeout=15, what="preview back on blue")
        assert env.selector_color("app") == "blue"
        wait_for(lambda: env.replicas("green") == 0, timeout=30, what="the aborted colour scaled down")
        wait_for(lambda: "Aborted" in env.events(), timeout=10, what="the Aborted Event")
        rec.assert_safe()
    # the spec fixed: the release stays aborted, traffic on blue
    env.patch_spec({"strategy": {"blueGreen": {"steps": None}}})
    st = env.wait_phase("Aborted", activeColor="blue", timeout=30)
    assert env.selector_color("app") == "blue"
