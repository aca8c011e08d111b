"""One analysis tick for the operator: parse, measure what is due, fold, record.

This is the seam the reconcile loop calls (a few lines, see `evaluate`). It blocks on
Prometheus (bounded by the provider's timeout per query), so async callers run it in a
worker thread: `await asyncio.to_thread(evaluate, ...)` or `await evaluate_async(...)`;
a slow Prometheus then delays only the Rollouts that use it.

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
from typing import Any, Callable, Mapping, Sequence

from ..core import AnalysisRun
from .model import AnalysisConfigError, Measurement, QueryResult, judge, parse_metrics, with_color
from .prometheus import Provider, ProviderCache, measure, resolve_queries
from .run import advance, due, record

__all__ = [
    "Evaluation",
    "evaluate",
    "evaluate_async",
    "names_for_key",
    "rollout_variables",
    "STAGES",
    "PROVIDERS",
]

STAGES = ("prePromotion", "steps", "postPromotion")
# Errors that say "this Prometheus cannot answer right now": the other due metrics of the
# same tick are not queried (each would wait for its own timeout) but recorded as errors.
_OUTAGE = ("unavailable", "timeout", "tls", "unauthorized", "not_found")

PROVIDERS = ProviderCache()  # process-wide provider cache (connection reuse)


@dataclasses.dataclass
class Evaluation:
    run: AnalysisRun  # for teal.core.Observed.analysis
    state: dict[str, Any] | None  # the new status.analysisRun
    measurements: list[Measurement]  # taken in this tick (deciding ones first in events)
    history: list[dict[str, Any]]  # the new status.analysis
    config_error: AnalysisConfigError | None = None


def names_for_key(analysis_spec: Mapping[str, Any] | None, key: str) -> list[str]:
    """The metric names of the run `key` ("<revision>:<stage>[:<step>]")."""
    parts = key.split(":")
    if len(parts) < 2 or parts[1] not in STAGES:
        raise AnalysisConfigError(f"analysis run key {key!r} names no stage ({', '.join(STAGES)})")
    names = (analysis_spec or {}).get(parts[1]) or []
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise AnalysisConfigError("must be a list of metric names", field=f"spec.analysis.{parts[1]}")
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

    Never raises AnalysisConfigError: a configuration problem comes back as
    `run.error` (teal.core aborts the release with reason AnalysisError and the stable
    colour keeps its traffic) and in `config_error`. Kubernetes API errors other than
    "not found" (reading templates or Secrets) propagate, so the caller retries.
    """
    color = str(variables.get("color") or "")
    try:
        if names is None:
            names = names_for_key(analysis_spec, key)
        metrics = parse_metrics(analysis_spec, names, fetch_template)
        todo = due(state, key, metrics, now)
        new: list[Measurement] = []
        if todo:
            if provider is None:
                prom = (analysis_spec or {}).get("prometheus")
                provider = (providers or PROVIDERS).get(prom, read_secret, default_address)
            outage: QueryResult | None = None
            for m in todo:
                if outage is not None:
                    q, bq = resolve_queries(m, variables, color)
                    new.append(judge(m, outage, None, q, key, color, now, baseline_query=bq))
                    continue
                meas = measure(provider, m, variables, key, color, now)
                if meas.error_kind in _OUTAGE:
                    outage = QueryResult.failure(meas.error_kind, f"{_tail(meas.message)} (not queried again this round)")
                new.append(meas)
        new_state, run = advance(state, key, metrics, new, now)
    except AnalysisConfigError as e:
        msg = str(e)
        return Evaluation(
            run=AnalysisRun(key=key, verdict="Failed", message=msg, error=msg),
            state=dict(state) if state else None,
            measurements=[],
            history=[dict(h) for h in (history or [])],
            config_error=e,
        )
    return Evaluation(run=run, state=new_state, measurements=new, history=record(history, new, history_limit))


def _tail(message: str) -> str:
    """'error-rate: query failed (timeout): no answer ...' -> 'no answer ...'."""
    head, sep, rest = message.partition("): ")
    return rest if sep else message


async def evaluate_async(*args: Any, **kwargs: Any) -> Evaluation:
    """`evaluate` in a worker thread, so the event loop keeps serving other Rollouts."""
    return await asyncio.to_thread(evaluate, *args, **kwargs)
