"""A colour the apiserver refuses (its Deployment, or its pods), decided by the pure core.

The simulated apiserver refuses a template's Deployment (`World.refused`: 422 invalid,
403 forbidden by a quota) or its pods (`World.forbidden_pods`: the ReplicaFailure
condition a ResourceQuota leaves). The core must say so at once (reason
DeploymentRejected, the apiserver's message, a Warning Event), keep traffic on the
stable colour, and not send the same Deployment again in a loop.
"""

from __future__ import annotations

import datetime as dt

from sim import World, rollout_spec, template
from teal import core
from teal.api import parse_spec, template_hash

INVALID = (
    422,
    'Deployment.apps "app-blue" is invalid: spec.template.spec.restartPolicy: Unsupported value: '
    '"Never": supported values: "Always"',
)
QUOTA = (
    403,
    'deployments.apps "app-blue" is forbidden: exceeded quota: no-deployments, requested: '
    "count/deployments.apps=1, used: count/deployments.apps=0, limited: count/deployments.apps=0",
)
PODS = 'pods "app-green-5d9c7-x2x7q" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=3, limited: pods=3'


def h(image: str) -> str:
    return template_hash(template(image))


def deploys(plan: core.Plan) -> list[core.DeployColor]:
    return [a for a in plan.actions if isinstance(a, core.DeployColor)]


def healthy_world(**bg) -> World:
    w = World(rollout_spec(**bg))
    w.until(lambda w: w.status.get("phase") == "Healthy")
    w.events.clear()
    return w


