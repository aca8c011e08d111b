"""lint, the apiserver and the operator agree on generated manifests (issue 11, one source of validation).

Hypothesis draws Rollouts (and the AnalysisTemplate / ClusterAnalysisTemplate they name)
around the edges: int32 bounds and beyond, negatives, NaN/Inf, failureLimit against the
count that applies, durations at and over 720h, empty and missing fields, weighted steps,
unknown fields. Each example gets three verdicts:

* the apiserver: a server-side dry-run create of the YAML as written (Content-Type
  application/yaml, fieldValidation=Strict: what `kubectl create --dry-run=server` sends,
  decoded by the same sigs.k8s.io/yaml);
* the operator: what it parses from the object the apiserver would store (the dry run's
  answer, defaults applied): `parse_spec`, then every metric as its analysis would parse it
  (with the templates the apiserver would store), then the Prometheus settings;
* lint, in process, on the same text.

Lint must say "valid" exactly when the apiserver accepts the object and the operator
accepts what is stored. The apiserver and the operator must agree as well, except where
they cannot by design (KNOWN_GAPS below: a check CEL cannot express cheaply, or one that
needs another object). Those cases are caught by lint and by the operator at run time,
which refuses the release with the reason in the Rollout's status.

A bounded number of examples (derandomized, so every run checks the same ones).
"""

from __future__ import annotations

import functools
import json
import math
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teal import api, cli_lint
from teal.analysis import AnalysisConfigError, parse_metrics
from teal.analysis.prometheus import provider_settings

pytestmark = pytest.mark.cluster

EXAMPLES = 150
ABSENT: Any = object()  # a field left out

# Messages of checks only the operator (and lint, which runs its parsers) can make. Each
# names why the apiserver cannot: CEL has no parser for PromQL or for Teal's condition
# language, and a Rollout's metric is only complete with its template, which the
# apiserver does not read when it validates the Rollout.
KNOWN_GAPS = {
    "PromQL brackets and quotes (teal.analysis.model.check_promql; CEL regexes cannot count)": r"is never closed|unexpected '[)\]}]'|unterminated string|nothing but comments|malformed placeholder",
    "the condition language (teal.analysis.expr)": r"is not a valid expression|must be a comparison|is not allowed|unknown name",
    "an {{args.X}} that no args give (the apiserver does not join a metric with spec.analysis.args and the template)": r"the query uses \{\{args\.|needs argument\(s\)",
    "a metric completed by its template (judging mode, failureLimit against the template's count)": r"template (Cluster)?AnalysisTemplate/",
}

INT_EDGES = st.sampled_from([-(2**31) - 1, -1, 0, 1, 2, 100, 1000, 1001, 2**31 - 1, 2**31, 3_000_000_000, 2**63])
NUMBER_EDGES = st.sampled_from([0.0, -0.5, 1e308, -1e308, math.nan, math.inf, -math.inf, 5, 1e21, "0.1"])
DURATIONS = st.sampled_from([
    "0s", "0ms", "0.0001ms", "1.5h", "719h60m", "720h", "43200m", "2592000s", "2592000.001s", "720h0.000001ms",
    "720h0.0000001ms", "720h1ms", "721h", "99999999999999999999ms", "30", "", "30 s", "-1s", 30,
])  # fmt: skip
QUERIES = st.sampled_from([
    "  ", "", "sum(up", "up)", '"open', "{{nope}}", "{{ args.window }}", "{{args.missing}}", "up }}",
    "# only a comment", "{{stablePodRegex}}",
])  # fmt: skip
CONDITIONS = st.sampled_from(["", "result <", "baseline > result", "result", "result < 0.01 and result >= 0"])
PROMETHEUS = st.sampled_from([
    {"address": "http://"}, {"address": "prometheus:9090"}, {"address": "http:///x"}, {"address": "https://p/x"},
    {"address": "http://p", "bearerTokenSecretRef": {"name": "t"}, "basicAuthSecretRef": {"name": "b"}},
    {"address": "http://p", "caSecretRef": {"name": "ca"}, "insecureSkipVerify": True},
    {"address": "http://p", "bearerTokenSecretRef": {"name": "t"}, "headers": [{"name": "authorization", "value": "x"}]},
    {"address": "http://p", "headers": [{"name": "X-Scope-OrgID", "value": "a\nb"}]},
    {"address": "http://p", "headers": [{"name": "X Y", "value": "a"}]},
])  # fmt: skip
STEP = st.one_of(
    st.sampled_from([0, 1, 50, 99, 100, 101, -1, 2**31]).map(lambda w: {"setWeight": w}),
    DURATIONS.map(lambda d: {"pause": {"duration": d}}),
    st.sampled_from([{}, {"pause": {}}, {"setWeight": 50, "pause": {}}]),
)
ROUTING = st.sampled_from([
    {}, {"gatewayAPI": {"httpRoute": "r", "port": 2**31}}, {"gatewayAPI": {"httpRoute": "r"}, "nginx": {"ingress": "i"}},
    {"istio": {"virtualService": "v", "routes": [""]}},
])  # fmt: skip


