"""The blue/green lifecycle, decided by the pure core against an in-memory world."""

from __future__ import annotations

import datetime as dt

from sim import World, rollout_spec
from teal import core
from teal.api import parse_spec


def healthy_world(**bg) -> World:
    w = World(rollout_spec(**bg))
    w.until(lambda w: w.status.get("phase") == "Healthy")
    return w


def test_first_release_becomes_active():
    w = World(rollout_spec())
    w.tick()
    assert w.status["phase"] == "Progressing"
    assert w.services["app"] is None  # no traffic to a colour without ready pods
    w.until(lambda w: w.status.get("phase") == "Healthy")
    assert w.status["activeColor"] == "blue" == w.services["app"]
    assert w.status["stableRevision"] == "1"
    assert [c["type"] for c in w.status["conditions"]] == ["Ready", "Reconciling", "Stalled"]
    assert w.status["conditions"][0]["status"] == "True"


def test_second_release_auto_promotes_and_scales_old_colour_down():
    w = healthy_world()
    w.set_image("v2")
    w.tick()
    assert w.status["phase"] == "Progressing"
    assert w.status["previewColor"] == "green"
    assert w.services["app"] == "blue"
    w.until(lambda w: w.services["app"] == "green")
    assert w.status["phase"] == "Progressing"  # traffic is moving: not Healthy before it moved
    assert w.status["reason"] == "Switching"
    w.tick()
    assert w.status["phase"] == "Healthy"
    assert w.status["stableRevision"] == "2"
    assert w.deployments["blue"].replicas == 3  # still warm
    w.run(31)
    assert w.deployments["blue"].replicas == 0
    assert "Switched" in w.reasons() and "ScaledDown" in w.reasons()


def test_manual_promotion_waits_for_promote():
    w = healthy_world(autoPromote=False)
    w.set_image("v2")
    w.run(5)
    assert w.status["phase"] == "Paused"
    assert w.status["reason"] == "AwaitingPromotion"
    assert w.services["app"] == "blue"
    assert w.services["app-preview"] == "green"
    w.status["promote"] = {"revision": w.status["currentRevision"]}
    w.tick()
    assert w.services["app"] == "green"
    w.tick()
    assert w.status["phase"] == "Healthy"


def test_abort_and_retry():
    w = healthy_world(autoPromote=False)
    w.set_image("v2")
    w.run(5)
    w.status["abort"] = {"revision": "2", "reason": "AbortedByUser", "message": "by test"}
    w.tick()
    assert w.status["phase"] == "Aborted"
    assert w.services["app"] == "blue"
    assert w.status["conditions"][2]["status"] == "True"  # Stalled
    w.run(11)
    assert w.deployments["green"].replicas == 0
    # retry: withdraw the abort
    del w.status["abort"]
    w.tick()
    assert w.status["phase"] == "Progressing"
    w.until(lambda w: w.status["phase"] == "Paused")
    assert w.status["stats"]["retries"] == 1


def test_progress_deadline_aborts():
    w = healthy_world()
    w.broken_hashes.add(None)
    w.set_image("broken")
    from teal.api import template_hash

    w.broken_hashes.add(template_hash(w.spec["template"]))
    w.until(lambda w: w.status["phase"] == "Aborted", n=300)
    assert w.status["reason"] == "ProgressDeadlineExceeded"
    assert w.services["app"] == "blue"


def test_new_template_after_abort_starts_a_new_release():
    w = healthy_world(autoPromote=False)
    w.set_image("v2")
    w.run(3)
    w.status["abort"] = {"revision": "2", "reason": "AbortedByUser"}
    w.tick()
    w.set_image("v3")
    w.tick()
    assert w.status["phase"] == "Progressing"
    assert w.status["currentRevision"] == "3"
    assert "abort" not in w.status


