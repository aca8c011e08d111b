"""Pure tests of teal.analysis.run: scheduling (due), folding (advance), history (record)."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teal.analysis import (
    ERROR,
    FAILED,
    INCONCLUSIVE,
    RUNNING,
    SUCCESSFUL,
    Measurement,
    Metric,
    QueryResult,
    advance,
    due,
    record,
)
from teal.core import AnalysisRun, iso

T0 = dt.datetime(2030, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
KEY = "7:prePromotion"


def sec(s: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=s)


def metric(name="error-rate", **kw) -> Metric:
    kw.setdefault("threshold_max", 0.01)
    kw.setdefault("interval_s", 10.0)
    kw.setdefault("count", 3)
    return Metric(name=name, query="q", **kw)


def meas(m: Metric, verdict: str, at: dt.datetime, value: float | None = 0.001, key: str = KEY) -> Measurement:
    text = {
        SUCCESSFUL: f"{m.name} {value} <= max 0.01",
        FAILED: f"{m.name} {value} > max 0.01",
        INCONCLUSIVE: f"{m.name}: no data",
        ERROR: f"{m.name}: query failed (unavailable): refused",
    }[verdict]
    return Measurement(m.name, key, "green", value, None, verdict, "q", text, iso(at), m.dry_run)


def step(state, metrics, verdicts: dict[str, str], now, key=KEY):
    """Measure every due metric with the given verdict, then advance."""
    todo = due(state, key, metrics, now)
    new = [meas(m, verdicts[m.name], now, 0.5 if verdicts[m.name] == FAILED else 0.001, key) for m in todo]
    state, run = advance(state, key, metrics, new, now)
    return state, run, [m.name for m in todo]


# ---------------------------------------------------------------- due


def test_new_run_measures_at_once_unless_initial_delay():
    a, b = metric("a"), metric("b", initial_delay_s=30)
    assert [m.name for m in due(None, KEY, [a, b], T0)] == ["a"]
    state, run = advance(None, KEY, [a, b], [], T0)
    assert run.verdict == RUNNING and run.next_at == T0
    assert "b: first measurement in 30s" in run.message
    assert [m.name for m in due(state, KEY, [a, b], sec(29))] == ["a"]
    assert [m.name for m in due(state, KEY, [a, b], sec(30))] == ["a", "b"]


def test_interval_counts_from_last_measurement():
    a = metric("a")
    state, run, _ = step(None, [a], {"a": SUCCESSFUL}, T0)
    assert run.next_at == sec(10)
    assert due(state, KEY, [a], sec(9.5)) == []
    assert due(state, KEY, [a], sec(9.95)) == [a]  # timer jitter tolerance
    assert due(state, KEY, [a], sec(12)) == [a]


def test_state_of_another_key_is_a_new_run():
    a = metric("a")
    state, _, _ = step(None, [a], {"a": FAILED}, T0)
    assert state["verdict"] == FAILED
    assert due(state, "8:prePromotion", [a], sec(1)) == [a]
    state2, run2 = advance(state, "8:prePromotion", [a], [], sec(1))
    assert run2.verdict == RUNNING and state2["key"] == "8:prePromotion" and state2["metrics"]["a"]["measured"] == 0


# ---------------------------------------------------------------- advance


def test_successful_after_count_measurements():
    a = metric("a")
    state, run, _ = step(None, [a], {"a": SUCCESSFUL}, T0)
    assert run.verdict == RUNNING and "(1/3 passed)" in run.message
    state, run, _ = step(state, [a], {"a": SUCCESSFUL}, sec(10))
    state, run, _ = step(state, [a], {"a": SUCCESSFUL}, sec(20))
    assert run.verdict == SUCCESSFUL and run.next_at is None
    assert run.message == "a 0.001 <= max 0.01 (3/3 passed)"
    assert state["finishedAt"] == iso(sec(20)) and state["metrics"]["a"]["phase"] == SUCCESSFUL
    json.dumps(state)  # JSON-able for status


def test_failure_is_immediate_and_explained():
    a, b = metric("a", count=3, failure_limit=1), metric("b", interval_s=60)
    state, run, _ = step(None, [a, b], {"a": FAILED, "b": SUCCESSFUL}, T0)
    assert run.verdict == RUNNING  # one failure is tolerated
    state, run, measured = step(state, [a, b], {"a": FAILED, "b": SUCCESSFUL}, sec(10))
    assert measured == ["a"]
    assert run.verdict == FAILED and run.next_at is None  # b still had measurements to go
    assert run.message == "a 0.5 > max 0.01 (2 of 2 failed, limit 1)"


def test_failed_is_sticky():
    a = metric("a")
    state, run, _ = step(None, [a], {"a": FAILED}, T0)
    assert run.verdict == FAILED
    assert due(state, KEY, [a], sec(100)) == []
    late = [meas(a, SUCCESSFUL, sec(100)) for _ in range(5)]
    state2, run2 = advance(state, KEY, [a], late, sec(100))
    assert run2.verdict == FAILED and state2["metrics"]["a"]["successful"] == 0


def test_errors_past_the_limit_are_inconclusive():
    a = metric("a", consecutive_error_limit=2)
    state = None
    for i in range(3):
        state, run, _ = step(state, [a], {"a": ERROR}, sec(10 * i))
    assert run.verdict == INCONCLUSIVE
    assert "3 errors in a row, limit 2" in run.message and "refused" in run.message


def test_an_answer_resets_consecutive_errors_but_errors_do_not_count():
    a = metric("a", consecutive_error_limit=1, count=2)
    state = None
    for i, v in enumerate([ERROR, SUCCESSFUL, ERROR, SUCCESSFUL]):
        state, run, _ = step(state, [a], {"a": v}, sec(10 * i))
    s = state["metrics"]["a"]
    assert run.verdict == SUCCESSFUL and (s["measured"], s["errors"], s["successful"]) == (4, 2, 2)


def test_inconclusive_measurements_are_retried_up_to_the_limit():
    a = metric("a", count=1, inconclusive_limit=1)
    state, run, _ = step(None, [a], {"a": INCONCLUSIVE}, T0)
    assert run.verdict == RUNNING  # no data is not a measurement towards count
    state, run, _ = step(state, [a], {"a": INCONCLUSIVE}, sec(10))
    assert run.verdict == INCONCLUSIVE and "2 inconclusive, limit 1" in run.message


def test_inconclusive_metric_waits_for_the_others_which_may_still_fail():
    a = metric("a", count=1)
    b = metric("b", count=2)
    state, run, _ = step(None, [a, b], {"a": INCONCLUSIVE, "b": SUCCESSFUL}, T0)
    assert run.verdict == RUNNING
    state, run, _ = step(state, [a, b], {"a": SUCCESSFUL, "b": FAILED}, sec(10))
    assert run.verdict == FAILED and run.message.startswith("b 0.5 > max 0.01")


def test_dry_run_metric_is_reported_but_never_decides():
    a, d = metric("a", count=1), metric("dry", count=1, dry_run=True)
    state, run, measured = step(None, [a, d], {"a": SUCCESSFUL, "dry": FAILED}, T0)
    assert measured == ["a", "dry"]
    assert run.verdict == SUCCESSFUL
    assert state["metrics"]["dry"]["phase"] == FAILED and state["metrics"]["dry"]["dryRun"]


def test_run_of_only_dry_run_metrics_finishes_successful():
    d = metric("dry", count=2, failure_limit=1, dry_run=True)
    state, run, _ = step(None, [d], {"dry": FAILED}, T0)
    assert run.verdict == RUNNING and "[dry-run]" in run.message
    state, run, _ = step(state, [d], {"dry": FAILED}, sec(10))
    assert run.verdict == SUCCESSFUL and state["metrics"]["dry"]["phase"] == FAILED


def test_foreign_measurements_are_ignored():
    a = metric("a")
    state, run = advance(None, KEY, [a], [meas(a, FAILED, T0, key="6:prePromotion"), meas(metric("zzz"), FAILED, T0)], T0)
    assert run.verdict == RUNNING and state["metrics"]["a"]["measured"] == 0 and "zzz" not in state["metrics"]


def test_advance_returns_core_analysis_run():
    _, run = advance(None, KEY, [metric("a")], [], T0)
    assert isinstance(run, AnalysisRun) and run.key == KEY and run.error is None


def test_record_is_bounded_newest_last():
    a = metric("a")
    hist = None
    for i in range(25):
        hist = record(hist, [meas(a, SUCCESSFUL, sec(i), value=i)], limit=20)
    assert len(hist) == 20 and hist[0]["value"] == 5 and hist[-1]["value"] == 24
    assert set(hist[-1]) >= {"metric", "run", "color", "value", "verdict", "query", "message", "at"}
    json.dumps(hist)


# ---------------------------------------------------------------- properties

VERDICTS = [SUCCESSFUL, FAILED, INCONCLUSIVE, ERROR]


@st.composite
def scenario(draw):
    n = draw(st.integers(1, 3))
    metrics = []
    script = {}
    for i in range(n):
        count = draw(st.integers(1, 4))
        metrics.append(
            Metric(
                name=f"m{i}",
                query="q",
                threshold_max=1.0,
                count=count,
                failure_limit=draw(st.integers(0, count - 1)),
                inconclusive_limit=draw(st.integers(0, 2)),
                consecutive_error_limit=draw(st.integers(0, 3)),
                dry_run=draw(st.booleans()),
                interval_s=draw(st.sampled_from([1.0, 5.0, 30.0])),
                initial_delay_s=draw(st.sampled_from([0.0, 0.0, 7.0])),
            )
        )
        script[f"m{i}"] = draw(st.lists(st.sampled_from(VERDICTS), min_size=1, max_size=8))
    return metrics, script


def simulate(metrics, script, ticks=60):
    """Drive a run to its end; the k-th measurement of a metric gets script[name][k % len]."""
    state, now = None, T0
    seen = {m.name: 0 for m in metrics}
    history = []  # (now, verdict, {name: [verdicts so far]})
    taken: dict[str, list[str]] = {m.name: [] for m in metrics}
    for _ in range(ticks):
        new = []
        for m in due(state, KEY, metrics, now):
            v = script[m.name][seen[m.name] % len(script[m.name])]
            seen[m.name] += 1
            taken[m.name].append(v)
            new.append(meas(m, v, now))
        state, run = advance(state, KEY, metrics, new, now)
        history.append((now, run.verdict, {k: list(v) for k, v in taken.items()}))
        if run.next_at is None:
            assert run.verdict in (SUCCESSFUL, FAILED, INCONCLUSIVE)
            break
        assert run.verdict == RUNNING
        now = max(run.next_at, now + dt.timedelta(milliseconds=1))
    return history, state


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_never_successful_without_enough_good_measurements(sc):
    metrics, script = sc
    history, _ = simulate(metrics, script)
    for _, verdict, taken in history:
        if verdict == SUCCESSFUL:
            for m in metrics:
                if m.dry_run:
                    continue
                ok = taken[m.name].count(SUCCESSFUL)
                bad = taken[m.name].count(FAILED)
                assert ok >= 1 and ok + bad >= m.count and bad <= m.failure_limit


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_only_errors_or_no_data_never_pass(sc):
    metrics, script = sc
    script = {k: [v if v in (ERROR, INCONCLUSIVE) else ERROR for v in vs] for k, vs in script.items()}
    history, _ = simulate(metrics, script)
    if any(not m.dry_run for m in metrics):
        assert all(v != SUCCESSFUL for _, v, _ in history)
        assert history[-1][1] == INCONCLUSIVE  # and it does end: never waits forever


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(scenario(), st.lists(st.sampled_from(VERDICTS), min_size=1, max_size=8))
def test_dry_run_metrics_never_change_the_verdict(sc, other_script):
    metrics, script = sc
    if all(m.dry_run for m in metrics):
        return
    changed = {k: (other_script if any(m.name == k and m.dry_run for m in metrics) else v) for k, v in script.items()}
    a, _ = simulate(metrics, script)
    b, _ = simulate(metrics, changed)
    first_final = lambda h: next(((t, v) for t, v, _ in h if v != RUNNING), None)  # noqa: E731
    assert first_final(a) == first_final(b)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(scenario(), st.lists(st.sampled_from(VERDICTS), max_size=10))
def test_final_verdicts_are_sticky(sc, late):
    metrics, script = sc
    history, state = simulate(metrics, script)
    final = history[-1][1]
    if final == RUNNING:
        return
    now = history[-1][0] + dt.timedelta(hours=1)
    assert due(state, KEY, metrics, now) == []
    extra = [meas(m, v, now) for m, v in zip(metrics * 10, late, strict=False)]
    state2, run2 = advance(state, KEY, metrics, extra, now)
    assert run2.verdict == final and state2 == state


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_runs_end_and_failed_is_immediate(sc):
    metrics, script = sc
    history, _ = simulate(metrics, script)
    assert history[-1][1] != RUNNING  # every scripted run ends within the tick budget
    for _, verdict, taken in history:
        over = any(not m.dry_run and taken[m.name].count(FAILED) > m.failure_limit for m in metrics)
        if over:
            assert verdict == FAILED
            break


BAD_DATA = st.sampled_from(
    [
        QueryResult.nothing(),
        QueryResult(value=float("nan")),
        QueryResult.failure("unavailable", "cannot reach http://prom: refused"),
        QueryResult.failure("timeout", "no answer within 10s"),
        QueryResult.failure("multiple_series", "the query returned 2 series"),
    ]
)


@st.composite
def judged_metric(draw):
    mode = draw(st.sampled_from(["threshold", "conditions", "baseline"]))
    count = draw(st.integers(1, 3))
    common = dict(
        name="m",
        query="q",
        count=count,
        failure_limit=draw(st.integers(0, count - 1)),
        inconclusive_limit=draw(st.integers(0, 3)),
        consecutive_error_limit=draw(st.integers(0, 3)),
        no_data=draw(st.sampled_from(["inconclusive", "fail"])),
        interval_s=1.0,
    )
    if mode == "threshold":
        return Metric(threshold_max=draw(st.floats(-1, 1)), **common)
    if mode == "conditions":
        return Metric(success_condition="result < 1", failure_condition="result > 5", **common)
    return Metric(baseline="b", max_ratio=1.2, floor=0.01, **common)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(judged_metric(), st.lists(BAD_DATA, min_size=1, max_size=6), st.lists(BAD_DATA | st.none(), min_size=1, max_size=6))
def test_missing_or_errored_data_never_makes_a_successful_run(metric, values, baselines):
    """judge + advance end to end: with noData inconclusive/fail, no data is never a pass."""
    from teal.analysis import judge

    state, now = None, T0
    for i in range(40):
        new = []
        for m in due(state, KEY, [metric], now):
            value = values[i % len(values)]
            base = baselines[i % len(baselines)] if metric.baseline else None
            new.append(judge(m, value, base, "q", KEY, "green", now))
            assert new[-1].verdict != SUCCESSFUL
        state, run = advance(state, KEY, [metric], new, now)
        assert run.verdict != SUCCESSFUL
        if run.next_at is None:
            break
        now = max(run.next_at, now + dt.timedelta(seconds=1))
    assert run.verdict in (FAILED, INCONCLUSIVE)  # and it ends: missing data never stalls a run