def one_of_values(*values: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


# Every field: (its usual values, its edge values). An example takes edge values in at
# most two fields (by name; a metric field applies to every metric and template), so
# about a third of the examples are valid and each invalid one is invalid for a reason.
FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "replicas": (one_of_values(ABSENT, 1, 3), INT_EDGES | one_of_values(2.0, 1.5, "3")),
    "revisionHistoryLimit": (one_of_values(ABSENT, 10), INT_EDGES),
    "activeServices": (st.just(["app"]), one_of_values([], ["app", "app"], [""])),
    "previewService": (one_of_values(ABSENT, "app-preview"), one_of_values("app", "")),
    "previewReplicas": (one_of_values(ABSENT, 0, 1), INT_EDGES),
    "scaleDownDelaySeconds": (one_of_values(ABSENT, 30), INT_EDGES),
    "progressDeadlineSeconds": (one_of_values(ABSENT, 600), INT_EDGES),
    "steps": (
        one_of_values(ABSENT, [{"setWeight": 0}, {"pause": {"duration": "30s"}}, {"setWeight": 100}], [{"pause": {}}]),
        st.lists(STEP, min_size=1, max_size=4),
    ),
    "trafficRouting": (one_of_values(ABSENT, {"gatewayAPI": {"httpRoute": "r", "port": 8080}}), ROUTING),
    "unknown": (st.just(ABSENT), st.just(True)),
    "analysis.count": (one_of_values(ABSENT, 4), INT_EDGES),
    "analysis.interval": (one_of_values(ABSENT, "30s"), DURATIONS),
    "analysis.initialDelay": (one_of_values(ABSENT, "1m"), DURATIONS),
    "analysis.prometheus": (one_of_values(ABSENT, {"address": "http://prometheus:9090", "timeout": "10s"}), PROMETHEUS),
    "analysis.prePromotion": (st.just("all"), one_of_values(["unknown"], ["m", "m"], [])),
    "metric.name": (st.just("m"), one_of_values("", "-m", "m" * 63, "m" * 64, "m_1", "n", "y")),  # n, y: booleans to kubectl
    "metric.query": (one_of_values("up", 'sum(x{namespace="{{namespace}}",pod=~"{{podRegex}}"}[{{args.window}}])'), QUERIES),
    "metric.threshold": (
        one_of_values({"max": 0.01}, {"min": 0, "max": 1}),
        st.fixed_dictionaries({}, optional={"min": NUMBER_EDGES, "max": NUMBER_EDGES}),
    ),
    "metric.condition": (one_of_values(ABSENT, "result < 1"), CONDITIONS),
    "metric.baseline": (one_of_values(ABSENT, "up"), QUERIES | st.just("up")),
    "metric.maxRatio": (st.just(1.2), NUMBER_EDGES),
    "metric.floor": (one_of_values(ABSENT, 0.001), NUMBER_EDGES),
    "metric.failureLimit": (one_of_values(ABSENT, 0, 1), INT_EDGES),
    "metric.count": (one_of_values(ABSENT, 2, 3), INT_EDGES),
    "metric.inconclusiveLimit": (one_of_values(ABSENT, 1), INT_EDGES),
    "metric.interval": (one_of_values(ABSENT, "10s"), DURATIONS),
    "metric.initialDelay": (one_of_values(ABSENT, "0s"), DURATIONS),
    "metric.noData": (one_of_values(ABSENT, "fail", "pass"), one_of_values("Fail", "ignore", "")),
    "metric.unknown": (st.just(ABSENT), st.just(1)),
    "template.args": (one_of_values(ABSENT, [{"name": "window", "value": "1m"}]), one_of_values([{"name": "window"}], [])),
}


class Fields:
    """Draws each field from its usual or (when chosen for this example) its edge values."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.edgy = draw(st.sets(st.sampled_from(sorted(FIELDS)), max_size=2))

    def __call__(self, name: str) -> Any:
        usual, edge = FIELDS[name]
        return self.draw(edge if name in self.edgy else usual)

    def build(self, **names: str) -> dict[str, Any]:
        """{key: the value of field name} without the absent ones."""
        return {k: v for k, name in names.items() if (v := self(name)) is not ABSENT}


def judging(f: Fields, way: str) -> dict[str, Any]:
    """How a metric (or template) is judged: `way`, with the example's edges (a mode may be added)."""
    out: dict[str, Any] = {}
    if way == "threshold" or "metric.threshold" in f.edgy:
        out["thresholdRange"] = f("metric.threshold")
    if way == "condition" or "metric.condition" in f.edgy:
        out["successCondition"] = f("metric.condition")
    if way == "baseline" or "metric.baseline" in f.edgy:
        out.update(baseline=f("metric.baseline"), maxRatio=f("metric.maxRatio"), floor=f("metric.floor"))
    elif "metric.maxRatio" in f.edgy or "metric.floor" in f.edgy:
        out.update(maxRatio=f("metric.maxRatio"), floor=f("metric.floor"))
    return {k: v for k, v in out.items() if v is not ABSENT}


