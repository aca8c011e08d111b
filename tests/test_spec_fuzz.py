"""Fuzz: specs the CRD schema lets through never crash the parser, decide() or the analysis clock.

A spec is drawn within the schema's types and bounds (int32 counts and seconds, durations of
up to 25 digits in any unit the pattern allows, steps, analysis timings); the parser may
refuse it with a SpecError / AnalysisConfigError naming the field, and anything it accepts is
driven through releases, aborts and long ticks of the simulated world. No other exception
may escape: one used to freeze the Rollout's status on every reconcile (issue 12).
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim import World, rollout_spec, template
from teal import analysis, core
from teal.api import MAX_DURATION_S, SpecError, parse_duration, parse_spec

INT32 = st.integers(0, 2**31 - 1)
# what the CRD's pattern ^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$ and maxLength 32 accept
DURATION = st.from_regex(r"\A([0-9]{1,25}(\.[0-9]{1,3})?(ms|s|m|h)){1,2}\Z", fullmatch=True).filter(lambda s: len(s) <= 32)
SMALL_DURATION = st.sampled_from(["0s", "500ms", "1s", "30s", "2m", "1h30m", "720h"])


@st.composite
def specs(draw) -> dict:
    bg = {
        "autoPromote": draw(st.booleans()),
        "scaleDownDelaySeconds": draw(INT32),
        "abortScaleDownDelaySeconds": draw(INT32),
        "progressDeadlineSeconds": draw(st.integers(1, 2**31 - 1)),
    }
    if draw(st.booleans()):
        bg["previewReplicas"] = draw(st.integers(0, 3))
    steps = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            steps.append({"setWeight": draw(st.sampled_from([0, 100]))})
        else:
            steps.append({"pause": draw(st.one_of(st.just({}), st.builds(dict, duration=DURATION | SMALL_DURATION)))})
    bg["steps"] = steps
    spec = rollout_spec(**bg)
    spec["replicas"] = draw(st.integers(0, 3))
    if draw(st.booleans()):
        metric = {"name": "m", "query": "up", "thresholdRange": {"max": 1}}
        for key in ("interval", "initialDelay"):
            if draw(st.booleans()):
                metric[key] = draw(DURATION | SMALL_DURATION)
        if draw(st.booleans()):
            metric["count"] = draw(st.integers(1, 1000))
        spec["analysis"] = {draw(st.sampled_from(["prePromotion", "postPromotion"])): ["m"], "metrics": [metric]}
    return spec


ops = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.sampled_from([0.5, 5, 600, 86400, 30 * 86400])),
        st.tuples(st.just("image"), st.sampled_from(["v2", "v3"])),
        st.tuples(st.just("abort"), st.none()),
        st.tuples(st.just("promote"), st.none()),
    ),
    max_size=12,
)


def parsed(spec: dict):
    try:
        return parse_spec(spec)
    except SpecError:
        return None


def run_analysis_clock(spec: dict, now: dt.datetime) -> None:
    """The analysis timing (initialDelay, interval) over a run: dates, no Prometheus."""
    try:
        metrics = analysis.parse_metrics(spec["analysis"], ["m"], lambda kind, name: None)
    except analysis.AnalysisConfigError:
        return
    state = None
    for _ in range(3):
        analysis.due(state, "2:prePromotion", metrics, now)
        state, _run = analysis.advance(state, "2:prePromotion", metrics, [], now)
        now += dt.timedelta(days=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), script=ops)
def test_no_exception_escapes_parse_decide_or_analysis(spec, script):
    rs = parsed(spec)
    if rs is None:
        return
    w = World(spec=spec)
    if spec.get("analysis"):
        run_analysis_clock(spec, w.now)
        w.analysis = None
    w.run(3)
    for op, arg in script:
        if op == "tick":
            w.tick(arg)
        elif op == "image":
            w.spec["template"] = template(arg)
        elif op == "abort" and (w.status.get("release") or {}).get("revision"):
            w.status["abort"] = {"revision": w.status["release"]["revision"], "reason": "Aborted", "message": "user"}
        elif op == "promote" and (w.status.get("release") or {}).get("revision"):
            w.status["promote"] = {"revision": w.status["release"]["revision"], "full": True}
        w.tick(1)
    assert w.status.get("phase") in core.PHASES


@given(value=DURATION)
def test_durations_are_bounded_or_refused(value):
    try:
        seconds = parse_duration(value, "f")
    except SpecError as e:
        assert "longer than the limit of 720h" in str(e)
        return
    assert 0 <= seconds <= MAX_DURATION_S
    dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)  # no OverflowError


@pytest.mark.parametrize(
    "spec_patch, field",
    [
        ({"steps": [{"pause": {"duration": "100000000000000000000h"}}]}, "steps[0].pause.duration"),
        ({"steps": [{"pause": {"duration": "721h"}}]}, "steps[0].pause.duration"),
        ({"steps": [{"pause": {"duration": 1e20}}]}, "steps[0].pause.duration"),
    ],
)
def test_parser_refuses_what_the_schema_would(spec_patch, field):
    with pytest.raises(SpecError, match=r"longer than the limit of 720h") as err:
        parse_spec(rollout_spec(**spec_patch))
    assert field in err.value.field


def test_analysis_refuses_initial_delay_past_the_bound():
    spec = {"metrics": [{"name": "m", "query": "up", "thresholdRange": {"max": 1}, "initialDelay": "9999999999h"}]}
    with pytest.raises(analysis.AnalysisConfigError, match="720h"):
        analysis.parse_metrics(spec, ["m"], lambda kind, name: None)
    spec["metrics"][0].update(initialDelay="1s", count=1001)
    with pytest.raises(analysis.AnalysisConfigError, match="at most 1000"):
        analysis.parse_metrics(spec, ["m"], lambda kind, name: None)
