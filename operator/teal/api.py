"""The Rollout API as Python sees it: constants, and a parsed, defaulted model of `spec`.

The CRD in `crds/rollouts.yaml` is the source of truth for validation at apply time;
`tests/test_api_schema.py` checks that every field parsed here exists in the CRD schema
(and the reverse), so the two cannot drift apart silently.

Parsing never raises on well-formed objects the apiserver accepted; `SpecError` is raised
for what only the operator can see (for example a duration that the schema's pattern let
through but that makes no sense), and ends up in a status condition.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

GROUP = "teal.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL = "rollouts"
KIND = "Rollout"

LABEL_ROLLOUT = "teal.dev/rollout"
LABEL_COLOR = "teal.dev/color"
ANNOTATION_HASH = "teal.dev/template-hash"
ANNOTATION_REVISION = "teal.dev/revision"
# On each Service and route a Rollout steers: "<rollout name>/<uid>" (same namespace).
# A second Rollout naming the object is refused (reason ServiceClaimed) while the owner
# exists and still names it; written and removed with a resourceVersion guard.
ANNOTATION_CLAIMED_BY = "teal.dev/claimed-by"
# `kubectl teal restart`: on the Rollout, the time asked; on the stable colour's pod template,
# the time honoured (a new value there makes the Deployment replace its pods; no release).
ANNOTATION_RESTART_AT = "teal.dev/restart-at"

ROUTER_KINDS = ("gatewayAPI", "nginx", "istio")  # spec.strategy.blueGreen.trafficRouting.<kind>
ROUTE_OBJECT_KIND = {"gatewayAPI": "HTTPRoute", "nginx": "Ingress", "istio": "VirtualService"}

BLUE = "blue"
GREEN = "green"
COLORS = (BLUE, GREEN)


def other(color: str) -> str:
    return GREEN if color == BLUE else BLUE


class SpecError(ValueError):
    """A spec the apiserver accepted but the operator cannot act on."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Every duration of a spec (a pause, an analysis interval or delay, a query timeout) is at
# most 30 days: the CRD schema says so (crds/rollouts.yaml, `720h`), and the parser again
# for what the schema misses (an older CRD, a plain number), so that no date overflows.
MAX_DURATION_S = 30 * 24 * 3600.0