def counting(f: Fields) -> dict[str, Any]:
    return f.build(
        failureLimit="metric.failureLimit",
        count="metric.count",
        inconclusiveLimit="metric.inconclusiveLimit",
        interval="metric.interval",
        initialDelay="metric.initialDelay",
        noData="metric.noData",
        bogus="metric.unknown",
    )


WAYS = st.sampled_from(["threshold", "condition", "baseline"])


def metric(f: Fields, name: str, template: str | None) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name}
    if template:
        m["templateRef"] = {"name": "tpl", "kind": template}
        if f.draw(st.booleans()):  # the metric's own way of judging replaces the template's
            m.update(judging(f, f.draw(WAYS)))
    else:
        m["query"] = f("metric.query")
        m.update(judging(f, f.draw(WAYS)))
    return {**m, **counting(f)}


def template_doc(f: Fields, kind: str) -> dict[str, Any]:
    spec = {"query": f("metric.query"), **f.build(args="template.args"), **judging(f, f.draw(WAYS)), **counting(f)}
    return {"apiVersion": "teal.dev/v1alpha1", "kind": kind, "metadata": {"name": "tpl"}, "spec": spec}


def analysis(f: Fields, template: str | None) -> dict[str, Any]:
    first = f("metric.name")
    metrics = [metric(f, first, None)]
    if template or f.draw(st.booleans()):
        metrics.append(metric(f, "m2", template))
    names = [m["name"] for m in metrics]
    pre = f("analysis.prePromotion")
    out = {"metrics": metrics, "prePromotion": names if pre == "all" else pre, "postPromotion": names[-1:]}
    out.update(
        f.build(
            count="analysis.count",
            interval="analysis.interval",
            initialDelay="analysis.initialDelay",
            prometheus="analysis.prometheus",
        )
    )
    return {**out, "args": [{"name": "window", "value": "1m"}]} if f.draw(st.booleans()) else out


