"""core.cannot_decide: a spec that cannot be processed (or a decision that failed) still honours aborts."""

from __future__ import annotations

import datetime as dt

from sim import World, rollout_spec
from teal import core

HUGE = {"steps": [{"pause": {"duration": "100000000000000000000h"}}]}


def paused_release() -> World:
    w = World(spec=rollout_spec(autoPromote=False))
    w.run(3)
    w.set_image("v2")
    w.until(lambda w: w.status.get("reason") == "AwaitingPromotion")
    assert w.services == {"app": "blue", "app-preview": "green"}
    return w


def fallback_tick(w: World, seconds: float = 1.0, message: str = "invalid spec: x", reason: str = "InvalidSpec"):
    w.now += dt.timedelta(seconds=seconds)
    w._settle()
    plan = core.cannot_decide(w.status, core.Fallback.from_spec(w.spec), w.observe(), message, reason, w.now, 2)
    w.status = plan.status
    for a in plan.actions:
        w.apply(a)
    w.events.extend(plan.events)
    return plan


def test_without_an_abort_nothing_is_touched():
    w = paused_release()
    plan = fallback_tick(w)
    assert plan.actions == []
    assert (w.status["phase"], w.status["reason"]) == ("Degraded", "InvalidSpec")
    stalled = next(c for c in w.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["message"] == "invalid spec: x"
    assert [e.type for e in plan.events] == ["Warning"]
    assert plan.requeue_after is not None  # the progress deadline is still watched


def test_a_user_abort_puts_every_service_on_stable_and_scales_the_new_colour_down():
    w = paused_release()
    w.spec["strategy"]["blueGreen"].update(HUGE)
    fallback_tick(w)
    w.status["abort"] = {"revision": w.status["release"]["revision"], "reason": "AbortedByUser", "message": "m"}
    plan = fallback_tick(w, reason="ReconcileError", message="cannot decide: OverflowError: boom")
    assert w.services == {"app": "blue", "app-preview": "blue"}
    assert w.status["release"]["abortedAt"] and w.status["previewColor"] is None
    assert "OverflowError: boom; revision 2 aborted, revision 1 on blue" in w.status["message"]
    assert "Aborted" in [e.reason for e in plan.events]
    fallback_tick(w, seconds=60)
    assert w.deployments["green"].replicas == 0
    # fixed spec: decide() takes over and keeps the release aborted
    w.spec["strategy"]["blueGreen"].pop("steps")
    w.run(2)
    assert w.status["phase"] == "Aborted" and w.services["app"] == "blue"


def test_the_progress_deadline_aborts_too():
    w = paused_release()
    fallback_tick(w, seconds=121)  # progressDeadlineSeconds 120 in sim.rollout_spec
    assert w.status["abort"]["reason"] == "ProgressDeadlineExceeded"
    assert w.services == {"app": "blue", "app-preview": "blue"}


def test_stable_without_ready_pods_is_not_selected():
    w = paused_release()
    w.deployments["blue"].ready = 0
    w.deployments["blue"].broken = True
    w.status["abort"] = {"revision": "2", "reason": "AbortedByUser", "message": "m"}
    plan = fallback_tick(w)
    assert not [a for a in plan.actions if isinstance(a, core.SelectColor)]
    assert "no ready pods" in w.status["message"]


def test_fallback_reads_only_what_is_readable():
    assert core.Fallback.from_spec(None) == core.Fallback()
    assert core.Fallback.from_spec({"strategy": {"blueGreen": {"activeServices": "x"}}}).active_services == ()
    f = core.Fallback.from_spec(
        {"strategy": {"blueGreen": {"activeServices": ["a", 3, ""], "previewService": "p", "progressDeadlineSeconds": True}}}
    )
    assert (f.active_services, f.preview_service, f.progress_deadline_seconds) == (("a",), "p", 600)


def test_an_abort_moves_the_weights_back_when_the_route_still_parses():
    w = World(spec=rollout_spec(trafficRouting={"gatewayAPI": {"httpRoute": "app"}}, steps=[{"setWeight": 30}, {"pause": {}}]))
    w.run(3)
    w.set_image("v2")
    w.until(lambda w: w.status.get("reason") == "AwaitingPromotion" or w.weights == {"blue": 70, "green": 30})
    assert w.weights == {"blue": 70, "green": 30}
    w.spec["strategy"]["blueGreen"].update(HUGE)
    w.status["abort"] = {"revision": w.status["release"]["revision"], "reason": "AbortedByUser", "message": "m"}
    plan = fallback_tick(w, reason="ReconcileError", message="cannot decide: OverflowError: boom")
    assert core.SetWeights((("blue", 100), ("green", 0))) in plan.actions
    assert w.weights == {"blue": 100, "green": 0} and w.services["app"] == "blue"
    assert fallback_tick(w).actions == []  # converged: nothing asked again


def test_an_unreadable_route_leaves_the_weights_but_still_moves_the_services():
    fallback = core.Fallback.from_spec(
        {"strategy": {"blueGreen": {"activeServices": ["app"], "trafficRouting": {"gatewayAPI": {}}}}}
    )
    assert fallback.traffic_routing is None and fallback.active_services == ("app",)