def test_fast_rollback_to_warm_colour():
    w = healthy_world()
    w.set_image("v2")
    w.until(lambda w: w.status["stableRevision"] == "2")
    assert w.services["app"] == "green"
    w.set_image("v1")
    w.tick()
    assert w.services["app"] == "blue"  # at once, no preview wait
    w.tick()
    assert w.status["phase"] == "Healthy"
    assert "FastRollback" in w.reasons()


def test_superseding_release_reuses_preview_colour():
    w = healthy_world(autoPromote=False)
    w.set_image("v2")
    w.run(3)
    w.set_image("v3")
    w.tick()
    assert w.status["release"]["revision"] == "3"
    assert w.status["release"]["color"] == "green"
    w.until(lambda w: w.status["phase"] == "Paused")
    assert w.services["app"] == "blue"


def test_template_back_to_stable_cancels_release():
    w = healthy_world(autoPromote=False)
    w.set_image("v2")
    w.run(3)
    w.set_image("v1")
    w.tick()
    assert w.status["phase"] == "Healthy"
    assert "release" not in w.status
    w.run(12)
    assert w.deployments["green"].replicas == 0


def test_missing_service_is_reported_and_nothing_touched():
    w = World(rollout_spec())
    del w.services["app"]
    obs = w.observe()
    obs = core.Observed(
        **{**obs.__dict__, "services": {"app-preview": core.ServiceObs(True, None), "app": core.ServiceObs(False)}}
    )
    from teal.api import parse_spec

    plan = core.decide(parse_spec(w.spec), {}, obs, w.now)
    assert plan.actions == []
    assert plan.status["phase"] == "Degraded"
    assert "Service app not found" in plan.status["message"]


def test_preview_replicas_then_full_scale_before_switch():
    w = healthy_world(previewReplicas=1)
    w.set_image("v2")
    w.tick()
    assert w.deployments["green"].replicas == 1
    w.until(lambda w: w.services["app"] == "green")
    assert w.deployments["green"].replicas == 3
    assert w.ready("green") == 3


def weighted(**extra):
    return dict(
        trafficRouting={"gatewayAPI": {"httpRoute": "app"}},
        steps=[{"setWeight": 10}, {"pause": {"duration": "10s"}}, {"setWeight": 50}, {"pause": {}}, {"setWeight": 100}],
        **extra,
    )


def test_weighted_release_walks_steps():
    w = healthy_world(**weighted())
    assert w.weights == {"blue": 100, "green": 0}
    w.set_image("v2")
    seen = []
    for _ in range(60):
        w.tick()
        seen.append(w.weights.get("green"))
        if w.status["phase"] == "Paused" and w.status["reason"] == "PausedAtStep" and w.weights["green"] == 50:
            break
    assert 10 in seen and seen[-1] == 50
    assert w.services["app"] == "blue"
    w.status["promote"] = {"revision": "2", "step": w.status["currentStep"]}
    w.until(lambda w: w.status["phase"] == "Healthy")
    assert w.weights == {"blue": 0, "green": 100}
    assert w.services["app"] == "green"


def test_weighted_abort_returns_weights():
    w = healthy_world(**weighted())
    w.set_image("v2")
    w.until(lambda w: (w.weights or {}).get("green") == 10)
    w.status["abort"] = {"revision": "2", "reason": "AbortedByUser"}
    w.tick()
    assert w.weights == {"blue": 100, "green": 0}
    assert w.status["phase"] == "Aborted"


def test_analysis_failure_aborts_before_traffic():
    w = healthy_world()
    w.spec["analysis"] = {"prePromotion": ["error-rate"], "metrics": [{"name": "error-rate", "query": "x"}]}
    w.set_image("v2")
    w.until(lambda w: w.status.get("reason") == "Analysis")
    key = w.status["release"]["analysisKey"]
    assert key == "2:prePromotion"
    w.analysis = core.AnalysisRun(key=key, verdict="Failed", message="error-rate 0.2 > 0.01")
    w.tick()
    assert w.status["phase"] == "Aborted"
    assert "error-rate 0.2 > 0.01" in w.status["message"]
    assert w.services["app"] == "blue"


