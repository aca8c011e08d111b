"""One analysis run: which metrics are due, and what the measurements so far add up to.

Pure functions over a JSON-able run state that the operator keeps in
`status.analysisRun` (so a restarted operator carries on where it stopped):

    {key, startedAt, verdict, message, finishedAt?,
     metrics: {name: {measured, successful, failed, inconclusive, errors,
                      consecutiveErrors, lastAt, phase, dryRun,
                      last: {value, verdict, message}}}}

A state whose key differs from the requested key is ignored: a new key starts a new run.

Rules (close to Argo Rollouts'; differences are marked *):
- A metric is measured first at startedAt + initialDelay, then every interval after its
  last measurement, until it reaches a final phase.
- Only Successful and Failed measurements count towards `count` (*). Inconclusive ones
  (e.g. no data) and errors are tolerated up to their limits and measured again at the
  next interval, so a metric is never Successful on missing or errored data (unless
  noData: pass, which turns an empty result into a Successful measurement).
- Metric phases: failed > failureLimit -> Failed; consecutiveErrors >
  consecutiveErrorLimit -> Inconclusive (* errors past the limit are Inconclusive, not
  Failed: Prometheus being down says nothing about the release, but it is never a pass);
  inconclusive > inconclusiveLimit -> Inconclusive; `count` judged measurements with
  failed <= failureLimit -> Successful (failureLimit < count is enforced, so that needs at
  least one Successful measurement); otherwise Running.
- The run: any deciding (non-dry-run) metric Failed -> Failed at once; otherwise when
  every deciding metric is final -> Inconclusive if one is, else Successful; otherwise
  Running. A final verdict is sticky for the run's key. Dry-run metrics are measured and
  reported but never decide; a run made only of dry-run metrics is Successful once they
  are all final (whatever they measured).
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any

from ..core import AnalysisRun, iso, parse_time
from .model import ERROR, FAILED, INCONCLUSIVE, SUCCESSFUL, Measurement, Metric

__all__ = ["RUNNING", "due", "advance", "record", "metric_phase", "describe_run", "EARLY_S"]

RUNNING = "Running"
FINAL = (SUCCESSFUL, FAILED, INCONCLUSIVE)
EARLY_S = 0.1  # a measurement this much ahead of its time counts as due (timer jitter)
MESSAGE_LIMIT = 1024

_COUNTERS = ("measured", "successful", "failed", "inconclusive", "errors", "consecutiveErrors")


def _current(run: Mapping[str, Any] | None, key: str) -> Mapping[str, Any] | None:
    if run and run.get("key") == key:
        return run
    return None


def _empty_metric(metric: Metric) -> dict[str, Any]:
    d: dict[str, Any] = {c: 0 for c in _COUNTERS}
    d["phase"] = RUNNING
    if metric.dry_run:
        d["dryRun"] = True
    return d


def metric_phase(metric: Metric, state: Mapping[str, Any] | None) -> str:
    """Running | Successful | Failed | Inconclusive for one metric's counters."""
    s = state or {}
    failed = int(s.get("failed", 0))
    successful = int(s.get("successful", 0))
    if failed > metric.failure_limit:
        return FAILED
    if int(s.get("consecutiveErrors", 0)) > metric.consecutive_error_limit:
        return INCONCLUSIVE
    if int(s.get("inconclusive", 0)) > metric.inconclusive_limit:
        return INCONCLUSIVE
    if successful + failed >= metric.count:
        return SUCCESSFUL
    return RUNNING


def _next_at(metric: Metric, state: Mapping[str, Any] | None, started: dt.datetime) -> dt.datetime:
    last = parse_time((state or {}).get("lastAt"))
    if last is None:
        return started + dt.timedelta(seconds=metric.initial_delay_s)
    return last + dt.timedelta(seconds=metric.interval_s)


def _run_verdict(metrics: list[Metric], states: Mapping[str, Mapping[str, Any]]) -> str:
    deciding = [m for m in metrics if not m.dry_run]
    phases = {m.name: metric_phase(m, states.get(m.name)) for m in metrics}
    if any(phases[m.name] == FAILED for m in deciding):
        return FAILED
    judged = deciding or metrics
    if all(phases[m.name] in FINAL for m in judged):
        if any(phases[m.name] == INCONCLUSIVE for m in deciding):
            return INCONCLUSIVE
        return SUCCESSFUL
    return RUNNING


def due(run: Mapping[str, Any] | None, key: str, metrics: list[Metric], now: dt.datetime) -> list[Metric]:
    """The metrics to measure now (none once the run has a final verdict)."""
    cur = _current(run, key)
    if cur is None:
        started = now
        states: Mapping[str, Any] = {}
    else:
        if cur.get("verdict") in FINAL:
            return []
        started = parse_time(cur.get("startedAt")) or now
        states = cur.get("metrics") or {}
    if _run_verdict(metrics, states) in FINAL:
        return []
    early = dt.timedelta(seconds=EARLY_S)
    out = []
    for m in metrics:
        s = states.get(m.name)
        if metric_phase(m, s) in FINAL:
            continue
        if now + early >= _next_at(m, s, started):
            out.append(m)
    return out


