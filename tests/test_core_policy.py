"""Release windows and freezes in the decision core (teal.core.decide with Observed.gates):
held releases say why and when they open, stay Reconciling, wake at the opening; a hold never
moves traffic to the new colour and never blocks an abort, a revert or a fast rollback."""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim import World, rollout_spec
from teal import core
from teal import policy as P
from test_core_properties import apply_op, configs, image_hash, ops

LONDON = zoneinfo.ZoneInfo("Europe/London")
TRADING = P.policy_from_spec(
    "trading-hours",
    {
        "timeZone": "Europe/London",
        "windows": [{"name": "trading-hours", "days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "09:00", "end": "16:00"}],
    },
)


class GatedWorld(World):
    gates: tuple = ()

    def observe(self) -> core.Observed:
        return dataclasses.replace(super().observe(), gates=self.gates)


def released_v1(spec: dict, at: dt.datetime) -> GatedWorld:
    w = GatedWorld(spec, now=at)
    w.until(lambda w: w.status.get("phase") == "Healthy", seconds=1)
    return w


def cond(status: dict, kind: str) -> str:
    return next(c["status"] for c in status["conditions"] if c["type"] == kind)


def friday_evening() -> dt.datetime:
    return dt.datetime(2026, 3, 27, 19, 0, tzinfo=LONDON).astimezone(dt.UTC)


def test_hold_before_promotion_runs_the_new_colour_and_switches_when_the_window_opens():
    w = released_v1(rollout_spec(), friday_evening())
    w.gates = (P.Gate("ReleasePolicy shop/trading-hours", TRADING, P.HOLD_BEFORE_PROMOTION),)
    w.set_image("v2")
    plan = w.run(20, seconds=1)
    assert w.deployments["green"].hash == image_hash("v2") and w.ready("green") == 3
    assert w.services["app"] == "blue" and w.services["app-preview"] == "green"
    st_ = w.status
    assert (st_["phase"], st_["reason"]) == ("Progressing", "HeldByPolicy")
    assert (
        "revision 2 on green waits before promotion: held by window trading-hours (Europe/London): opens Mon 09:00, in 2d12h"
        in st_["message"]
    )
    assert (cond(st_, "Reconciling"), cond(st_, "Stalled")) == ("True", "False")
    assert w.reasons().count("HeldByPolicy") == 1
    opens = dt.datetime(2026, 3, 30, 9, 0, tzinfo=LONDON)
    assert abs(w.now + dt.timedelta(seconds=plan.requeue_after) - opens) < dt.timedelta(seconds=1)
    w.now = opens.astimezone(dt.UTC) - dt.timedelta(seconds=1)
    w.until(lambda w: w.services["app"] == "green", n=10)
    assert w.status["phase"] in ("Healthy", "Progressing")


def test_hold_before_start_keeps_the_new_template_off_the_cluster():
    w = released_v1(rollout_spec(), friday_evening())
    w.gates = (P.Gate("ClusterReleasePolicy trading-hours", TRADING, P.HOLD_BEFORE_START),)
    w.set_image("v2")
    w.run(10)
    assert all(d.hash != image_hash("v2") for d in w.deployments.values())
    assert w.status["message"].startswith("the new template waits: held by window trading-hours")
    assert w.reasons().count("HeldByPolicy") == 1


def test_a_freeze_holds_until_its_end_and_names_who_and_why():
    w = released_v1(rollout_spec(), friday_evening())
    until = w.now + dt.timedelta(hours=1)
    w.gates = (P.Gate("Rollout annotation teal.dev/freeze", freeze=P.Freeze("incident 4711", "alice", until)),)
    w.set_image("v2")
    w.run(5)
    assert "frozen by alice (Rollout annotation teal.dev/freeze): incident 4711; until" in w.status["message"]
    assert not any(d.hash == image_hash("v2") for d in w.deployments.values())  # a freeze holds a start too
    w.now = until
    w.until(lambda w: w.services["app"] == "green")


def test_abort_revert_and_fast_rollback_act_during_a_freeze():
    frozen = (P.Gate("ClusterReleasePolicy freeze", freeze=P.Freeze("incident 4711")),)
    w = released_v1(rollout_spec(), friday_evening())
    w.set_image("v2")
    w.until(lambda w: w.status.get("phase") == "Healthy" and w.services["app"] == "green")
    w.gates = frozen
    w.set_image("v1")  # the warm old colour runs it: a fast rollback, not held
    w.until(lambda w: w.services["app"] == "blue", n=5)
    assert "FastRollback" in w.reasons()

    w.gates = frozen + (P.Gate("ReleasePolicy shop/trading-hours", TRADING, P.HOLD_BEFORE_PROMOTION),)
    w.set_image("v3")
    w.run(3)
    assert not any(d.hash == image_hash("v3") for d in w.deployments.values())  # frozen: not even started
    w.gates = w.gates[1:]  # unfrozen; still outside trading hours: runs, held before promotion
    w.until(
        lambda w: (
            w.status["reason"] == "HeldByPolicy" and w.ready("green") > 0 and w.deployments["green"].hash == image_hash("v3")
        )
    )
    w.status["abort"] = {"revision": w.status["currentRevision"], "reason": "AbortedByUser", "message": "test"}
    w.until(lambda w: w.status["phase"] == "Aborted", n=5)
    assert w.services["app"] == "blue"
    w.set_image("v1")  # a revert to the stable template is never held either
    w.until(lambda w: w.status["phase"] == "Healthy", n=5)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.lists(ops, max_size=40), st.sampled_from([P.HOLD_BEFORE_START, P.HOLD_BEFORE_PROMOTION]))
def test_a_closed_gate_never_moves_traffic_to_a_new_template(spec, history, behaviour):
    """With v1 and v2 released before a never-opening window closes in, whatever happens (new
    images, promotes, aborts, retries, broken pods, verdicts) no Service and no weight ever
    goes to a colour running anything else; aborts still end on the stable colour (check_plan)."""
    spec["strategy"]["blueGreen"]["autoPromote"] = True
    spec["strategy"]["blueGreen"].pop("steps", None)
    spec["strategy"]["blueGreen"].pop("trafficRouting", None)
    spec.pop("analysis", None)
    w = GatedWorld(spec)
    w.until(lambda w: w.status.get("phase") == "Healthy")
    w.set_image("v2")
    w.until(lambda w: w.status.get("phase") == "Healthy" and w.services["app"] != "blue")
    never = P.policy_from_spec("never", {"windows": [{"name": "leap", "schedule": "0 9 29 2 *", "duration": "1m"}]})
    w.gates = (P.Gate("ReleasePolicy x/never", never, behaviour),)
    known = {image_hash("v1"), image_hash("v2")}
    for op, arg in history:
        apply_op(w, op, arg)
        if op != "tick":
            continue
        plan = w.history[-1][3]
        for a in plan.actions:
            if isinstance(a, core.SelectColor) and a.service == "app":
                assert w.last_observed.colors[a.color].hash in known, (a, w.status.get("message"))
            if isinstance(a, core.SetWeights):
                assert all(w.last_observed.colors[c].hash in known for c, v in a.as_dict().items() if v > 0)
        if w.status.get("reason") == "HeldByPolicy":
            assert cond(w.status, "Stalled") == "False"


def test_held_time_is_recorded_and_not_counted_as_release_time():
    """release.heldSince while held, release.heldSeconds and stats.heldSeconds once it opens;
    stats.lastReleaseSeconds (teal_release_duration_seconds) leaves the hold out."""
    w = released_v1(rollout_spec(), friday_evening())
    w.gates = (P.Gate("ReleasePolicy shop/trading-hours", TRADING, P.HOLD_BEFORE_PROMOTION),)
    started = w.now
    w.set_image("v2")
    w.until(lambda w: w.status.get("reason") == "HeldByPolicy", seconds=1)
    since = dt.datetime.fromisoformat(w.status["release"]["heldSince"].replace("Z", "+00:00"))
    assert started <= since <= w.now and "heldSeconds" not in w.status["release"]
    opens = dt.datetime(2026, 3, 30, 9, 0, tzinfo=LONDON).astimezone(dt.UTC)
    w.now = opens
    w.until(lambda w: w.status["stats"].get("promoted") == 2, n=20)
    stats = w.status["stats"]
    held = round((opens - since).total_seconds())
    assert abs(stats["heldSeconds"] - held) <= 2
    total = (w.now - started).total_seconds()
    assert stats["lastReleaseSeconds"] < total - held + 60 < 3600  # minutes of work, not a weekend
    assert "release" not in w.status or not w.status["release"].get("heldSince")


def test_held_fields_are_optional_in_old_statuses():
    from teal.status import Release

    r = Release.load({"revision": "2", "color": "green"})
    assert (r.held_since, r.held_seconds) == (None, None)
    assert r.dump() == {"revision": "2", "color": "green"}


def test_a_hold_ended_by_an_abort_still_counts_as_held_time():
    """An abort is never held; the time the release was held until then is counted (stats.heldSeconds)."""
    w = released_v1(rollout_spec(), friday_evening())
    w.gates = (P.Gate("ReleasePolicy shop/trading-hours", TRADING, P.HOLD_BEFORE_PROMOTION),)
    w.set_image("v2")
    w.until(lambda w: w.status.get("reason") == "HeldByPolicy", seconds=1)
    since = dt.datetime.fromisoformat(w.status["release"]["heldSince"].replace("Z", "+00:00"))
    w.now = since + dt.timedelta(hours=2)
    w.status["abort"] = {"revision": w.status["currentRevision"], "reason": "AbortedByUser", "message": "test"}
    w.until(lambda w: w.status.get("phase") == "Aborted", n=5)
    assert abs(w.status["stats"]["heldSeconds"] - 7200) <= 2
    assert not w.status["release"].get("heldSince")