def test_post_promotion_failure_reverts():
    w = healthy_world()
    w.spec["analysis"] = {"postPromotion": ["error-rate"], "metrics": [{"name": "error-rate", "query": "x"}]}
    w.set_image("v2")
    w.until(lambda w: w.services["app"] == "green")
    key = w.status["release"]["analysisKey"]
    assert key == "2:postPromotion"
    w.analysis = core.AnalysisRun(key=key, verdict="Failed", message="bad")
    w.tick()
    assert w.services["app"] == "blue"
    assert w.status["phase"] == "Aborted"
    assert w.deployments["green"].replicas == 3  # scaled down only after the abort delay


def test_inconclusive_pauses_and_promote_overrides():
    w = healthy_world()
    w.spec["analysis"] = {"prePromotion": ["m"], "metrics": [{"name": "m", "query": "x"}]}
    w.set_image("v2")
    w.until(lambda w: w.status.get("reason") == "Analysis")
    key = w.status["release"]["analysisKey"]
    w.analysis = core.AnalysisRun(key=key, verdict="Inconclusive", message="no data")
    w.tick()
    assert w.status["phase"] == "Paused" and w.status["reason"] == "AnalysisInconclusive"
    assert w.services["app"] == "blue"
    w.status["promote"] = {"revision": "2"}
    w.tick()
    w.tick()
    assert w.services["app"] == "green"


def test_restart_from_status_alone_converges():
    """A fresh decide() from persisted status continues the release (no memory)."""
    w = healthy_world(autoPromote=False)
    w.set_image("v2")
    w.run(5)
    saved = dict(w.status)
    w2 = World(w.spec, status=saved, deployments=w.deployments, services=w.services, now=w.now)
    w2.ticks = w.ticks
    w2.tick()
    assert w2.status["phase"] == "Paused"
    assert w2.status["release"]["revision"] == "2"


def test_requeue_for_scale_down_timer():
    w = healthy_world(scaleDownDelaySeconds=30)
    w.set_image("v2")
    plan = w.until(lambda w: w.status["phase"] == "Healthy" and w.status["stableRevision"] == "2")
    assert plan.requeue_after is not None and 0 < plan.requeue_after <= 30
    assert isinstance(w.now, dt.datetime)


def _moves_then_decide_again(w: World) -> core.Plan:
    """As the controller does: a decision that moves traffic only moves it (its status is not
    written); the next decision, on what it reads back, records the outcome."""
    for _ in range(50):
        w.now += dt.timedelta(seconds=1)
        w.ticks += 1
        w._settle()
        plan = core.decide(parse_spec(w.spec), w.status, w.observe(), w.now, generation=1)
        moves = [a for a in plan.actions if isinstance(a, core.SelectColor | core.SetWeights)]
        if moves:
            for a in moves:
                w.apply(a)
            return w.tick(0)
        w.status = plan.status
        for a in plan.actions:
            w.apply(a)
    raise AssertionError("no decision moved traffic")


def test_a_move_recorded_by_the_next_decision_counts_the_release():
    """The first release too: Services already on blue and no stable in status is no adoption
    while status records a first release under way."""
    w = World(rollout_spec())
    _moves_then_decide_again(w)
    assert (w.status["phase"], w.status["stableColor"], w.status["stats"]["promoted"]) == ("Healthy", "blue", 1)
    assert [h["outcome"] for h in w.status["history"]] == ["Promoted"]
    w.set_image("v2")
    plan = _moves_then_decide_again(w)
    assert (w.status["phase"], w.status["stableColor"], w.status["stats"]["promoted"]) == ("Healthy", "green", 2)
    assert "Switched" in [e.reason for e in plan.events] and "Promoted" in [e.reason for e in plan.events]