def advance(
    run: Mapping[str, Any] | None,
    key: str,
    metrics: list[Metric],
    new: list[Measurement],
    now: dt.datetime,
) -> tuple[dict[str, Any], AnalysisRun]:
    """Fold new measurements into the run state; return it and the run's verdict for core.

    Measurements of another run key, of metrics not in `metrics`, or of metrics already
    final are ignored; a final run verdict never changes.
    """
    cur = _current(run, key)
    if cur is None:
        state: dict[str, Any] = {"key": key, "startedAt": iso(now), "verdict": RUNNING, "metrics": {}}
    else:
        state = copy.deepcopy(dict(cur))
        state.setdefault("metrics", {})
        state.setdefault("startedAt", iso(now))
    states: dict[str, dict[str, Any]] = state["metrics"]
    by_name = {m.name: m for m in metrics}
    for m in metrics:
        states.setdefault(m.name, _empty_metric(m))
        if m.dry_run:
            states[m.name]["dryRun"] = True
        else:
            states[m.name].pop("dryRun", None)

    sticky = state.get("verdict") in FINAL
    if not sticky:
        for meas in new:
            metric = by_name.get(meas.metric)
            if metric is None or meas.run != key:
                continue
            s = states[metric.name]
            if metric_phase(metric, s) in FINAL:
                continue
            _count(s, meas)
            s["phase"] = metric_phase(metric, s)
        verdict = _run_verdict(metrics, states)
        state["verdict"] = verdict
        state["message"] = _message(metrics, states, verdict, state, now)
        if verdict in FINAL:
            state["finishedAt"] = iso(now)
    else:
        verdict = state["verdict"]

    for m in metrics:
        states[m.name]["phase"] = metric_phase(m, states[m.name])

    next_at = None
    if verdict not in FINAL:
        started = parse_time(state["startedAt"]) or now
        pending = [m for m in metrics if metric_phase(m, states.get(m.name)) not in FINAL]
        if pending:
            next_at = min(_next_at(m, states.get(m.name), started) for m in pending)
    return state, AnalysisRun(key=key, verdict=verdict, message=state.get("message", ""), next_at=next_at)


def _count(s: dict[str, Any], meas: Measurement) -> None:
    s["measured"] = int(s.get("measured", 0)) + 1
    v = meas.verdict
    if v == ERROR:
        s["errors"] = int(s.get("errors", 0)) + 1
        s["consecutiveErrors"] = int(s.get("consecutiveErrors", 0)) + 1
    else:
        s["consecutiveErrors"] = 0
        field = {SUCCESSFUL: "successful", FAILED: "failed", INCONCLUSIVE: "inconclusive"}.get(v)
        if field is None:
            raise ValueError(f"unknown verdict {v!r} for metric {meas.metric}")
        s[field] = int(s.get(field, 0)) + 1
    s["lastAt"] = meas.at
    s["last"] = {"value": meas.as_dict()["value"], "verdict": v, "message": meas.message}
    if v == FAILED:
        s["lastFailure"] = meas.message


def _progress(m: Metric, s: Mapping[str, Any], phase: str) -> str:
    ok, bad = int(s.get("successful", 0)), int(s.get("failed", 0))
    judged = ok + bad
    if phase == FAILED:
        return f"{bad} of {judged} failed, limit {m.failure_limit}"
    if phase == INCONCLUSIVE:
        if int(s.get("consecutiveErrors", 0)) > m.consecutive_error_limit:
            return f"{s.get('consecutiveErrors')} errors in a row, limit {m.consecutive_error_limit}"
        return f"{s.get('inconclusive')} inconclusive, limit {m.inconclusive_limit}"
    text = f"{ok}/{m.count} passed"
    if bad:
        text += f", {bad} failed, limit {m.failure_limit}"
    extra = []
    if s.get("inconclusive"):
        extra.append(f"{s['inconclusive']} inconclusive")
    if s.get("consecutiveErrors"):
        extra.append(f"{s['consecutiveErrors']} errors in a row")
    return ", ".join([text, *extra])


def _metric_text(m: Metric, s: Mapping[str, Any], phase: str, state: Mapping[str, Any], now: dt.datetime) -> str:
    tag = "[dry-run] " if m.dry_run else ""
    if phase == FAILED and s.get("lastFailure"):
        head = s["lastFailure"]
    elif s.get("last"):
        head = s["last"].get("message") or m.name
    else:
        started = parse_time(state.get("startedAt")) or now
        wait = (_next_at(m, s, started) - now).total_seconds()
        return f"{tag}{m.name}: first measurement in {wait:.0f}s" if wait > 0.5 else f"{tag}{m.name}: measuring"
    return f"{tag}{head} ({_progress(m, s, phase)})"


def _message(
    metrics: list[Metric], states: Mapping[str, Mapping[str, Any]], verdict: str, state: Mapping[str, Any], now: dt.datetime
) -> str:
    phases = {m.name: metric_phase(m, states.get(m.name)) for m in metrics}
    deciding = [m for m in metrics if not m.dry_run]
    if verdict == FAILED:
        shown = [m for m in deciding if phases[m.name] == FAILED]
    elif verdict == INCONCLUSIVE:
        shown = [m for m in deciding if phases[m.name] == INCONCLUSIVE]
    else:
        shown = list(metrics)
    text = "; ".join(_metric_text(m, states.get(m.name) or {}, phases[m.name], state, now) for m in shown)
    if not text:
        text = "no metrics to measure"
    if len(text) > MESSAGE_LIMIT:
        text = text[: MESSAGE_LIMIT - 3] + "..."
    return text


def record(history: list[Mapping[str, Any]] | None, new: list[Measurement], limit: int = 20) -> list[dict[str, Any]]:
    """status.analysis: the last `limit` measurements, newest last."""
    out = [dict(h) for h in (history or [])]
    out.extend(m.as_dict() for m in new)
    if limit <= 0:
        return []
    return out[-limit:]


def describe_run(run: Mapping[str, Any] | None) -> str:
    """One line for humans (kubectl teal status): verdict and per-metric progress."""
    if not run:
        return "no analysis run"
    return f"{run.get('key')}: {run.get('verdict', RUNNING)}: {run.get('message', '')}"
