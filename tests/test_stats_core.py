"""Release history in the pure core (issue 13 item 1): every way a release ends is recorded
once in status.history, with the right times, the history is bounded, and stats.outcomes
counts every release ever recorded (never reset)."""

from __future__ import annotations

import datetime as dt
import json

from sim import World, rollout_spec, template
from teal import core
from teal.status import HistoryEntry, Outcome, Status, history_added, history_of, history_restored, iso

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def at(seconds: float) -> str:
    return iso(T0 + dt.timedelta(seconds=seconds))


def healthy_world(**bg) -> World:
    w = World(rollout_spec(**bg))
    w.until(lambda w: w.status.get("phase") == "Healthy")
    return w


def entries(w: World) -> list[dict]:
    return w.status.get("history") or []


def release(w: World, image: str, source_time: str | None = None) -> None:
    w.spec["template"] = template(image)
    if source_time:
        w.spec["template"]["metadata"]["annotations"] = {core.SOURCE_TIME: source_time}


def analysed(w: World, run: str, verdict: str, message: str, seconds: float) -> None:
    """The analysis engine's verdict on the run the release waits for, which ran `seconds`."""
    w.until(lambda w: (w.status.get("release") or {}).get("analysisKey", "").endswith(run))
    key = w.status["release"]["analysisKey"]
    state = {"key": key, "startedAt": iso(w.now - dt.timedelta(seconds=seconds)), "verdict": verdict, "finishedAt": iso(w.now)}
    w.analysis = core.AnalysisRun(key=key, verdict=verdict, message=message, state=state, history=[])


def test_first_release_and_a_promotion_with_lead_time() -> None:
    w = healthy_world()  # ticks at 1 s; the first release starts at 1 s and is live at 2 s
    (first,) = entries(w)
    assert first == {
        "revision": "1",
        "hash": w.status["stableHash"],
        "images": ["v1"],
        "startedAt": at(1),
        "switchedAt": at(2),
        "finishedAt": at(2),
        "outcome": "Promoted",
        "reason": "FirstRelease",
        "message": "revision 1 is live on blue",
    }
    release(w, "v2", source_time="2025-12-31T23:00:00+00:00")  # an hour before T0
    w.until(lambda w: w.status.get("stableRevision") == "2")
    new = entries(w)[0]
    switched = dt.datetime.fromisoformat(new["switchedAt"].replace("Z", "+00:00"))
    assert new["outcome"] == "Promoted" and new["reason"] == "Promoted" and new["images"] == ["v2"]
    assert new["leadTimeSeconds"] == (switched - dt.datetime(2025, 12, 31, 23, tzinfo=dt.UTC)).total_seconds()
    assert new["finishedAt"] == new["switchedAt"]  # no post-promotion analysis: done at the switch
    assert w.status["stats"]["outcomes"] == {"Promoted": 2}
    # nothing more on later decisions: an entry is written once
    w.run(40)
    assert len(entries(w)) == 2 and w.status["stats"]["outcomes"] == {"Promoted": 2}


def test_aborted_before_traffic_keeps_the_measured_values() -> None:
    w = healthy_world()
    w.spec["analysis"] = {"prePromotion": ["error-rate"], "metrics": [{"name": "error-rate", "query": "x"}]}
    release(w, "v2")
    analysed(w, "prePromotion", "Failed", "error-rate 0.2918 > max 0.05 (1 of 1 failed, limit 0)", seconds=30)
    w.tick()
    assert w.status["phase"] == "Aborted"
    e = entries(w)[0]
    assert (e["outcome"], e["reason"]) == ("Aborted", "AnalysisFailed")
    assert e["message"] == "prePromotion analysis failed: error-rate 0.2918 > max 0.05 (1 of 1 failed, limit 0)"
    assert "switchedAt" not in e and "detectedAt" not in e and "restoredAt" not in e
    assert e["analysisSeconds"] == 30.0
    assert e["finishedAt"] == iso(w.now)
    w.run(20)  # the aborted release stays in status.release: recorded once
    assert [x["outcome"] for x in entries(w)] == ["Aborted", "Promoted"]


def test_reverted_after_the_switch_records_time_to_restore() -> None:
    w = healthy_world()
    w.spec["analysis"] = {"postPromotion": ["error-rate"], "metrics": [{"name": "error-rate", "query": "x"}]}
    release(w, "v2")
    w.until(lambda w: w.services["app"] == "green")
    switched = iso(w.now)
    analysed(w, "postPromotion", "Failed", "error-rate 0.3 > max 0.01", seconds=12)
    before = w.status
    w.tick()  # the verdict: the abort is decided (detected) and the Services are sent back
    detected = iso(w.now)
    e = entries(w)[0]
    assert (e["outcome"], e["reason"], e["switchedAt"], e["detectedAt"]) == ("Reverted", "AnalysisFailed", switched, detected)
    assert "restoredAt" not in e  # not observed yet: the Services are moved by this decision's actions
    assert [x.outcome for x in history_added(before, w.status)] == [Outcome.REVERTED]
    before = w.status
    w.tick(seconds=2.5)  # the next decision observes every Service back on blue
    e = entries(w)[0]
    assert e["restoredAt"] == iso(w.now) and e["restoreSeconds"] == 2.5
    assert history_added(before, w.status) == [] and [x.key for x in history_restored(before, w.status)] == [
        HistoryEntry.read(e).key
    ]
    assert w.status["stats"]["outcomes"] == {"Promoted": 1, "Reverted": 1}


