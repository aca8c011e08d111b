"""The analysis model: metrics, query templating and the verdict of one measurement.

Everything here is pure (no I/O, no clock): `parse_metrics` turns `spec.analysis` (and
the AnalysisTemplates it references, fetched through a callback) into `Metric`s,
`render` fills a PromQL template with the Rollout's variables, and `judge` turns a
query result into a `Measurement` with a verdict and a human message.

How a measurement is judged (exactly one mode per metric):
- thresholdRange {min, max}: Failed when value < min or value > max;
- successCondition / failureCondition (see teal.analysis.expr): failure true -> Failed,
  success true -> Successful; with only a successCondition a false one is Failed, with
  only a failureCondition a false one is Successful, with both and neither true the
  measurement is Inconclusive. Conditions may use `baseline` when the metric has one;
- baseline (+ maxRatio, default 1, and floor, default 0): Successful iff
  value <= baseline * maxRatio + floor.

Data that is not a number is never a pass by accident:
- an empty result or NaN (e.g. 0/0 when there were no requests) follows noData:
  inconclusive (default) -> Inconclusive, fail -> Failed, pass -> Successful. The same
  policy applies when the *baseline* query has no data;
- +Inf/-Inf are compared as numbers (x/0 with x > 0 is as bad as it gets), except that
  an infinite baseline makes the comparison meaningless -> Inconclusive;
- a provider error (Prometheus down, timeout, several series, ...) -> Error; the run
  turns errors into Inconclusive past consecutiveErrorLimit, never into a pass.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ..api import SpecError, parse_duration
from ..core import iso
from .expr import Condition, ExprError, compile_condition

__all__ = [
    "SUCCESSFUL",
    "FAILED",
    "INCONCLUSIVE",
    "ERROR",
    "NO_DATA_POLICIES",
    "VARIABLES",
    "TEMPLATE_KINDS",
    "AnalysisConfigError",
    "Metric",
    "QueryResult",
    "Measurement",
    "parse_metrics",
    "render",
    "with_color",
    "pod_regex",
    "pod_name",
    "POD_NAME_CHARS",
    "check_promql",
    "judge",
]

SUCCESSFUL = "Successful"
FAILED = "Failed"
INCONCLUSIVE = "Inconclusive"
ERROR = "Error"

NO_DATA_POLICIES = ("inconclusive", "fail", "pass")
VARIABLES = (
    "namespace",
    "name",
    "color",
    "stableColor",
    "revision",
    "stableRevision",
    "activeService",
    "previewService",
    "deployment",
    "podRegex",
    "stableDeployment",
    "stablePodRegex",
)
TEMPLATE_KINDS = ("AnalysisTemplate", "ClusterAnalysisTemplate")

DEFAULT_INTERVAL_S = 30.0
DEFAULT_COUNT = 1
MAX_COUNT = 1000  # measurements per run; crds/rollouts.yaml and analysistemplates.yaml say the same
DEFAULT_CONSECUTIVE_ERROR_LIMIT = 4


class AnalysisConfigError(ValueError):
    """Analysis configuration the operator cannot act on; the message names what is wrong."""

    def __init__(self, message: str, *, metric: str | None = None, template: str | None = None, field: str | None = None):
        self.detail = message
        self.metric = metric
        self.template = template
        self.field = field
        super().__init__(self._text())

    def _text(self) -> str:
        where = []
        if self.metric:
            where.append(f"metric {self.metric!r}")
        if self.template:
            where.append(f"template {self.template}")
        if self.field:
            where.append(f"field {self.field}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.detail}" if prefix else self.detail

    def within(self, *, metric: str | None = None, template: str | None = None, field: str | None = None) -> AnalysisConfigError:
        """The same error with missing context filled in."""
        return AnalysisConfigError(
            self.detail,
            metric=self.metric or metric,
            template=self.template or template,
            field=self.field or field,
        )


@functools.lru_cache(maxsize=512)
def _condition(source: str, with_baseline: bool) -> Condition:
    allowed = frozenset({"result", "baseline"} if with_baseline else {"result"})
    return compile_condition(source, allowed)


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    query: str
    baseline: str | None = None
    threshold_min: float | None = None
    threshold_max: float | None = None
    success_condition: str | None = None
    failure_condition: str | None = None
    max_ratio: float | None = None
    floor: float = 0.0
    failure_limit: int = 0
    inconclusive_limit: int = 0
    consecutive_error_limit: int = DEFAULT_CONSECUTIVE_ERROR_LIMIT
    no_data: str = "inconclusive"
    dry_run: bool = False
    interval_s: float = DEFAULT_INTERVAL_S
    count: int = DEFAULT_COUNT
    initial_delay_s: float = 0.0
    args: Mapping[str, str] = dataclasses.field(default_factory=dict)
    template: str | None = None  # "AnalysisTemplate/name" when it came from a template

    def __post_init__(self) -> None:
        def err(field: str, message: str) -> AnalysisConfigError:
            return AnalysisConfigError(message, metric=self.name, template=self.template, field=field)

        if not self.name:
            raise AnalysisConfigError("a metric needs a name", field="name")
        if not isinstance(self.query, str) or not self.query.strip():
            raise err("query", "the query is empty")
        conditions = self.success_condition is not None or self.failure_condition is not None
        threshold = self.threshold_min is not None or self.threshold_max is not None
        ratio = self.baseline is not None and not conditions
        modes = [
            n
            for n, on in (("thresholdRange", threshold), ("successCondition/failureCondition", conditions), ("baseline", ratio))
            if on
        ]
        if len(modes) != 1:
            what = " and ".join(modes) if modes else "none"
            raise err(
                "thresholdRange",
                f"set exactly one of thresholdRange, successCondition/failureCondition, or baseline (got {what})",
            )
        if threshold and self.baseline is not None:
            raise err("baseline", "a baseline is judged by maxRatio/floor or by conditions, not by thresholdRange")
        if self.threshold_min is not None and self.threshold_max is not None and self.threshold_min > self.threshold_max:
            raise err("thresholdRange", f"min {self.threshold_min:g} is greater than max {self.threshold_max:g}")
        for f in ("threshold_min", "threshold_max", "max_ratio", "floor"):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)):
                raise err(_camel(f), f"{v!r} is not a finite number")  # NaN/Inf: JSON cannot carry them either
        if (self.max_ratio is not None or self.floor) and not ratio:
            raise err("maxRatio", "maxRatio and floor need a baseline query (and no conditions)")
        if self.max_ratio is not None and self.max_ratio <= 0:
            raise err("maxRatio", f"must be greater than 0, got {self.max_ratio:g}")
        if self.floor < 0:
            raise err("floor", f"must not be negative, got {self.floor:g}")
        for field, source in (("successCondition", self.success_condition), ("failureCondition", self.failure_condition)):
            if source is not None:
                try:
                    _condition(source, self.baseline is not None)
                except ExprError as e:
                    raise err(field, str(e)) from None
        if self.no_data not in NO_DATA_POLICIES:
            raise err("noData", f"{self.no_data!r} is not one of {', '.join(NO_DATA_POLICIES)}")
        for f in ("failure_limit", "inconclusive_limit", "consecutive_error_limit", "count"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise err(_camel(f), f"must be a whole number >= 0, got {v!r}")
        if self.count < 1:
            raise err("count", "must be at least 1")
        if self.count > MAX_COUNT:
            raise err("count", f"must be at most {MAX_COUNT} (the CRD's limit), got {self.count}")
        if self.failure_limit >= self.count:
            raise err(
                "failureLimit",
                f"failureLimit {self.failure_limit} >= count {self.count}: the metric could never fail "
                "(use dryRun: true to only observe it)",
            )
        if not (self.interval_s > 0):
            raise err("interval", f"must be positive, got {self.interval_s!r}")
        if not (self.initial_delay_s >= 0):
            raise err("initialDelay", f"must not be negative, got {self.initial_delay_s!r}")

    @property
    def ratio(self) -> float:
        return 1.0 if self.max_ratio is None else float(self.max_ratio)

    def describe(self) -> str:
        """How the metric is judged, e.g. "max 0.01" or "<= 1.2 x baseline + 0.001"."""
        if self.success_condition or self.failure_condition:
            parts = []
            if self.success_condition:
                parts.append(f"success when `{self.success_condition}`")
            if self.failure_condition:
                parts.append(f"failure when `{self.failure_condition}`")
            return ", ".join(parts)
        if self.baseline is not None:
            return f"<= {_fmt(self.ratio)} x baseline + {_fmt(self.floor)}"
        if self.threshold_min is not None and self.threshold_max is not None:
            return f"within [{_fmt(self.threshold_min)}, {_fmt(self.threshold_max)}]"
        if self.threshold_max is not None:
            return f"max {_fmt(self.threshold_max)}"
        return f"min {_fmt(self.threshold_min)}"


def _camel(snake: str) -> str:
    special = {"threshold_min": "thresholdRange.min", "threshold_max": "thresholdRange.max"}
    if snake in special:
        return special[snake]
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


def _fmt(v: float | None) -> str:
    if v is None:
        return "none"
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-4:
        return f"{v:.4g}"
    return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1 else f"{v:.4g}"


# ---------------------------------------------------------------- templating

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)?)\s*\}\}")


# How Kubernetes names a Deployment's pods (k8s.io/kubernetes v1.34, pinned in hack/versions.env):
# ReplicaSet = "<deployment>-<pod-template-hash>" (deployment/sync.go generateReplicaSetName), the hash
# being rand.SafeEncodeString of a decimal uint32 (controller.ComputeHash: 1-10 digits, each mapped to
# one of 10 characters); pod = generateName "<replicaset>-" cut to 58 characters, plus 5 characters of
# rand.String (apiserver/pkg/storage/names: maxNameLength 63 - randomLength 5).
POD_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand alphanums
_HASH_CHARS = "".join(sorted({POD_NAME_CHARS[ord(d) % len(POD_NAME_CHARS)] for d in "0123456789"}))
_MAX_HASH = 10  # digits of the largest uint32
_MAX_GENERATED_PREFIX = 58


def colour_deployment(rollout: str, color: str) -> str:
    """The Deployment Teal runs a colour in (the same formula as teal.kube.deployment_name)."""
    return f"{rollout}-{color}"


def pod_name(deployment: str, template_hash: int, suffix: str) -> str:
    """The name Kubernetes gives a pod of `deployment` (for tests and fakes; see above)."""
    if not 0 <= template_hash < 2**32 or len(suffix) != 5 or set(suffix) - set(POD_NAME_CHARS):
        raise ValueError(f"not a uint32 hash and a 5-character suffix of {POD_NAME_CHARS!r}: {template_hash!r}, {suffix!r}")
    encoded = "".join(POD_NAME_CHARS[ord(d) % len(POD_NAME_CHARS)] for d in str(template_hash))
    return f"{deployment}-{encoded}-"[:_MAX_GENERATED_PREFIX] + suffix


def pod_regex(deployment: str) -> str:
    """An RE2 regex that matches exactly the names of the pods of Deployment `deployment`.

    Prometheus anchors `=~` regexes at both ends; the hash and random suffix use only
    the characters Kubernetes draws them from and contain no dash, so the pods of
    `app-blue-x` never match the regex of `app-blue`. Dots become `[.]`: the value then
    needs no escaping inside any PromQL string. Deployment names longer than 45
    characters lose the tail of their pod names to the 58-character generateName
    limit; the regex follows that truncation exactly.
    """
    hash_, rand = f"[{_HASH_CHARS}]", f"[{POD_NAME_CHARS}]{{5}}"
    prefix = f"{deployment}-"
    room = _MAX_GENERATED_PREFIX - len(prefix)
    if room > _MAX_HASH:
        tail = f"{hash_}{{1,{_MAX_HASH}}}-"
    elif room > 1:  # "<hash>-" cut to `room` characters
        tail = f"(?:{hash_}{{1,{room - 1}}}-|{hash_}{{{room}}})"
    elif room == 1:
        tail = hash_
    else:
        prefix, tail = prefix[:_MAX_GENERATED_PREFIX], ""
    literal = "".join(c if c.isalnum() or c == "-" else f"[{c}]" for c in prefix)
    return literal + tail + rand


def with_color(variables: Mapping[str, str | None], color: str | None) -> dict[str, str | None]:
    """The variables with {{color}}, {{deployment}} and {{podRegex}} for `color`, and
    {{stableDeployment}}, {{stablePodRegex}} for {{stableColor}} (None where unknown)."""
    env = dict(variables)
    name = env.get("name")

    def names(c: str | None) -> tuple[str | None, str | None]:
        deployment = colour_deployment(name, c) if name and c else None
        return deployment, (pod_regex(deployment) if deployment else None)

    env["color"] = color
    env["deployment"], env["podRegex"] = names(color)
    env["stableDeployment"], env["stablePodRegex"] = names(env.get("stableColor"))
    return env


def placeholders(query: str) -> list[str]:
    """The variable names a query template uses, in order of first use."""
    seen: dict[str, None] = {}
    for m in _PLACEHOLDER.finditer(query):
        seen.setdefault(m.group(1), None)
    return list(seen)


def render(query: str, variables: Mapping[str, str | None]) -> str:
    """Fill {{namespace}}, {{color}}, ..., {{args.X}}; unknown or unset ones are config errors.

    Values are inserted as they are (args may be PromQL fragments); Kubernetes names and
    colours need no escaping inside a PromQL string.
    """
    stripped = _PLACEHOLDER.sub("", query)
    if "{{" in stripped or "}}" in stripped:
        bad = re.search(r"\{\{[^}]*\}?\}?|\}\}", stripped)
        raise AnalysisConfigError(
            f"malformed placeholder {bad.group(0) if bad else '{{'!r} in the query; write {{{{name}}}} or {{{{args.NAME}}}}",
            field="query",
        )

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in variables:
            if name.startswith("args."):
                raise AnalysisConfigError(
                    f"the query uses {{{{{name}}}}} but no argument {name[5:]!r} is given "
                    "(set it in the metric's args, the template's args or spec.analysis.args)",
                    field="args",
                )
            known = ", ".join(f"{{{{{v}}}}}" for v in VARIABLES)
            raise AnalysisConfigError(
                f"unknown variable {{{{{name}}}}} in the query (known: {known}, {{{{args.NAME}}}})", field="query"
            )
        value = variables[name]
        if value is None:
            raise AnalysisConfigError(f"the query uses {{{{{name}}}}} but it has no value for this Rollout", field="query")
        return str(value)

    return _PLACEHOLDER.sub(sub, query)


_PAIRS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {v: k for k, v in _PAIRS.items()}


def check_promql(query: str) -> None:
    """A cheap syntactic check: non-empty, balanced brackets/braces/parentheses and quotes.

    Prometheus's own parser is the real check (it answers 'bad_data', which `measure`
    turns into an AnalysisConfigError too); this one catches the obvious mistakes early.
    """
    if not query or not query.strip():
        raise AnalysisConfigError("the query is empty after templating", field="query")
    stack: list[tuple[str, int]] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c in "\"'`":
            j = i + 1
            while j < n and query[j] != c:
                if query[j] == "\\" and c != "`":
                    j += 1
                elif query[j] == "\n" and c != "`":
                    break
                j += 1
            if j >= n or query[j] != c:
                raise AnalysisConfigError(
                    f"unterminated string starting at character {i + 1}: {_excerpt(query, i)}", field="query"
                )
            i = j + 1
            continue
        if c == "#":  # a comment runs to the end of the line
            nl = query.find("\n", i)
            i = n if nl < 0 else nl + 1
            continue
        if c in _PAIRS:
            stack.append((c, i))
        elif c in _CLOSERS:
            if not stack or stack[-1][0] != _CLOSERS[c]:
                raise AnalysisConfigError(f"unexpected {c!r} at character {i + 1}: {_excerpt(query, i)}", field="query")
            stack.pop()
        i += 1
    if stack:
        c, at = stack[-1]
        raise AnalysisConfigError(f"{c!r} at character {at + 1} is never closed: {_excerpt(query, at)}", field="query")
    if not re.sub(r"#[^\n]*", "", query).strip():
        raise AnalysisConfigError("the query has nothing but comments", field="query")


def _excerpt(text: str, at: int, width: int = 20) -> str:
    lo, hi = max(0, at - width), min(len(text), at + width)
    return ("..." if lo else "") + text[lo:hi].replace("\n", " ") + ("..." if hi < len(text) else "")


# ---------------------------------------------------------------- parsing spec.analysis

_JUDGEMENT_MODES = ("thresholdRange", "successCondition", "failureCondition", "baseline")
_JUDGEMENT_FIELDS = (*_JUDGEMENT_MODES, "maxRatio", "floor")
_METRIC_FIELDS = (
    "query",
    *_JUDGEMENT_FIELDS,
    "failureLimit",
    "inconclusiveLimit",
    "consecutiveErrorLimit",
    "noData",
    "dryRun",
    "interval",
    "count",
    "initialDelay",
    "args",
)

PLACEHOLDER_VALUES = with_color(
    {
        "namespace": "default",
        "name": "rollout",
        "stableColor": "blue",
        "revision": "2",
        "stableRevision": "1",
        "activeService": "service",
        "previewService": "service-preview",
    },
    "green",
)


def _args(raw: Any, field: str, allow_missing: bool) -> dict[str, str | None]:
    """[{name, value}] (or a plain mapping) -> {name: value}; value None = required arg."""
    out: dict[str, str | None] = {}
    if raw is None:
        return out
    if not isinstance(raw, (Mapping, list, tuple)):
        raise AnalysisConfigError(f"must be a list of {{name, value}}, got {type(raw).__name__}", field=field)
    if isinstance(raw, Mapping):
        items = list(raw.items())
    else:
        if not all(isinstance(a, Mapping) for a in raw):
            raise AnalysisConfigError("must be a list of {name, value}", field=field)
        items = [(a.get("name"), a.get("value")) for a in raw]
    for name, value in items:
        if not name or not isinstance(name, str):
            raise AnalysisConfigError("every argument needs a name", field=field)
        if value is None and not allow_missing:
            raise AnalysisConfigError(f"argument {name!r} has no value", field=field)
        if isinstance(value, bool):
            value = "true" if value else "false"
        out[name] = None if value is None else str(value)
    return out


def _duration(value: Any, field: str) -> float:
    try:
        return parse_duration(value, field)
    except SpecError as e:
        raise AnalysisConfigError(e.message, field=field) from None


def _number(raw: Mapping[str, Any], key: str, default: Any, field: str) -> Any:
    v = raw.get(key, default)
    if v is None or v is default:
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            v = float(v)  # the apiserver may hand over "0.01" from an int-or-string field
        except (TypeError, ValueError):
            raise AnalysisConfigError(f"{v!r} is not a number", field=field) from None
    return v


def _int(raw: Mapping[str, Any], key: str, default: int, field: str) -> int:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise AnalysisConfigError(f"{v!r} is not a whole number", field=field)
    return v


def _metric_from(
    raw: Mapping[str, Any], name: str, args: Mapping[str, str], defaults: Mapping[str, Any], template: str | None
) -> Metric:
    threshold = raw.get("thresholdRange")
    if threshold is not None and not isinstance(threshold, Mapping):
        raise AnalysisConfigError("must be {min, max}", metric=name, template=template, field="thresholdRange")
    threshold = threshold or {}
    if raw.get("thresholdRange") is not None and threshold.get("min") is None and threshold.get("max") is None:
        raise AnalysisConfigError("set min, max or both", metric=name, template=template, field="thresholdRange")
    no_data = raw.get("noData", "inconclusive")
    if isinstance(no_data, str):
        no_data = no_data.strip().lower()
    return Metric(
        name=name,
        query=raw.get("query") or "",
        baseline=raw.get("baseline"),
        threshold_min=_number(threshold, "min", None, "thresholdRange.min"),
        threshold_max=_number(threshold, "max", None, "thresholdRange.max"),
        success_condition=raw.get("successCondition"),
        failure_condition=raw.get("failureCondition"),
        max_ratio=_number(raw, "maxRatio", None, "maxRatio") if raw.get("baseline") is not None or "maxRatio" in raw else None,
        floor=float(_number(raw, "floor", 0.0, "floor")),
        failure_limit=_int(raw, "failureLimit", 0, "failureLimit"),
        inconclusive_limit=_int(raw, "inconclusiveLimit", 0, "inconclusiveLimit"),
        consecutive_error_limit=_int(raw, "consecutiveErrorLimit", DEFAULT_CONSECUTIVE_ERROR_LIMIT, "consecutiveErrorLimit"),
        no_data=no_data,
        dry_run=bool(raw.get("dryRun", False)),
        interval_s=_duration(raw["interval"], "interval") if raw.get("interval") is not None else defaults["interval_s"],
        count=_int(raw, "count", defaults["count"], "count"),
        initial_delay_s=_duration(raw["initialDelay"], "initialDelay")
        if raw.get("initialDelay") is not None
        else defaults["initial_delay_s"],
        args=dict(args),
        template=template,
    )


def parse_metrics(
    analysis_spec: Mapping[str, Any] | None,
    names: list[str],
    fetch_template: Callable[[str, str], Mapping[str, Any] | None],
) -> list[Metric]:
    """The metrics `names` (e.g. spec.analysis.prePromotion) resolved into `Metric`s.

    `fetch_template(kind, name)` returns an AnalysisTemplate (from the Rollout's namespace)
    or a ClusterAnalysisTemplate, as the whole object or just its spec, or None if absent.
    Arguments: spec.analysis.args < the template's own values < the metric's args; a
    template argument without a value must be given by one of the others.
    Fields: a metric's own fields override its template's; when it sets any of
    thresholdRange, successCondition, failureCondition or baseline, the template's way of
    judging (those and maxRatio/floor) is replaced as a whole. spec.analysis interval,
    count and initialDelay apply where neither sets them.
    Raises AnalysisConfigError naming the metric, template and field.
    """
    analysis = analysis_spec or {}
    try:
        defaults = {
            "interval_s": _duration(analysis["interval"], "spec.analysis.interval")
            if analysis.get("interval") is not None
            else DEFAULT_INTERVAL_S,
            "count": _int(analysis, "count", DEFAULT_COUNT, "spec.analysis.count"),
            "initial_delay_s": _duration(analysis["initialDelay"], "spec.analysis.initialDelay")
            if analysis.get("initialDelay") is not None
            else 0.0,
        }
        rollout_args = _args(analysis.get("args"), "spec.analysis.args", allow_missing=False)
    except AnalysisConfigError as e:
        raise e.within(field="spec.analysis") from None

    by_name: dict[str, Mapping[str, Any]] = {}
    for i, raw in enumerate(analysis.get("metrics") or []):
        name = raw.get("name") if isinstance(raw, Mapping) else None
        if not name:
            raise AnalysisConfigError("every metric needs a name", field=f"spec.analysis.metrics[{i}].name")
        if name in by_name:
            raise AnalysisConfigError("two metrics have this name", metric=name, field="spec.analysis.metrics")
        by_name[name] = raw

    out: list[Metric] = []
    for name in dict.fromkeys(names):
        raw = by_name.get(name)
        if raw is None:
            known = ", ".join(sorted(by_name)) or "none"
            raise AnalysisConfigError(
                f"metric {name!r} is named for analysis but not defined in spec.analysis.metrics (defined: {known})",
                field="spec.analysis",
            )
        try:
            out.append(_resolve(raw, name, rollout_args, defaults, fetch_template))
        except AnalysisConfigError as e:
            raise e.within(metric=name) from None
    return out


def _resolve(
    raw: Mapping[str, Any],
    name: str,
    rollout_args: Mapping[str, str | None],
    defaults: Mapping[str, Any],
    fetch_template: Callable[[str, str], Mapping[str, Any] | None],
) -> Metric:
    ref = raw.get("templateRef")
    metric_args = _args(raw.get("args"), "args", allow_missing=False)
    template_label = None
    if ref:
        if raw.get("query"):
            raise AnalysisConfigError("set either query or templateRef, not both", field="templateRef")
        kind = ref.get("kind") or "AnalysisTemplate"
        tname = ref.get("name")
        if kind not in TEMPLATE_KINDS:
            raise AnalysisConfigError(f"kind {kind!r} is not one of {', '.join(TEMPLATE_KINDS)}", field="templateRef.kind")
        if not tname:
            raise AnalysisConfigError("templateRef needs a name", field="templateRef.name")
        template_label = f"{kind}/{tname}"
        obj = fetch_template(kind, tname)
        if obj is None:
            where = "in the Rollout's namespace" if kind == "AnalysisTemplate" else "in the cluster"
            raise AnalysisConfigError(f"{kind} {tname!r} not found {where}", field="templateRef")
        tspec = obj.get("spec", obj) if isinstance(obj, Mapping) else None
        if not isinstance(tspec, Mapping) or not tspec.get("query"):
            raise AnalysisConfigError("the template has no query", template=template_label, field="spec.query")
        template_args = _args(tspec.get("args"), "spec.args", allow_missing=True)
        overrides = {k: v for k, v in raw.items() if k in _METRIC_FIELDS and k not in ("query", "args")}
        base = {k: v for k, v in tspec.items() if k in _METRIC_FIELDS and k != "args"}
        if any(k in overrides for k in _JUDGEMENT_MODES):
            # the metric says how to judge: the template's way is replaced as a whole
            base = {k: v for k, v in base.items() if k not in _JUDGEMENT_FIELDS}
        merged = {**base, **overrides}
        args: dict[str, str | None] = {**rollout_args}
        for k, v in template_args.items():
            if v is not None or k not in args:
                args[k] = v
        args.update(metric_args)
        missing = sorted(k for k, v in args.items() if v is None)
        if missing:
            raise AnalysisConfigError(
                f"the template needs argument(s) {', '.join(missing)}: give them in the metric's args or spec.analysis.args",
                template=template_label,
                field="args",
            )
    else:
        if not raw.get("query"):
            raise AnalysisConfigError("set a query or a templateRef", field="query")
        merged = dict(raw)
        args = {**rollout_args, **metric_args}
    try:
        metric = _metric_from(merged, name, {k: v for k, v in args.items() if v is not None}, defaults, template_label)
        _check_query(metric)
    except AnalysisConfigError as e:
        raise e.within(metric=name, template=template_label) from None
    return metric


def _check_query(metric: Metric) -> None:
    variables: dict[str, str | None] = {**PLACEHOLDER_VALUES, **{f"args.{k}": v for k, v in metric.args.items()}}
    check_promql(render(metric.query, variables))
    if metric.baseline is not None:
        try:
            check_promql(render(metric.baseline, variables))
        except AnalysisConfigError as e:
            raise AnalysisConfigError(e.detail, field="baseline") from None


# ---------------------------------------------------------------- measurements


@dataclasses.dataclass(frozen=True)
class QueryResult:
    """What a provider answered for one instant query."""

    value: float | None = None
    empty: bool = False
    error: str | None = None
    error_kind: str | None = None  # bad_data | unavailable | timeout | multiple_series | http | tls | bad_response | ...

    @classmethod
    def of(cls, value: float) -> QueryResult:
        return cls(value=float(value))

    @classmethod
    def nothing(cls) -> QueryResult:
        return cls(empty=True)

    @classmethod
    def failure(cls, kind: str, message: str) -> QueryResult:
        return cls(error=message, error_kind=kind)

    @property
    def no_data(self) -> bool:
        return self.error is None and (self.empty or self.value is None or math.isnan(self.value))


@dataclasses.dataclass(frozen=True)
class Measurement:
    metric: str
    run: str  # the run key, e.g. "7:prePromotion"
    color: str
    value: float | None
    baseline: float | None
    verdict: str  # Successful | Failed | Inconclusive | Error
    query: str  # the resolved query
    message: str
    at: str  # ISO time
    dry_run: bool = False
    baseline_query: str | None = None
    error_kind: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able (NaN/Inf become null; the message keeps their text)."""
        d: dict[str, Any] = {
            "metric": self.metric,
            "run": self.run,
            "color": self.color,
            "value": _json_number(self.value),
            "verdict": self.verdict,
            "query": self.query,
            "message": self.message,
            "at": self.at,
        }
        if self.baseline is not None or self.baseline_query is not None:
            d["baseline"] = _json_number(self.baseline)
            d["baselineQuery"] = self.baseline_query
        if self.dry_run:
            d["dryRun"] = True
        if self.error_kind:
            d["errorKind"] = self.error_kind
        return d


def _json_number(v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(v)


def _no_data_text(r: QueryResult, what: str) -> str:
    if r.empty or r.value is None:
        return f"no data ({what} returned no series)"
    return f"no data ({what} returned NaN, e.g. 0/0 when there were no requests)"


class _Verdict(NamedTuple):
    verdict: str
    message: str
    value: float | None = None
    baseline: float | None = None
    error_kind: str | None = None


def judge(
    metric: Metric,
    value: QueryResult,
    baseline: QueryResult | None,
    query: str,
    key: str,
    color: str,
    now: dt.datetime,
    baseline_query: str | None = None,
) -> Measurement:
    """The verdict of one measurement (pure). See the module docstring for the rules."""
    data = _judge_data(metric, value, baseline)
    if isinstance(data, _Verdict):
        found = data
    elif metric.success_condition is not None or metric.failure_condition is not None:
        found = _judge_conditions(metric, *data)
    elif data[1] is not None:
        found = _judge_baseline(metric, data[0], data[1])
    else:
        found = _judge_threshold(metric, data[0])
    return Measurement(
        metric=metric.name,
        run=key,
        color=color,
        value=found.value,
        baseline=found.baseline,
        verdict=found.verdict,
        query=query,
        message=found.message,
        at=iso(now),
        dry_run=metric.dry_run,
        baseline_query=baseline_query,
        error_kind=found.error_kind,
    )


def _judge_data(metric: Metric, value: QueryResult, baseline: QueryResult | None) -> _Verdict | tuple[float, float | None]:
    """The verdict when the data decides (errors, no data, an infinite baseline), else (value, baseline)."""
    name = metric.name
    no_data_verdict = {"inconclusive": INCONCLUSIVE, "fail": FAILED, "pass": SUCCESSFUL}[metric.no_data]
    if value.error is not None:
        return _Verdict(
            ERROR, f"{name}: query failed ({value.error_kind or 'error'}): {value.error}", error_kind=value.error_kind
        )
    if value.no_data:
        return _Verdict(no_data_verdict, f"{name}: {_no_data_text(value, 'the query')}; noData={metric.no_data}", value.value)
    v = float(value.value)  # type: ignore[arg-type]
    if metric.baseline is None:
        return v, None
    if baseline is None:
        return _Verdict(ERROR, f"{name} {_fmt(v)}: the baseline was not measured", v)
    if baseline.error is not None:
        message = f"{name} {_fmt(v)}: baseline query failed ({baseline.error_kind or 'error'}): {baseline.error}"
        return _Verdict(ERROR, message, v, error_kind=baseline.error_kind)
    if baseline.no_data:
        message = f"{name} {_fmt(v)}: baseline {_no_data_text(baseline, 'the baseline query')}; noData={metric.no_data}"
        return _Verdict(no_data_verdict, message, v, baseline.value)
    b = float(baseline.value)  # type: ignore[arg-type]
    if math.isinf(b):
        return _Verdict(INCONCLUSIVE, f"{name} {_fmt(v)}: baseline is {_fmt(b)}, nothing to compare with", v, b)
    return v, b


def _judge_conditions(metric: Metric, v: float, b: float | None) -> _Verdict:
    env = {"result": v, "baseline": b}
    shown = f"{metric.name} {_fmt(v)}" + (f" (baseline {_fmt(b)})" if b is not None else "")
    success, failure = metric.success_condition, metric.failure_condition
    with_baseline = metric.baseline is not None
    try:
        if failure is not None and _condition(failure, with_baseline).evaluate(env):
            return _Verdict(FAILED, f"{shown}: failureCondition `{failure}` is true", v, b)
        if success is None:
            return _Verdict(SUCCESSFUL, f"{shown}: failureCondition `{failure}` is false", v, b)
        if _condition(success, with_baseline).evaluate(env):
            return _Verdict(SUCCESSFUL, f"{shown}: successCondition `{success}` is true", v, b)
        if failure is None:
            return _Verdict(FAILED, f"{shown}: successCondition `{success}` is false", v, b)
        return _Verdict(INCONCLUSIVE, f"{shown}: neither successCondition `{success}` nor failureCondition is true", v, b)
    except ExprError as e:
        return _Verdict(ERROR, f"{shown}: {e}", v, b, "condition")


def _judge_baseline(metric: Metric, v: float, b: float) -> _Verdict:
    limit = b * metric.ratio + metric.floor
    formula = f"{_fmt(metric.ratio)} x baseline {_fmt(b)} + {_fmt(metric.floor)} = {_fmt(limit)}"
    if v <= limit:
        return _Verdict(SUCCESSFUL, f"{metric.name} {_fmt(v)} <= {formula}", v, b)
    return _Verdict(FAILED, f"{metric.name} {_fmt(v)} > {formula}", v, b)


def _judge_threshold(metric: Metric, v: float) -> _Verdict:
    name, lo, hi = metric.name, metric.threshold_min, metric.threshold_max
    if lo is not None and v < lo:
        return _Verdict(FAILED, f"{name} {_fmt(v)} < min {_fmt(lo)}", v)
    if hi is not None and v > hi:
        return _Verdict(FAILED, f"{name} {_fmt(v)} > max {_fmt(hi)}", v)
    if lo is not None and hi is not None:
        return _Verdict(SUCCESSFUL, f"{name} {_fmt(v)} within [{_fmt(lo)}, {_fmt(hi)}]", v)
    if hi is not None:
        return _Verdict(SUCCESSFUL, f"{name} {_fmt(v)} <= max {_fmt(hi)}", v)
    return _Verdict(SUCCESSFUL, f"{name} {_fmt(v)} >= min {_fmt(lo)}", v)
