"""Capture statuses written by teal.core and the plans it makes on them (tests/test_status_compat.py).

Run ONCE with the code whose behaviour is the reference (it was run before the typed status
and the stage machine replaced the dict-based core):

    python tests/data/status-v1/capture_v1.py   (the scenarios below: analysis, aborts, deadlines, cannot_decide)
    TEAL_CAPTURE_PLUGIN=1 PYTHONPATH=tests/data/status-v1:tests python -m pytest -p capture_v1 \
        tests/test_core_scenarios.py tests/test_core_rejected.py tests/test_core_properties.py \
        tests/test_core_cannot_decide.py -q   (every decide() of those tests: files t-*.json)

It was run at commit 93f90b0 (the dict-based core). The expected plans are decide()'s alone: the
controller then dropped status.analysisRun when no run was asked for, which decide() does now
(tests/test_status_compat.py applies that to the expectation).

Every decide() call of the core tests is recorded (its raw spec, the status it was given, the
Observed, now) with the plan it returned; cases with release-policy gates are left out (a Gate
is not data), and at most PER_TEST distinct statuses per test are kept.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PER_TEST = 25
PER_SCENARIO = 120

sys.path.insert(0, str(HERE.parents[1]))  # tests/ (sim)

from teal import api, core  # noqa: E402

_raw: dict[int, Any] = {}
_orig_parse = api.parse_spec
_orig_decide = core.decide
_cases: dict[str, list[dict[str, Any]]] = {}
_seen: set[str] = set()
_current = ["scenario"]


def _parse(spec: Any, *a: Any, **kw: Any) -> Any:
    parsed = _orig_parse(spec, *a, **kw)
    _raw[id(parsed)] = json.loads(json.dumps(spec))
    return parsed


def observed_to_json(o: core.Observed) -> dict[str, Any]:
    a = o.analysis
    return {
        "template": o.template,
        "template_hash": o.template_hash,
        "colors": {c: dataclasses.asdict(v) for c, v in o.colors.items()},
        "services": {n: dataclasses.asdict(v) for n, v in o.services.items()},
        "weights": o.weights,
        "router_error": o.router_error,
        "router_unavailable": o.router_unavailable,
        "template_error": o.template_error,
        "analysis": None
        if a is None
        else {
            "key": a.key,
            "verdict": a.verdict,
            "message": a.message,
            "next_at": core.iso(a.next_at) if a.next_at else None,
            "error": a.error,
        },
        "rejected": dataclasses.asdict(o.rejected) if o.rejected else None,
        "stable_template": o.stable_template,
        "claimed": dict(o.claimed),
    }


def plan_to_json(p: core.Plan) -> dict[str, Any]:
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


def record(
    name: str,
    spec: Any,
    status: Any,
    obs: core.Observed,
    now: dt.datetime,
    generation: Any,
    plan: core.Plan,
    kind: str = "decide",
    extra: dict[str, Any] | None = None,
) -> None:
    if obs.gates:
        return
    status_text = json.dumps(status)
    key = json.dumps([kind, spec, status_text, observed_to_json(obs), now.isoformat()], sort_keys=True, default=str)
    if key in _seen or len(_cases.get(name, [])) >= (PER_TEST if name.startswith("t-") or "--" in name else PER_SCENARIO):
        return
    _seen.add(key)
    _cases.setdefault(name, []).append(
        {
            "kind": kind,
            "spec": spec,
            "status": status_text,
            "observed": observed_to_json(obs),
            "now": now.isoformat(),
            "generation": generation,
            "plan": plan_to_json(plan),
            **(extra or {}),
        }
    )


def _decide(spec: Any, status: Any, obs: core.Observed, now: dt.datetime, generation: Any = None) -> core.Plan:
    before = json.loads(json.dumps(status))
    plan = _orig_decide(spec, status, obs, now, generation)
    raw = _raw.get(id(spec))
    if raw is not None:
        record(_current[0], raw, before, obs, now, generation, plan)
    return plan


def install() -> None:
    api.parse_spec = _parse
    core.decide = _decide
    for mod in list(sys.modules.values()):  # modules that imported parse_spec by name (sim, the tests)
        if getattr(mod, "parse_spec", None) is _orig_parse:
            mod.parse_spec = _parse  # type: ignore[attr-defined]


def write(prefix: str) -> None:
    for name, cases in _cases.items():
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:90]
        (HERE / f"{prefix}{safe}.json").write_text(
            "[\n" + ",\n".join(json.dumps(c, separators=(",", ":")) for c in cases) + "\n]\n"
        )


# ---------------------------------------------------------------- as a pytest plugin

if os.environ.get("TEAL_CAPTURE_PLUGIN"):
    install()
    import pytest

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item: Any) -> Any:
        _current[0] = item.nodeid.split("::")[0].split("/")[-1].removesuffix(".py") + "--" + item.name.split("[")[0]
        yield

    def pytest_sessionfinish(session: Any) -> None:
        write("t-")


# ---------------------------------------------------------------- own scenarios


def scenarios() -> None:
    import copy

    import sim

    install()

    # a weighted release with analysis at every gate (states like those the CRD test stores), a promote
    # by a user at an indefinite pause, then an abort by a failed analysis
    spec = sim.rollout_spec(
        trafficRouting={"gatewayAPI": {"httpRoute": "app", "port": 80}},
        steps=[{"setWeight": 20}, {"pause": {"duration": "10s"}}, {"setWeight": 50}, {"pause": {}}],
    )
    m = {"name": "errors", "query": "sum(up)", "thresholdRange": {"max": 1}}
    spec["analysis"] = {"prePromotion": ["errors"], "steps": ["errors"], "postPromotion": ["errors"], "metrics": [m]}
    for verdicts, name in (
        (["Running", "Successful"], "s-weighted-analysis"),
        (["Running", "Inconclusive"], "s-weighted-inconclusive"),
    ):
        _current[0] = name
        w = sim.World(copy.deepcopy(spec))
        n = [0]

        def tick(_w: Any = None) -> bool:
            key = (w.status.get("release") or {}).get("analysisKey")
            n[0] += 1
            verdict = verdicts[n[0] % len(verdicts)]
            at = w.now + dt.timedelta(seconds=7)
            w.analysis = (
                core.AnalysisRun(key=key, verdict=verdict, message="errors 0 <= 1", next_at=at if verdict == "Running" else None)
                if key
                else None
            )
            st = w.status
            step = st.get("currentStep")
            if st.get("reason") in ("PausedAtStep", "AnalysisInconclusive") and n[0] % 3 == 0:
                st["promote"] = {"revision": st["currentRevision"], "step": step, "full": False}
            # what the controller merged into the status after decide() (analysis_driver)
            if key:
                st["analysisRun"] = {"key": key, "startedAt": core.iso(w.now), "count": n[0]}
                st["analysis"] = [
                    {
                        "metric": "errors",
                        "run": key,
                        "color": st.get("previewColor"),
                        "value": 0.0,
                        "verdict": "Successful",
                        "at": core.iso(w.now),
                    }
                ]
            else:
                st.pop("analysisRun", None)
            return False

        w.until(lambda _: tick() or w.status.get("phase") == "Healthy" and not w.status.get("release"), n=300, seconds=5)
        w.set_image("v2")
        w.until(lambda _: tick() or w.status.get("phase") == "Healthy" and not w.status.get("release"), n=300, seconds=5)
        w.set_image("v3")
        verdicts[:] = ["Running", "Failed"]
        w.until(lambda _: tick() or w.status.get("phase") == "Aborted", n=300, seconds=5)
        w.run(3, seconds=5)
        w.status["abort"] = None
        w.status.pop("abort")
        w.run(3, seconds=5)  # a retry

    # a user abort of a paused (manual) release, unknown keys kept, a spec error (cannot_decide)
    _current[0] = "s-abort-cannot-decide"
    w = sim.World(sim.rollout_spec(autoPromote=False))
    w.until(lambda w: w.status.get("phase") == "Healthy")
    w.status["someFutureField"] = {"x": 1}
    w.set_image("v2")
    w.run(4)
    w.status["abort"] = {
        "revision": w.status["currentRevision"],
        "reason": "UserAborted",
        "message": "by a user",
        "at": core.iso(w.now),
    }
    before = json.loads(json.dumps(w.status))
    for msg, reason in (("invalid spec: replicas", "InvalidSpec"), ("cannot decide: KeyError", "ReconcileError")):
        fb = core.Fallback.from_spec(w.spec)
        plan = core.cannot_decide(w.status, fb, w.observe(), msg, reason, w.now, 2)
        record(
            _current[0],
            w.spec,
            before,
            w.observe(),
            w.now,
            2,
            plan,
            kind="cannot_decide",
            extra={"message": msg, "reason": reason},
        )
    w.run(4)
    w.set_image("v3")
    w.run(3)
    fb = core.Fallback.from_spec(w.spec)
    obs = w.observe()
    before = json.loads(json.dumps(w.status))
    plan = core.cannot_decide(w.status, fb, obs, "invalid spec", "InvalidSpec", w.now + dt.timedelta(hours=1), 3)
    record(
        _current[0],
        w.spec,
        before,
        obs,
        w.now + dt.timedelta(hours=1),
        3,
        plan,
        kind="cannot_decide",
        extra={"message": "invalid spec", "reason": "InvalidSpec"},
    )
    # a new colour that never gets ready: the progress deadline aborts it (and a first release that never does)
    _current[0] = "s-deadline"
    w = sim.World(sim.rollout_spec(progressDeadlineSeconds=30))
    w.until(lambda w: w.status.get("phase") == "Healthy")
    w.set_image("v2")
    w.broken_hashes.add(api.template_hash(w.spec["template"]))
    w.run(8, seconds=5)
    w.broken_hashes.clear()
    w.set_image("v3")
    w.run(6, seconds=5)
    w = sim.World(sim.rollout_spec(progressDeadlineSeconds=30))
    w.broken_hashes.add(api.template_hash(w.spec["template"]))
    w.run(10, seconds=5)
    write("")


if __name__ == "__main__":
    scenarios()