def test_an_invalid_first_release_is_degraded_at_once_and_not_sent_again():
    w = World(rollout_spec())
    w.refused[h("v1")] = INVALID
    first = w.tick()
    assert len(deploys(first)) == 1  # sent once: only the apiserver can tell
    w.tick()
    st = w.status
    assert (st["phase"], st["reason"]) == ("Degraded", "DeploymentRejected")
    assert INVALID[1] in st["message"] and "(422)" in st["message"]
    assert st["rejected"]["hash"] == h("v1") and st["rejected"]["attempts"] == 1
    warnings = [e for e in w.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["DeploymentRejected"] and INVALID[1] in warnings[0].message
    stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "DeploymentRejected"
    # quiet: time passes (well past the progress deadline), nothing is sent, nothing changes
    before, events = dict(st), len(w.events)
    for _ in range(20):
        plan = w.tick(60)
        assert deploys(plan) == [] and plan.requeue_after is None
    assert w.status == before and len(w.events) == events
    # a fixed template is acted on at once
    w.set_image("v2")
    w.until(lambda w: w.status.get("phase") == "Healthy")
    assert "rejected" not in w.status and w.services["app"] == "blue"


def test_a_forbidden_first_release_is_tried_again_with_a_bounded_backoff():
    """Ticks come when the operator's loop would wake: at once after actions, else when
    the core asks (or at the 30 s resync)."""
    w = World(rollout_spec())
    w.refused[h("v1")] = QUOTA
    tries, step = [], 1.0
    while w.now < dt.datetime(2026, 1, 1, 0, 25, tzinfo=dt.UTC):
        plan = w.tick(step)
        if deploys(plan):
            tries.append(w.now)
        step = 0.05 if plan.actions else min(plan.requeue_after or 30.0, 30.0)
        if len(tries) > 1:
            assert w.status["reason"] == "DeploymentRejected" and "exceeded quota" in w.status["message"]
    gaps = [round((b - a).total_seconds()) for a, b in zip(tries, tries[1:], strict=False)]
    assert gaps[:4] == [30, 60, 120, 240] and set(gaps[4:]) == {300}, gaps  # doubling, at most every 5 min
    assert [e.reason for e in w.events if e.type == "Warning"] == ["DeploymentRejected"]  # said once
    assert w.status["rejected"]["attempts"] == len(tries)
    # the quota is lifted: the next try goes through
    del w.refused[h("v1")]
    w.until(lambda w: w.status.get("phase") == "Healthy", n=20, seconds=30)
    assert "rejected" not in w.status


def test_a_refused_release_aborts_and_traffic_stays_on_stable():
    w = healthy_world()
    w.refused[h("v2")] = (
        422,
        'Deployment.apps "app-green" is invalid: spec.template.spec.containers[0].name: Invalid value: "App_1"',
    )
    w.set_image("v2")
    w.tick()
    plan = w.tick()
    st = w.status
    assert (st["phase"], st["reason"]) == ("Aborted", "DeploymentRejected")
    assert '"App_1"' in st["message"] and "serves all traffic on blue" in st["message"]
    assert w.services["app"] == "blue" and st["activeColor"] == "blue"
    assert [(e.type, e.reason) for e in w.events if e.type == "Warning"] == [
        ("Warning", "DeploymentRejected"),
        ("Warning", "Aborted"),
    ]
    assert deploys(plan) == []
    before = dict(w.status)
    for _ in range(10):
        assert deploys(w.tick(60)) == []
    assert w.services["app"] == "blue" and w.status["phase"] == "Aborted"
    assert w.status["stats"]["aborted"] == before["stats"]["aborted"]
    # retry sends it again (once) and aborts again; a fixed template releases
    w.status.pop("abort")
    assert len(deploys(w.tick())) == 1
    w.tick()
    assert w.status["reason"] == "DeploymentRejected" and w.status["stats"]["retries"] == 1
    w.set_image("v3")
    w.until(lambda w: w.status.get("phase") == "Healthy" and w.status["stableRevision"] == "3")
    assert w.services["app"] == "green"


def test_pods_refused_by_a_quota_are_named_for_the_first_release():
    w = World(rollout_spec())
    w.forbidden_pods[h("v1")] = PODS.replace("green", "blue")
    w.run(3)
    assert (w.status["phase"], w.status["reason"]) == ("Degraded", "DeploymentRejected")
    assert "blue cannot create pods" in w.status["message"] and "exceeded quota: pods" in w.status["message"]
    assert [e.reason for e in w.events if e.type == "Warning"] == ["DeploymentRejected"]
    del w.forbidden_pods[h("v1")]  # the quota is raised: the ReplicaSet creates the pods
    w.until(lambda w: w.status.get("phase") == "Healthy")


def test_pods_refused_by_a_quota_abort_a_release():
    w = healthy_world()
    w.forbidden_pods[h("v2")] = PODS
    w.set_image("v2")
    w.run(3)
    assert (w.status["phase"], w.status["reason"]) == ("Aborted", "DeploymentRejected")
    assert PODS in w.status["message"] and w.services["app"] == "blue"


def test_other_pod_failures_are_named_while_waiting():
    w = World(rollout_spec())
    w.forbidden_pods[h("v1")] = "Timeout: request did not complete within requested timeout"
    w.run(3)
    assert w.status["phase"] == "Progressing" and "Timeout: request did not complete" in w.status["message"]


def test_a_refusal_is_in_status_so_a_restart_decides_the_same():
    w = World(rollout_spec())
    w.refused[h("v1")] = INVALID
    w.run(2)
    spec, obs = parse_spec(w.spec), w.observe()
    later = w.now + dt.timedelta(minutes=10)
    a = core.decide(spec, w.status, obs, later, generation=1)
    assert deploys(a) == [] and a.status["phase"] == "Degraded" and a.events == []


def test_an_unavailable_router_has_its_own_reason():
    w = World(rollout_spec(trafficRouting={"istio": {"virtualService": "app"}}, steps=[{"setWeight": 50}]))
    obs = w.observe()
    msg = "the istio traffic router is not enabled in this operator"
    plan = core.decide(
        parse_spec(w.spec), {}, core.Observed(**{**obs.__dict__, "router_error": msg, "router_unavailable": True}), w.now
    )
    assert (plan.status["phase"], plan.status["reason"], plan.status["message"]) == ("Degraded", "RouterUnavailable", msg)
    assert plan.actions == []
    other = core.decide(parse_spec(w.spec), {}, core.Observed(**{**obs.__dict__, "router_error": "RouteNotFound: x"}), w.now)
    assert other.status["reason"] == "TrafficRouterError"


def test_a_stable_deployment_that_cannot_be_made_again_is_not_called_healthy():
    w = healthy_world()
    del w.deployments["blue"]  # deleted by hand, and a quota now refuses it
    w.refused[h("v1")] = QUOTA
    w.run(2)
    assert (w.status["phase"], w.status["reason"]) == ("Degraded", "DeploymentRejected")
    assert "stable revision 1" in w.status["message"] and "exceeded quota" in w.status["message"]
    del w.refused[h("v1")]  # lifted: the next try (after the backoff) makes it again
    w.until(lambda w: w.status.get("phase") == "Healthy" and w.ready("blue") == 3, n=10, seconds=30)