def test_weighted_abort_after_a_weight_is_a_revert() -> None:
    w = healthy_world(
        trafficRouting={"gatewayAPI": {"httpRoute": "app"}}, steps=[{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}]
    )
    release(w, "v2")
    w.until(lambda w: (w.weights or {}).get("green") == 10)
    first_traffic = next(p for _, _, weights, p in w.history if weights.get("green") == 10)
    w.status["abort"] = {"revision": "2", "reason": "AbortedByUser", "message": "by a test", "at": iso(w.now)}
    w.tick()
    e = entries(w)[0]
    assert (e["outcome"], e["reason"], e["message"]) == ("Reverted", "AbortedByUser", "by a test")
    assert e["switchedAt"] == first_traffic.status["release"]["trafficAt"]  # the weight, not a switch
    w.tick()
    assert entries(w)[0]["restoreSeconds"] == 2.0  # the user's abort at t, the weights back at t+2


def test_superseded_rolled_back_and_back_to_stable() -> None:
    w = healthy_world(autoPromote=False)
    release(w, "v2")
    w.until(lambda w: w.status["phase"] == "Paused")
    release(w, "v3")  # replaces v2 before any traffic
    w.tick()
    assert entries(w)[0]["outcome"] == "Superseded" and entries(w)[0]["revision"] == "2"
    release(w, "v1")  # the template back to stable: revision 3 is cancelled
    w.tick()
    assert (entries(w)[0]["outcome"], entries(w)[0]["reason"], entries(w)[0]["revision"]) == ("Aborted", "BackToStable", "3")
    # promote v4, then undo to v1 while blue is still warm: a fast rollback
    w.spec["strategy"]["blueGreen"]["autoPromote"] = True
    release(w, "v4")
    w.until(lambda w: w.status.get("stableRevision") == "4")
    release(w, "v1")
    w.until(lambda w: w.status.get("stableRevision") == "5")
    e = entries(w)[0]
    assert (e["outcome"], e["reason"], e["images"]) == ("RolledBack", "FastRollback", ["v1"])
    assert [x["outcome"] for x in entries(w)] == ["RolledBack", "Promoted", "Aborted", "Superseded", "Promoted"]
    assert w.status["stats"]["outcomes"] == {"Promoted": 2, "Superseded": 1, "Aborted": 1, "RolledBack": 1}


def test_history_is_bounded_and_totals_never_reset() -> None:
    w = healthy_world(scaleDownDelaySeconds=0)
    for i in range(2, 32):
        release(w, f"v{i}")
        w.until(lambda w, i=i: w.status.get("stableRevision") == str(i))
    hist = entries(w)
    assert len(hist) == core.HISTORY_LIMIT
    assert [e["revision"] for e in hist] == [str(i) for i in range(31, 31 - core.HISTORY_LIMIT, -1)]  # newest first
    assert w.status["stats"]["outcomes"] == {"Promoted": 31}
    # a status cut down by hand (or an older operator) keeps counting from where it was
    w.status = {k: v for k, v in w.status.items() if k != "history"}
    release(w, "v32")
    w.until(lambda w: w.status.get("stableRevision") == "32")
    assert len(entries(w)) == 1 and w.status["stats"]["outcomes"] == {"Promoted": 32}


def test_history_round_trips_and_keeps_unknown_keys() -> None:
    w = healthy_world()
    w.status["history"][0]["futureField"] = {"x": 1}
    release(w, "v2")
    w.until(lambda w: w.status.get("stableRevision") == "2")
    text = json.dumps(w.status)
    assert json.dumps(Status.load(json.loads(text)).dump()) == text
    assert w.status["history"][1]["futureField"] == {"x": 1}
    assert [e.outcome for e in history_of(w.status)] == [Outcome.PROMOTED, Outcome.PROMOTED]


def test_a_bad_source_time_is_ignored() -> None:
    w = healthy_world()
    for bad in ("yesterday", "2026-01-01T00:00:00"):  # not a time; no zone
        release(w, f"v-{bad}", source_time=bad)
        w.until(lambda w: w.status.get("release") is None and w.status.get("phase") == "Healthy")
        assert "leadTimeSeconds" not in entries(w)[0]
