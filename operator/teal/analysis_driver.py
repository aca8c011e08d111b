"""Glue between the reconcile loop and teal.analysis: measure what is due, hand it to the core.

The core asks for an analysis run by setting `release.analysisKey` (a teal.status.RunKey). On
the next reconcile this driver measures the metrics that are due and returns the Observed
the core decides on: the run's verdict with the engine's new state and measurement history
(core.AnalysisRun.state/history), which decide() writes into the status it owns. The queries
are awaited (aiohttp, with a bulkhead per Prometheus server), so a slow or hung Prometheus holds
no thread and delays only the Rollouts that query it; the template and Secret reads go to
`offload` (the caller's API thread pool).

Everything it needs is a parameter: it imports nothing of the controller.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from . import analysis, core
from .api import RolloutSpec
from .status import Status


async def run(
    api: Any,
    offload: Callable[..., Awaitable[Any]],
    providers: analysis.ProviderCache,
    prometheus_address: str | None,
    body: Mapping[str, Any],
    spec: RolloutSpec,
    status: Mapping[str, Any] | Status,
    observed: core.Observed,
    now: dt.datetime,
) -> core.Observed:
    """`observed` with the verdict of the run the status asks for (unchanged when none is)."""
    st = status if isinstance(status, Status) else Status.read(status)
    release = st.release
    if release is None or release.analysis_key is None or release.aborted_at is not None:
        return observed
    key = str(release.analysis_key)
    ns = body["metadata"]["namespace"]
    variables = analysis.rollout_variables(
        namespace=ns,
        name=body["metadata"]["name"],
        color=release.color,
        stable_color=st.stable_color,
        revision=release.revision,
        stable_revision=st.stable_revision,
        active_services=spec.blue_green.active_services,
        preview_service=spec.blue_green.preview_service,
    )
    state = st.analysis_run.dump() if st.analysis_run and st.analysis_run.is_for(release.analysis_key) else None
    ev = await analysis.evaluate_async(
        spec.analysis,
        key,
        variables=variables,
        state=state,
        history=st.analysis,
        fetch_template=analysis.template_fetcher(api, ns),
        read_secret=analysis.secret_reader(api, ns),
        now=now,
        default_address=prometheus_address,
        providers=providers,
        offload=offload,
    )
    run_ = dataclasses.replace(ev.run, state=ev.state, history=tuple(ev.history))
    return dataclasses.replace(observed, analysis=run_)
