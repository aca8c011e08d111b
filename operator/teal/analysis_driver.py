"""Glue between the reconcile loop and teal.analysis: measure what is due, fold it into the run.

The core asks for an analysis run by writing `status.release.analysisKey`
("<revision>:<run>[:<step>]"). On the next reconcile this driver measures the metrics
that are due and hands the run's verdict to the core. The queries are awaited (aiohttp,
with a bulkhead per Prometheus server), so a slow or hung Prometheus holds no thread and
delays only the Rollouts that query it; the template and Secret reads go to the API pool.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Mapping

from . import analysis, core
from .api import RolloutSpec


async def run(ctl, body, spec: RolloutSpec, status: Mapping[str, Any], observed: core.Observed, now: dt.datetime):
    release = status.get("release") or {}
    key = release.get("analysisKey")
    if not key or release.get("abortedAt"):
        return observed, {}
    from .controller import SETTINGS

    ns = body["metadata"]["namespace"]
    variables = analysis.rollout_variables(
        namespace=ns,
        name=body["metadata"]["name"],
        color=release["color"],
        stable_color=status.get("stableColor"),
        revision=release.get("revision"),
        stable_revision=status.get("stableRevision"),
        active_services=spec.blue_green.active_services,
        preview_service=spec.blue_green.preview_service,
    )
    state = status.get("analysisRun") if (status.get("analysisRun") or {}).get("key") == key else None
    api = ctl.kube.api_client
    ev = await analysis.evaluate_async(
        spec.analysis,
        key,
        variables=variables,
        state=state,
        history=status.get("analysis"),
        fetch_template=analysis.template_fetcher(api, ns),
        read_secret=analysis.secret_reader(api, ns),
        now=now,
        default_address=SETTINGS.prometheus_address,
        offload=ctl.call,
    )
    extra: dict[str, Any] = {"analysisRun": ev.state, "analysis": ev.history}
    return dataclasses.replace(observed, analysis=ev.run), extra