def parse_duration(value: Any, field: str, maximum: float = MAX_DURATION_S) -> float:
    """'30s', '2m', '1h30m', '500ms' or a plain number of seconds -> seconds (at most `maximum`)."""
    if value is None:
        raise SpecError(field, "a duration is required")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not value >= 0:  # also NaN
            raise SpecError(field, f"duration must not be negative, got {value}")
        seconds = float(value)
    else:
        text = str(value).strip()
        if not _DURATION.match(text):
            raise SpecError(field, f"{text!r} is not a duration like 30s, 2m or 1h30m")
        seconds = sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(text))
    if seconds > maximum:
        raise SpecError(field, f"{value!r} is longer than the limit of {maximum / 3600:g}h")
    return seconds


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable short hash of a pod template (key order does not matter)."""
    blob = json.dumps(template, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


# ---------------------------------------------------------------- spec model


@dataclasses.dataclass(frozen=True)
class Step:
    set_weight: int | None = None
    pause: bool = False
    pause_seconds: float | None = None  # None with pause=True: wait for promote

    def describe(self) -> str:
        if self.set_weight is not None:
            return f"setWeight {self.set_weight}"
        if self.pause_seconds is None:
            return "pause until promoted"
        return f"pause {self.pause_seconds:g}s"


@dataclasses.dataclass(frozen=True)
class TrafficRouting:
    kind: str  # "gatewayAPI" | "nginx" | "istio"
    name: str  # HTTPRoute, Ingress or VirtualService name
    routes: tuple[str, ...] = ()  # istio: named HTTP routes to manage (empty: all)
    port: int | None = None  # backend port for the per-colour Services


@dataclasses.dataclass(frozen=True)
class BlueGreen:
    active_services: tuple[str, ...]
    preview_service: str | None = None
    preview_replicas: int | None = None
    auto_promote: bool = True
    scale_down_delay_seconds: int = 30
    abort_scale_down_delay_seconds: int = 30
    progress_deadline_seconds: int = 600
    traffic_routing: TrafficRouting | None = None
    steps: tuple[Step, ...] = ()


@dataclasses.dataclass(frozen=True)
class WorkloadRef:
    name: str
    kind: str = "Deployment"
    api_version: str = "apps/v1"


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    replicas: int
    match_labels: Mapping[str, str]
    template: Mapping[str, Any] | None
    workload_ref: WorkloadRef | None
    blue_green: BlueGreen
    paused: bool = False
    revision_history_limit: int = 10
    analysis: Mapping[str, Any] | None = None  # parsed by teal.analysis
    release_policy: ReleasePolicyRef | None = None

    @property
    def weighted(self) -> bool:
        return self.blue_green.traffic_routing is not None


@dataclasses.dataclass(frozen=True)
class ReleasePolicyRef:
    """spec.releasePolicy: which release policies apply to this Rollout (teal.policy_kube).
    `policies`: only these ReleasePolicies of its namespace (whatever their rolloutSelector);
    `exclude`: not these ReleasePolicies or ClusterReleasePolicies. A freeze, and any
    ClusterReleasePolicy, is left out only when that policy says allowRolloutOptOut."""

    policies: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()


def parse_release_policy(raw: Any) -> ReleasePolicyRef | None:
    field = "spec.releasePolicy"
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError(field, "must be an object")
    names = {}
    for key in ("policies", "exclude"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(n, str) and n for n in value)):
            raise SpecError(f"{field}.{key}", "must be a list of policy names")
        names[key] = value
    if names["policies"] is not None and names["exclude"]:
        raise SpecError(field, "give policies or exclude, not both")
    pol = tuple(names["policies"]) if names["policies"] is not None else None
    return ReleasePolicyRef(policies=pol, exclude=tuple(names["exclude"] or ()))


def _step(raw: Mapping[str, Any], i: int) -> Step:
    field = f"spec.strategy.blueGreen.steps[{i}]"
    if "setWeight" in raw:
        return Step(set_weight=int(raw["setWeight"]))
    if "pause" in raw:
        pause = raw.get("pause") or {}
        if pause.get("duration") is None:
            return Step(pause=True)
        return Step(pause=True, pause_seconds=parse_duration(pause["duration"], field + ".pause.duration"))
    raise SpecError(field, "a step needs setWeight or pause")


def parse_traffic_routing(raw: Mapping[str, Any] | None) -> TrafficRouting | None:
    if not raw:
        return None
    field = "spec.strategy.blueGreen.trafficRouting"
    kinds = [k for k in ROUTER_KINDS if raw.get(k)]
    if len(kinds) != 1:
        raise SpecError(field, "set exactly one of gatewayAPI, nginx, istio")
    kind = kinds[0]
    body = raw[kind]
    name = {"gatewayAPI": "httpRoute", "nginx": "ingress", "istio": "virtualService"}[kind]
    if not body.get(name):
        raise SpecError(f"{field}.{kind}.{name}", "is required")
    return TrafficRouting(
        kind=kind,
        name=body[name],
        routes=tuple(body.get("routes") or ()),
        port=body.get("port"),
    )


def parse_spec(spec: Mapping[str, Any]) -> RolloutSpec:
    strategy = (spec.get("strategy") or {}).get("blueGreen")
    if not strategy:
        raise SpecError("spec.strategy.blueGreen", "is required")
    active = tuple(strategy.get("activeServices") or ())
    if not active:
        raise SpecError("spec.strategy.blueGreen.activeServices", "name at least one Service")
    steps = tuple(_step(s, i) for i, s in enumerate(strategy.get("steps") or ()))
    weights = [s.set_weight for s in steps if s.set_weight is not None]
    if any(b < a for a, b in zip(weights, weights[1:], strict=False)):
        raise SpecError("spec.strategy.blueGreen.steps", f"setWeight values must not decrease, got {weights}")
    routing = parse_traffic_routing(strategy.get("trafficRouting"))
    if steps and any(s.set_weight not in (None, 0, 100) for s in steps) and routing is None:
        raise SpecError(
            "spec.strategy.blueGreen.steps",
            "setWeight between 0 and 100 needs trafficRouting (a Service selector can only switch all at once)",
        )
    bg = BlueGreen(
        active_services=active,
        preview_service=strategy.get("previewService") or None,
        preview_replicas=strategy.get("previewReplicas"),
        auto_promote=bool(strategy.get("autoPromote", True)),
        scale_down_delay_seconds=int(strategy.get("scaleDownDelaySeconds", 30)),
        abort_scale_down_delay_seconds=int(strategy.get("abortScaleDownDelaySeconds", 30)),
        progress_deadline_seconds=int(strategy.get("progressDeadlineSeconds", 600)),
        traffic_routing=routing,
        steps=steps,
    )
    ref = spec.get("workloadRef")
    selector = spec.get("selector") or {}
    return RolloutSpec(
        replicas=int(spec.get("replicas", 1)),
        match_labels=dict(selector.get("matchLabels") or {}),
        template=spec.get("template"),
        workload_ref=WorkloadRef(
            name=ref["name"], kind=ref.get("kind", "Deployment"), api_version=ref.get("apiVersion", "apps/v1")
        )
        if ref
        else None,
        blue_green=bg,
        paused=bool(spec.get("paused", False)),
        revision_history_limit=int(spec.get("revisionHistoryLimit", 10)),
        analysis=spec.get("analysis"),
        release_policy=parse_release_policy(spec.get("releasePolicy")),
    )


def steered_objects(spec: Mapping[str, Any] | None) -> list[str]:
    """ "Service/<name>" and "<RouteKind>/<name>" for what a raw spec steers (read leniently:
    also for a spec that does not parse, so claims can be kept and released)."""
    bg = ((spec or {}).get("strategy") or {}).get("blueGreen") if isinstance(spec, Mapping) else None
    if not isinstance(bg, Mapping):
        return []
    names = list(bg.get("activeServices") or []) if isinstance(bg.get("activeServices"), list) else []
    if bg.get("previewService"):
        names.append(bg["previewService"])
    out = [f"Service/{n}" for n in names if isinstance(n, str) and n]
    routing = bg.get("trafficRouting")
    if isinstance(routing, Mapping):
        for kind, field in (("gatewayAPI", "httpRoute"), ("nginx", "ingress"), ("istio", "virtualService")):
            body = routing.get(kind)
            if isinstance(body, Mapping) and isinstance(body.get(field), str) and body[field]:
                out.append(f"{ROUTE_OBJECT_KIND[kind]}/{body[field]}")
    return sorted(set(out))
