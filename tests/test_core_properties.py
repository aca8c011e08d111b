"""Property tests of the core's safety rules over random histories of a simulated world."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim import World, rollout_spec, template
from teal import core
from teal.api import other, parse_spec, template_hash

IMAGES = ["v1", "v2", "v3", "v4"]


@st.composite
def configs(draw):
    weighted = draw(st.booleans())
    bg = {
        "autoPromote": draw(st.booleans()),
        "scaleDownDelaySeconds": draw(st.sampled_from([0, 5, 30])),
        "abortScaleDownDelaySeconds": draw(st.sampled_from([0, 5])),
        "progressDeadlineSeconds": draw(st.sampled_from([20, 120])),
    }
    if draw(st.booleans()):
        bg["previewReplicas"] = draw(st.integers(0, 3))
    if weighted:
        bg["trafficRouting"] = {"gatewayAPI": {"httpRoute": "app"}}
        weights = sorted(draw(st.lists(st.integers(0, 100), min_size=1, max_size=3)))
        steps = []
        for w in weights:
            steps.append({"setWeight": w})
            if draw(st.booleans()):
                steps.append({"pause": draw(st.sampled_from([{}, {"duration": "15s"}]))})
        bg["steps"] = steps
    spec = rollout_spec(**bg)
    if draw(st.booleans()):
        run = draw(st.sampled_from(["prePromotion", "postPromotion", "steps"]))
        spec["analysis"] = {run: ["m"], "metrics": [{"name": "m", "query": "up"}]}
    spec["replicas"] = draw(st.integers(1, 3))
    return spec


ops = st.one_of(
    st.tuples(st.just("tick"), st.sampled_from([0.5, 1, 5, 20, 60])),
    st.tuples(st.just("image"), st.sampled_from(IMAGES)),
    st.tuples(st.just("promote"), st.booleans()),
    st.tuples(st.just("abort"), st.none()),
    st.tuples(st.just("retry"), st.none()),
    st.tuples(st.just("break"), st.sampled_from(IMAGES[1:])),
    st.tuples(st.just("verdict"), st.sampled_from(["Running", "Successful", "Failed", "Inconclusive"])),
    st.tuples(st.just("pause"), st.booleans()),
    # the apiserver refuses an image's Deployment (422 invalid, 403 quota) or its pods (a quota)
    st.tuples(st.just("refuse"), st.tuples(st.sampled_from(IMAGES), st.sampled_from([403, 422]))),
    st.tuples(st.just("forbid"), st.sampled_from(IMAGES)),
    st.tuples(st.just("allow"), st.none()),
)


def image_hash(image: str) -> str:
    return template_hash({"metadata": {"labels": {"app": "demo"}}, "spec": {"containers": [{"name": "app", "image": image}]}})


def check_plan(w: World, plan: core.Plan) -> None:
    obs = w.last_observed
    replicas = w.spec["replicas"]
    for a in plan.actions:
        if isinstance(a, core.SelectColor):
            assert obs.colors[a.color].ready > 0 or replicas == 0, f"{a} to a colour without ready pods"
        if isinstance(a, core.SetWeights):
            ws = a.as_dict()
            assert sum(ws.values()) == 100
            for c, weight in ws.items():
                if weight > 0:
                    assert obs.colors[c].ready > 0, f"{a}: weight to a colour without ready pods"
    status = plan.status
    trues = [c["type"] for c in status["conditions"] if c["status"] == "True"]
    assert len(trues) == 1, status["conditions"]
    assert status.get("phase") in core.PHASES
    if status.get("phase") == "Aborted":
        stable = status["stableColor"]
        if obs.colors[stable].ready > 0:
            for name in w.spec["strategy"]["blueGreen"]["activeServices"]:
                assert w.services[name] == stable
            if w.weights is not None:
                assert w.weights.get(stable) == 100 and w.weights.get(other(stable)) == 0


def apply_op(w: World, op: str, arg) -> None:
    st_ = w.status
    if op == "tick":
        check_plan(w, w.tick(arg))
    elif op == "image":
        w.set_image(arg)
    elif op == "promote" and st_.get("currentRevision"):
        st_["promote"] = {"revision": st_["currentRevision"], "step": st_.get("currentStep"), "full": arg}
    elif op == "abort" and st_.get("currentRevision"):
        st_["abort"] = {"revision": st_["currentRevision"], "reason": "AbortedByUser", "message": "test"}
    elif op == "retry":
        st_.pop("abort", None)
    elif op == "break":
        w.broken_hashes.add(image_hash(arg))
    elif op == "refuse":
        w.refused[image_hash(arg[0])] = (arg[1], f"refused {arg[0]}")
    elif op == "forbid":
        w.forbidden_pods[image_hash(arg)] = f'pods "x" is forbidden: exceeded quota ({arg})'
    elif op == "allow":  # a quota lifted, a policy changed
        w.refused.clear()
        w.forbidden_pods.clear()
    elif op == "verdict":
        key = (st_.get("release") or {}).get("analysisKey")
        w.analysis = core.AnalysisRun(key=key, verdict=arg, message="sim") if key else None
    elif op == "pause":
        w.spec["paused"] = arg


WAITING = {"AwaitingPromotion", "PausedAtStep", "AnalysisInconclusive", "PausedBySpec", "Analysis"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.lists(ops, max_size=40))
def test_safety_and_liveness(spec, history):
    w = World(spec)
    for op, arg in history:
        apply_op(w, op, arg)
        if w.status.get("stableColor") and not (set(w.broken_hashes) & {w.status.get("stableHash")}):
            pass
    # quiesce: no more input, time passes; the release must end or say what it waits for
    w.spec["paused"] = False
    for _ in range(30):
        check_plan(w, w.tick(30))
    phase, reason = w.status["phase"], w.status.get("reason")
    assert phase in ("Healthy", "Aborted", "Degraded") or reason in WAITING, (phase, reason, w.status.get("message"))
    assert w.status.get("message")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.lists(ops, max_size=30), st.integers(0, 30))
def test_restart_anywhere_is_equivalent(spec, history, cut):
    """Deciding again from persisted status gives the same decision: no hidden memory."""
    w = World(spec)
    for op, arg in history[:cut]:
        apply_op(w, op, arg)
    from teal.api import parse_spec

    obs = w.observe()
    a = core.decide(parse_spec(w.spec), w.status, obs, w.now, generation=1)
    b = core.decide(parse_spec(w.spec), dict(w.status), obs, w.now, generation=1)
    assert a.actions == b.actions and a.status == b.status


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.lists(ops, max_size=30))
def test_decide_is_idempotent_once_converged(spec, history):
    """Applying a plan and deciding again at the same instant asks for nothing new.

    Each weighted step takes one decision (its weights are read back before the next), so
    a release converges in a bounded number of decisions: deploy, one per step, switch."""
    w = World(spec, ready_after=0)
    for op, arg in history:
        apply_op(w, op, arg)
    from teal.api import parse_spec

    for _ in range(6 + len(spec["strategy"]["blueGreen"].get("steps", []))):
        w._settle()
        plan = core.decide(parse_spec(w.spec), w.status, w.observe(), w.now, generation=1)
        w.status = plan.status
        w.rejection = None
        for act in plan.actions:
            w.apply(act)
    w._settle()
    again = core.decide(parse_spec(w.spec), w.status, w.observe(), w.now, generation=1)
    assert [a for a in again.actions if not isinstance(a, core.ScaleColor)] == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.lists(ops, max_size=30))
def test_a_refused_deployment_is_never_sent_in_a_loop(spec, history):
    """Once a refusal is recorded, the same Deployment is sent again only when the
    template changes, a user retries, or (403) the backoff is due: never twice in 30 s."""
    w = World(spec)
    for op, arg in history:
        apply_op(w, op, arg)
    sent: dict[tuple, list] = {}
    for _ in range(60):
        plan = w.tick(1)
        check_plan(w, plan)
        for a in plan.actions:
            if isinstance(a, core.DeployColor) and a.hash in w.refused:
                sent.setdefault((a.color, a.hash, a.replicas), []).append(w.now)
        rejected = w.status.get("rejected")
        if rejected and w.status.get("reason") == "DeploymentRejected":
            assert rejected["message"] in w.status["message"]
    for key, times in sent.items():
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
        assert all(g >= 30 for g in gaps), (key, times)


class ClaimedWorld(World):
    """A world where another Rollout may hold a claim on some of the objects this one names."""

    claimed: dict = {}

    def observe(self) -> core.Observed:
        return dataclasses.replace(super().observe(), claimed=dict(self.claimed))


CLAIMABLE = ["Service/app", "Service/app-preview", "HTTPRoute/app"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.lists(st.one_of(ops, st.tuples(st.just("claim"), st.sets(st.sampled_from(CLAIMABLE)))), max_size=40))
def test_a_claimed_object_is_never_written_by_a_non_owner(spec, history):
    """While another Rollout holds a claim, no SelectColor/SetWeights touches that object,
    and the Rollout says so (Degraded, ServiceClaimed, naming the owner)."""
    w = ClaimedWorld(spec)
    w.claimed = {}
    for op, arg in history:
        if op == "claim":
            w.claimed = {obj: "other" for obj in arg}
            continue
        before = dict(w.services), dict(w.weights or {})
        if op == "tick":
            plan = w.tick(arg)
            for a in plan.actions:
                if isinstance(a, core.SelectColor):
                    assert f"Service/{a.service}" not in w.claimed, a
                if isinstance(a, core.SetWeights):
                    assert "HTTPRoute/app" not in w.claimed, a
            if w.claimed:
                assert (w.status["phase"], w.status["reason"]) == ("Degraded", "ServiceClaimed")
                assert "claimed by Rollout other" in w.status["message"]
                assert all(w.services[n] == before[0][n] for n in w.services if f"Service/{n}" in w.claimed)
        else:
            apply_op(w, op, arg)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.lists(ops, max_size=30), st.sampled_from(["delete", "zero"]))
def test_stable_short_of_pods_is_reported_and_restored(spec, history, fault):
    """Whatever the release does: a stable colour that serves traffic with no ready pod is
    reported (Degraded/StableUnavailable), and a deleted one is made again from its template."""
    w = World(spec)
    for op, arg in history:
        apply_op(w, op, arg)
    st_ = w.status
    stable = st_.get("stableColor")
    if (
        not stable
        or st_.get("activeColor") != stable
        or st_.get("phase") not in ("Healthy", "Progressing", "Paused")
        or w.refused
    ):
        return
    if fault == "delete":
        w.deployments.pop(stable, None)
    else:
        w.deployments[stable].ready = 0
        w.deployments[stable].changed_at_tick = w.ticks  # becomes ready again on the next settle
    history_template = next(template(i) for i in IMAGES if image_hash(i) == st_["stableHash"])
    w.last_observed = dataclasses.replace(w.observe(), stable_template=history_template)  # the ControllerRevision
    plan = core.decide(parse_spec(w.spec), w.status, w.last_observed, w.now, generation=1)
    assert (plan.status["phase"], plan.status["reason"]) == ("Degraded", "StableUnavailable"), plan.status["message"]
    if fault == "delete":
        assert any(isinstance(a, core.DeployColor) and a.color == stable and a.hash == st_["stableHash"] for a in plan.actions), (
            plan.actions
        )
