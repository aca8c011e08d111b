"""Glue between the reconcile loop and teal.analysis: measure what is due, fold it into the run.

The core asks for an analysis run by writing `status.release.analysisKey`
("<revision>:<run>[:<step>]"). On the next reconcile this driver resolves the run's
metrics, queries Prometheus for those that are due (in the query thread pool, so a slow
Prometheus delays only this Rollout), and hands the run's verdict to the core.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
from typing import Any, Mapping

from kubernetes.client.exceptions import ApiException

from . import core
from .analysis import model as amodel
from .analysis import prometheus as aprom
from .analysis import run as arun
from .api import GROUP, VERSION, RolloutSpec

HISTORY_LIMIT = 20


def variables(body: Mapping[str, Any], spec: RolloutSpec, status: Mapping[str, Any], color: str) -> dict[str, str]:
    release = status.get("release") or {}
    return {
        "namespace": body["metadata"]["namespace"],
        "name": body["metadata"]["name"],
        "color": color,
        "stableColor": status.get("stableColor") or "",
        "revision": str(release.get("revision") or status.get("currentRevision") or ""),
        "stableRevision": str(status.get("stableRevision") or ""),
        "activeService": spec.blue_green.active_services[0],
        "previewService": spec.blue_green.preview_service or "",
    }


def _fetchers(kube, namespace: str):
    def fetch_template(kind: str, name: str) -> Mapping[str, Any] | None:
        try:
            if kind == "ClusterAnalysisTemplate":
                return kube.custom.get_cluster_custom_object(GROUP, VERSION, "clusteranalysistemplates", name)
            return kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "analysistemplates", name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def read_secret(name: str, key: str) -> str | None:
        try:
            secret = kube.core.read_namespaced_secret(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        raw = (secret.data or {}).get(key)
        return base64.b64decode(raw).decode() if raw is not None else None

    return fetch_template, read_secret


async def run(ctl, body, spec: RolloutSpec, status: Mapping[str, Any], observed: core.Observed, now: dt.datetime):
    release = status.get("release") or {}
    key = release.get("analysisKey")
    if not key or release.get("abortedAt"):
        return observed, {}
    run_name = key.split(":")[1]
    names = list((spec.analysis or {}).get(run_name) or [])
    color = release["color"]
    fetch_template, read_secret = _fetchers(ctl.kube, body["metadata"]["namespace"])
    from .controller import SETTINGS

    loop = asyncio.get_running_loop()
    try:
        metrics = await ctl.call(amodel.parse_metrics, spec.analysis, names, fetch_template)
        provider = await ctl.call(
            aprom.provider_from_spec, (spec.analysis or {}).get("prometheus") or {}, read_secret, SETTINGS.prometheus_address
        )
        prev = status.get("analysisRun") if (status.get("analysisRun") or {}).get("key") == key else None
        due = arun.due(prev, key, metrics, now)
        env = variables(body, spec, status, color)
        measured = await asyncio.gather(
            *(loop.run_in_executor(ctl.query_pool, aprom.measure, provider, m, env, key, color, now) for m in due)
        )
    except amodel.AnalysisConfigError as e:
        verdict = core.AnalysisRun(key=key, verdict="Failed", message=str(e), error=str(e))
        return dataclasses.replace(observed, analysis=verdict), {}
    state, verdict = arun.advance(prev, key, metrics, list(measured), now)
    extra = {"analysisRun": state}
    if measured:
        extra["analysis"] = arun.record(status.get("analysis"), list(measured), limit=HISTORY_LIMIT)
    return dataclasses.replace(observed, analysis=verdict), extra