def rollout_doc(f: Fields, template: str | None) -> dict[str, Any]:
    bg = f.build(
        activeServices="activeServices",
        previewService="previewService",
        previewReplicas="previewReplicas",
        scaleDownDelaySeconds="scaleDownDelaySeconds",
        progressDeadlineSeconds="progressDeadlineSeconds",
        steps="steps",
        trafficRouting="trafficRouting",
        bogus="unknown",
    )
    spec: dict[str, Any] = {
        **f.build(replicas="replicas", revisionHistoryLimit="revisionHistoryLimit"),
        "selector": {"matchLabels": {"app": "app"}},
        "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}},
        "strategy": {"blueGreen": bg},
    }
    if template or f.draw(st.booleans()):
        spec["analysis"] = analysis(f, template)
    return {"apiVersion": "teal.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "ro"}, "spec": spec}


@st.composite
def manifests(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A Rollout and, when one of its metrics names it, its template."""
    f = Fields(draw)
    template = draw(st.sampled_from([None, None, "AnalysisTemplate", "ClusterAnalysisTemplate"]))
    return ([template_doc(f, template)] if template else []) + [rollout_doc(f, template)]


# ---------------------------------------------------------------- the three verdicts


def server_create(k8s: Any, namespace: str, doc: Mapping[str, Any], text: str) -> tuple[dict[str, Any] | None, str]:
    """(the object the apiserver would store, "") or (None, its refusal): dry run, strict fields."""
    plural = {
        "Rollout": "rollouts",
        "AnalysisTemplate": "analysistemplates",
        "ClusterAnalysisTemplate": "clusteranalysistemplates",
    }[doc["kind"]]
    where = "" if doc["kind"] == "ClusterAnalysisTemplate" else f"/namespaces/{namespace}"
    cfg = k8s.configuration
    headers = {"Content-Type": "application/yaml", "Accept": "application/json"}
    for auth in cfg.auth_settings().values():
        if auth.get("in") == "header" and auth.get("value"):
            headers[auth["key"]] = auth["value"]
    url = f"{cfg.host}/apis/teal.dev/v1alpha1{where}/{plural}?dryRun=All&fieldValidation=Strict"
    r = k8s.rest_client.pool_manager.request("POST", url, body=text.encode(), headers=headers, timeout=30)
    body = json.loads(r.data or b"{}")
    if r.status in (200, 201):
        return body, ""
    assert r.status in (400, 422), (r.status, body)  # a refusal, not a broken server
    return None, str(body.get("message"))


class _Missing(Exception):
    """The template the metric names was not stored: 'not found' at run time (see below)."""


def operator_refusal(stored: Mapping[str, Any], templates: Mapping[str, Mapping[str, Any]]) -> str:
    """What the operator refuses in a stored object ("" for nothing); templates by kind."""
    if stored["kind"] != "Rollout":
        return ""  # the operator reads a template only through a Rollout that names it
    spec = stored.get("spec") or {}
    try:
        api.parse_spec(spec)
    except api.SpecError as e:
        return str(e)
    analysis = spec.get("analysis") or {}

    def fetch(kind: str, name: str) -> Mapping[str, Any]:
        if kind not in templates:
            raise _Missing(kind)
        return templates[kind]

    for m in analysis.get("metrics") or []:
        try:
            parse_metrics(analysis, [m["name"]], fetch)
        except _Missing:
            pass  # not found at run time; lint says so as a warning (the template may be in the cluster)
        except AnalysisConfigError as e:
            return str(e)
    if analysis.get("prometheus"):
        try:
            provider_settings(analysis["prometheus"], lambda name, key: "-----BEGIN CERTIFICATE-----", None)
        except AnalysisConfigError as e:
            return str(e)
    return ""


@functools.cache
def crd_index() -> cli_lint.CrdIndex:
    return cli_lint.CrdIndex.from_paths(cli_lint.default_crd_dirs())


def lint_verdicts(text: str) -> dict[tuple[str, str], list[str]]:
    result = cli_lint.LintResult()
    cli_lint.lint_text(text, "gen.yaml", crd_index(), result)
    assert not [p for p in result.problems if p.kind == "?"], result.problems
    out: dict[tuple[str, str], list[str]] = {}
    for p in result.problems:
        out.setdefault((p.kind, p.name), []).append(f"{p.path}: {p.message}")
    return out


def known_gap(refusal: str) -> str | None:
    return next((why for why, pattern in KNOWN_GAPS.items() if re.search(pattern, refusal)), None)


@pytest.fixture(scope="module")
def agree_namespace(k8s: Any, teal_crds: list[str]) -> Iterator[str]:
    import kubernetes.client as k

    assert {"rollouts.yaml", "analysistemplates.yaml"} <= set(teal_crds)
    name = f"agree-{uuid.uuid4().hex[:6]}"
    core = k.CoreV1Api(k8s)
    core.create_namespace(k.V1Namespace(metadata=k.V1ObjectMeta(name=name, labels={"teal.dev/test": "true"})))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


SEEN: dict[str, int] = {"accepted": 0, "refused": 0, "gaps": 0}


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(docs=manifests())
def test_lint_apiserver_and_operator_agree(k8s: Any, agree_namespace: str, docs: list[dict[str, Any]]) -> None:
    texts = [yaml.safe_dump(d, sort_keys=False) for d in docs]
    lint = lint_verdicts("---\n".join(texts))
    templates: dict[str, Mapping[str, Any]] = {}
    for doc, text in zip(docs, texts, strict=True):
        stored, refusal = server_create(k8s, agree_namespace, doc, text)
        operator = operator_refusal(stored, templates) if stored is not None else ""
        if stored is not None and doc["kind"] != "Rollout":
            templates[doc["kind"]] = stored
        linted = lint.get((doc["kind"], doc["metadata"]["name"]), [])
        shown = f"{doc['kind']}:\n{text}\napiserver: {refusal or 'accepted'}\noperator: {operator or 'accepted'}\nlint: {linted}"
        if doc["kind"] != "Rollout" and stored is not None:
            # lint checks a template as every Rollout using it would: only by-design gaps here
            assert all(known_gap(p) for p in linted), shown
            SEEN["gaps"] += bool(linted)
        else:  # lint = apiserver, then the operator on what is stored
            assert bool(linted) == bool(refusal or operator), shown
        if operator:
            assert known_gap(operator), f"the apiserver accepts what the operator refuses:\n{shown}"
            SEEN["gaps"] += 1
        SEEN["refused" if refusal else "accepted"] += 1


def test_both_verdicts_were_exercised() -> None:
    """Runs after the property test (same module, in order): the generator reaches both sides."""
    if not SEEN["accepted"] + SEEN["refused"]:
        pytest.skip("the property test did not run")
    assert SEEN["accepted"] >= 20 and SEEN["refused"] >= 20, SEEN
