"""The analysis state is part of the status the core owns: decide() writes what teal.analysis
measured (core.AnalysisRun.state/history) and drops the run's state once no run is asked for."""

from __future__ import annotations

import dataclasses

from sim import World, rollout_spec
from teal import core
from teal.status import RunKey, Status


def analysed_world() -> World:
    spec = rollout_spec()
    spec["analysis"] = {"prePromotion": ["errors"], "metrics": [{"name": "errors", "query": "sum(up)"}]}
    w = World(spec)
    w.until(lambda w: w.status.get("phase") == "Healthy")
    w.set_image("v2")
    w.until(lambda w: (w.status.get("release") or {}).get("analysisKey"))
    return w


def test_measurements_go_into_the_status_with_the_verdict():
    w = analysed_world()
    key = w.status["release"]["analysisKey"]
    assert RunKey.parse(key) == RunKey(w.status["currentRevision"], "prePromotion")
    state = {"key": key, "startedAt": core.iso(w.now), "verdict": "Running", "metrics": {"errors": {"count": 1}}}
    history = [{"metric": "errors", "run": key, "value": 0.0, "verdict": "Successful"}]
    w.analysis = core.AnalysisRun(key=key, verdict="Running", state=state, history=history)
    w.tick()
    assert w.status["analysisRun"] == state and w.status["analysis"] == history
    assert Status.load(w.status).analysis_run.is_for(RunKey.parse(key))
    # passed: the run's state goes, the measurements stay
    w.analysis = dataclasses.replace(w.analysis, verdict="Successful", state={**state, "verdict": "Successful"})
    w.tick()
    assert "analysisKey" not in w.status.get("release", {}) and "analysisRun" not in w.status
    assert w.status["analysis"] == history


def test_nothing_measured_leaves_the_history_alone():
    w = analysed_world()
    w.status["analysis"] = [{"metric": "errors", "run": "1:prePromotion", "verdict": "Successful"}]
    w.tick()  # the sim's world measures nothing (analysis None)
    assert w.status["analysis"] == [{"metric": "errors", "run": "1:prePromotion", "verdict": "Successful"}]
