"""One analysis tick for the operator: parse, measure what is due, fold, record.

This is the seam the reconcile loop calls (a few lines, see `evaluate`). It blocks on
Prometheus (bounded by the provider's timeout per query); the event loop awaits
`evaluate_async(...)` instead, which takes the same arguments and awaits the queries,
so a slow Prometheus delays only the Rollouts that use it.

    ev = analysis.evaluate(
        spec.analysis, key,
        variables=analysis.rollout_variables(namespace=ns, name=name, color=release["color"], ...),
        state=status.get("analysisRun"), history=status.get("analysis"),
        fetch_template=analysis.template_fetcher(api, ns),
        read_secret=analysis.secret_reader(api, ns),
        now=now,
    )
    observed = dataclasses.replace(observed, analysis=ev.run)    # teal.core.AnalysisRun
    patch["status"]["analysisRun"] = ev.state
    patch["status"]["analysis"] = ev.history
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ..core import AnalysisRun
from ..status import RunKey
from .model import AnalysisConfigError, Measurement, QueryResult, judge, parse_metrics, with_color
from .prometheus import PrometheusProvider, Provider, ProviderCache, ameasure, measure, resolve_queries
from .run import advance, due, record

__all__ = [
    "Evaluation",
    "evaluate",
    "evaluate_async",
    "names_for_key",
    "rollout_variables",
    "STAGES",
]

STAGES = ("prePromotion", "steps", "postPromotion")
# Errors that say "this Prometheus cannot answer right now": the other due metrics of the
# same tick are not queried (each would wait for its own timeout) but recorded as errors.
_OUTAGE = ("unavailable", "timeout", "tls", "unauthorized", "not_found")


@dataclasses.dataclass
class Evaluation:
    run: AnalysisRun  # for teal.core.Observed.analysis
    state: dict[str, Any] | None  # the new status.analysisRun
    measurements: list[Measurement]  # taken in this tick (deciding ones first in events)
    history: list[dict[str, Any]]  # the new status.analysis
    config_error: AnalysisConfigError | None = None


def names_for_key(analysis_spec: Mapping[str, Any] | None, key: str) -> list[str]:
    """The metric names of the run `key` (a teal.status.RunKey, spelled "<revision>:<stage>[:<step>]")."""
    try:
        run = RunKey.parse(key).run
    except ValueError:
        run = ""
    if run not in STAGES:
        raise AnalysisConfigError(f"analysis run key {key!r} names no stage ({', '.join(STAGES)})")
    names = (analysis_spec or {}).get(run) or []
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise AnalysisConfigError("must be a list of metric names", field=f"spec.analysis.{run}")
    return list(names)


def rollout_variables(
    *,
    namespace: str,
    name: str,
    color: str,
    stable_color: str | None,
    revision: str | int | None,
    stable_revision: str | int | None,
    active_services: Sequence[str] = (),
    preview_service: str | None = None,
) -> dict[str, str | None]:
    """The query variables of a Rollout (None: not available; using it is a config error).

    Besides the names, {{deployment}} / {{podRegex}} (and their stable counterparts) let a
    query select the colour's pods by the `pod` label every Prometheus scrape of a pod
    has (see docs/analysis-queries.md).
    """
    plain = {
        "namespace": namespace,
        "name": name,
        "stableColor": stable_color,
        "revision": None if revision is None else str(revision),
        "stableRevision": None if stable_revision is None else str(stable_revision),
        "activeService": active_services[0] if active_services else None,
        "previewService": preview_service,
    }
    return with_color(plain, color)


@dataclasses.dataclass
class _Tick:
    """What one tick of run `key` has to measure."""

    key: str
    variables: Mapping[str, str | None]
    color: str
    now: dt.datetime
    metrics: list = dataclasses.field(default_factory=list)
    todo: list = dataclasses.field(default_factory=list)
    provider: Provider | None = None
    owned: PrometheusProvider | None = None  # made for this call only: closed when it ends
    outage: QueryResult | None = None  # the server is down: record the rest as errors unasked

    def skipped(self, m) -> Measurement | None:
        if self.outage is None:
            return None
        q, bq = resolve_queries(m, self.variables, self.color)
        return judge(m, self.outage, None, q, self.key, self.color, self.now, baseline_query=bq)

    def query_provider(self) -> Provider:
        if self.provider is None:  # _plan picks one whenever a metric is due
            raise RuntimeError("no provider picked for a due metric")
        return self.provider

    def took(self, meas: Measurement) -> Measurement:
        if meas.error_kind in _OUTAGE:
            self.outage = QueryResult.failure(meas.error_kind, f"{_tail(meas.message)} (not queried again this round)")
        return meas


def _plan(
    analysis_spec,
    key,
    *,
    variables,
    state,
    fetch_template,
    read_secret,
    now,
    names=None,
    provider=None,
    providers=None,
    default_address=None,
    **_ignored,
) -> _Tick:
    """Parse the metrics and pick those due; the provider only when something is due.

    Blocking (templates and Secrets are read from the API); raises AnalysisConfigError.
    """
    tick = _Tick(key, variables, str(variables.get("color") or ""), now)
    if names is None:
        names = names_for_key(analysis_spec, key)
    tick.metrics = parse_metrics(analysis_spec, names, fetch_template)
    tick.todo = due(state, key, tick.metrics, now)
    if tick.todo:
        if provider is not None:
            tick.provider = provider
        else:
            made = (providers or ProviderCache()).get((analysis_spec or {}).get("prometheus"), read_secret, default_address)
            tick.provider, tick.owned = made, (made if providers is None else None)
    return tick


def _finish(tick: _Tick, new: list[Measurement], state, history, history_limit: int = 20) -> Evaluation:
    new_state, run = advance(state, tick.key, tick.metrics, new, tick.now)
    return Evaluation(run=run, state=new_state, measurements=new, history=record(history, new, history_limit))


def _failed(key: str, e: AnalysisConfigError, state, history) -> Evaluation:
    msg = str(e)
    return Evaluation(
        run=AnalysisRun(key=key, verdict="Failed", message=msg, error=msg),
        state=dict(state) if state else None,
        measurements=[],
        history=[dict(h) for h in (history or [])],
        config_error=e,
    )


def evaluate(
    analysis_spec: Mapping[str, Any] | None,
    key: str,
    *,
    variables: Mapping[str, str | None],
    state: Mapping[str, Any] | None,
    history: list[Mapping[str, Any]] | None,
    fetch_template: Callable[[str, str], Mapping[str, Any] | None],
    read_secret: Callable[[str, str], str | None],
    now: dt.datetime,
    names: list[str] | None = None,
    provider: Provider | None = None,
    providers: ProviderCache | None = None,
    default_address: str | None = None,
    history_limit: int = 20,
) -> Evaluation:
    """Measure what is due for run `key` and return the run's verdict and the new status.

    Providers come from `providers` (the operator's cache, which keeps connection pools across
    reconciles) or `provider`; with neither, this call makes one and closes it before returning.

    Never raises AnalysisConfigError: a configuration problem comes back as
    `run.error` (teal.core aborts the release with reason AnalysisError and the stable
    colour keeps its traffic) and in `config_error`. Kubernetes API errors other than
    "not found" (reading templates or Secrets) propagate, so the caller retries.
    """
    try:
        tick = _plan(
            analysis_spec,
            key,
            variables=variables,
            state=state,
            fetch_template=fetch_template,
            read_secret=read_secret,
            now=now,
            names=names,
            provider=provider,
            providers=providers,
            default_address=default_address,
        )
        try:
            new = [
                tick.skipped(m) or tick.took(measure(tick.query_provider(), m, variables, key, tick.color, now))
                for m in tick.todo
            ]
        finally:
            if tick.owned is not None:
                tick.owned.close()
        return _finish(tick, new, state, history, history_limit)
    except AnalysisConfigError as e:
        return _failed(key, e, state, history)


async def evaluate_async(
    analysis_spec: Mapping[str, Any] | None,
    key: str,
    *,
    offload: Callable[..., Awaitable[Any]] | None = None,
    history_limit: int = 20,
    **kw: Any,
) -> Evaluation:
    """`evaluate` for the event loop: the queries are awaited (`ameasure`), so a hung
    Prometheus holds no thread and delays only the Rollouts that query it (each server
    has its own bulkhead, see teal.analysis.prometheus). Reading templates and Secrets
    blocks: `offload(fn)` runs it (default: asyncio.to_thread).
    """
    offload = offload or asyncio.to_thread
    try:
        tick = await offload(functools.partial(_plan, analysis_spec, key, **kw))
        new: list[Measurement] = []
        try:
            for m in tick.todo:
                meas = await ameasure(tick.query_provider(), m, tick.variables, key, tick.color, tick.now)
                new.append(tick.skipped(m) or tick.took(meas))
        finally:
            if tick.owned is not None:
                await tick.owned.aclose()
        return _finish(tick, new, kw.get("state"), kw.get("history"), history_limit)
    except AnalysisConfigError as e:
        return _failed(key, e, kw.get("state"), kw.get("history"))


def _tail(message: str) -> str:
    """'error-rate: query failed (timeout): no answer ...' -> 'no answer ...'."""
    head, sep, rest = message.partition("): ")
    return rest if sep else message
