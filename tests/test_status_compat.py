"""Statuses written by the previous core (the dict-based one, before teal.status) still work.

tests/data/status-v1/*.json hold real (spec, status, observed, now) inputs of decide() and
cannot_decide(), captured from that code (tests/data/status-v1/capture_v1.py) with the plans it
returned. The typed status must read each one and write it back byte for byte (a previous
operator version reads what this one writes, users and `kubectl teal` read the same keys),
and the core must make the very same plan on it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from teal import api, core
from teal.status import Phase, RunKey, Stage, Status

DATA = Path(__file__).parent / "data" / "status-v1"
CASES = [(f.stem, i, c) for f in sorted(DATA.glob("*.json")) for i, c in enumerate(json.loads(f.read_text()))]


def observed(o: dict[str, Any]) -> core.Observed:
    a = o["analysis"]
    return core.Observed(
        template=o["template"],
        template_hash=o["template_hash"],
        colors={c: core.ColorObs(**v) for c, v in o["colors"].items()},
        services={n: core.ServiceObs(**v) for n, v in o["services"].items()},
        weights=o["weights"],
        router_error=o["router_error"],
        router_unavailable=o["router_unavailable"],
        template_error=o["template_error"],
        analysis=None
        if a is None
        else core.AnalysisRun(
            key=a["key"], verdict=a["verdict"], message=a["message"], error=a["error"], next_at=core.parse_time(a["next_at"])
        ),
        rejected=core.Rejection(**o["rejected"]) if o["rejected"] else None,
        stable_template=o["stable_template"],
        claimed=o["claimed"],
    )


def plan_json(p: core.Plan) -> dict[str, Any]:
    import dataclasses

    return json.loads(
        json.dumps(
            {
                "status": p.status,
                "actions": [{"kind": type(a).__name__, **dataclasses.asdict(a)} for a in p.actions],
                "events": [dataclasses.asdict(e) for e in p.events],
                "requeue_after": p.requeue_after,
            }
        )
    )


def test_the_data_covers_every_part_of_a_release():
    statuses = [json.loads(c["status"]) for _, _, c in CASES] + [c["plan"]["status"] for _, _, c in CASES]
    reasons = {s.get("reason") for s in statuses}
    assert {
        "Deploying",
        "PausedAtStep",
        "Analysis",
        "AnalysisInconclusive",
        "AwaitingPromotion",
        "Healthy",
        "SettingWeights",
        "DeploymentRejected",
        "ProgressDeadlineExceeded",
    } <= reasons, reasons
    assert any((s.get("release") or {}).get("abortedAt") for s in statuses)
    assert any((s.get("release") or {}).get("passed") for s in statuses)
    assert any("analysisRun" in s for s in statuses)
    assert any("someFutureField" in s for s in statuses)
    assert len(CASES) > 300


@pytest.mark.parametrize("name,i,case", CASES, ids=[f"{n}-{i}" for n, i, _ in CASES])
def test_same_plan_as_the_previous_core(name: str, i: int, case: dict[str, Any]) -> None:
    status = json.loads(case["status"])
    obs = observed(case["observed"])
    now = dt.datetime.fromisoformat(case["now"])
    if case["kind"] == "cannot_decide":
        plan = core.cannot_decide(
            status, core.Fallback.from_spec(case["spec"]), obs, case["message"], case["reason"], now, case["generation"]
        )
    else:
        plan = core.decide(api.parse_spec(case["spec"]), status, obs, now, case["generation"])
    want = case["plan"]
    if case["kind"] == "decide" and not (want["status"].get("release") or {}).get("analysisKey"):
        # the controller dropped the analysis engine's state after decide(); decide() does it now
        want["status"].pop("analysisRun", None)
    got = plan_json(plan)
    added = _history_keys(got["status"])
    assert got == want, "the same plan, plus the release history (issue 13)"
    if "history" in added:  # an entry is written only when a release ends, which an Event says
        assert len(added["history"]) == len(status.get("history") or []) + 1 and plan.events
    assert json.loads(case["status"]) == status, "decide() changed the status it was given"


def _history_keys(status: dict[str, Any]) -> dict[str, Any]:
    """Take out of `status` what the release history (issue 13) adds to the previous core's
    status (status.history, stats.outcomes, and what a release keeps for its entry)."""
    added: dict[str, Any] = {}
    if "history" in status:
        added["history"] = status.pop("history")
    if "outcomes" in (status.get("stats") or {}):
        added["outcomes"] = status["stats"].pop("outcomes")
    for key in ("images", "sourceTime", "trafficAt", "analysisSeconds"):
        if key in (status.get("release") or {}):
            added[f"release.{key}"] = status["release"].pop(key)
    return added


STATUSES = sorted({c["status"] for _, _, c in CASES} | {json.dumps(c["plan"]["status"]) for _, _, c in CASES})


def test_every_v1_status_round_trips_byte_for_byte() -> None:
    for text in STATUSES:
        st = Status.load(json.loads(text))
        assert json.dumps(st.dump()) == text


def test_the_typed_view_reads_what_v1_wrote() -> None:
    releases = [Status.load(json.loads(text)).release for text in STATUSES]
    passed = [k for r in releases if r and r.passed for k in r.passed]
    assert passed and all(
        isinstance(k, RunKey) and str(k) in {f"{k.revision}:{k.run}", f"{k.revision}:{k.run}:{k.step}"} for k in passed
    )
    stages = {r.stage for r in releases if r}
    assert {Stage.DEPLOYING, Stage.PROMOTION, Stage.STEPS, Stage.POST_PROMOTION, Stage.ABORTED} <= stages, stages


def test_unknown_and_unreadable_fields_are_kept_when_the_core_writes() -> None:
    raw = {
        "phase": "Healthy",
        "someFutureField": {"x": [1]},
        "stats": {"releases": 2},
        "release": {"revision": "3", "hash": "h", "color": "green", "step": 1, "future": True, "startedAt": "not a time"},
        "scaleDown": {"color": "blue", "at": "2026-01-01T00:00:00Z"},
    }
    st = Status.load(raw)
    assert st.release is not None and st.release.started_at is None  # unreadable: not invented
    st.release.step = 2
    st.phase = Phase.PAUSED
    out = st.dump()
    assert out["someFutureField"] == {"x": [1]}
    assert out["release"] == {**raw["release"], "step": 2}  # "future" and the unreadable time as they were
    assert out["scaleDown"] is not raw["scaleDown"] and out["scaleDown"] == raw["scaleDown"]  # unchanged: verbatim
    assert out["phase"] == "Paused"
    st.release = None
    st.preview_color = None
    out = st.dump()
    assert "release" not in out and out["previewColor"] is None  # previewColor is written as null


def test_run_keys_are_the_v1_strings() -> None:
    assert str(RunKey("7", "prePromotion")) == "7:prePromotion"
    assert str(RunKey("7", "steps", 2)) == "7:steps:2"
    assert RunKey.parse("7:steps:2") == RunKey("7", "steps", 2)
    with pytest.raises(ValueError):
        RunKey.parse("7")
