"""The Rollout CRD (crds/rollouts.yaml) against the Python that reads and writes Rollouts.

Pure tests (no cluster): they fail when a field is added on one side only --
a spec field parsed by teal.api without a schema entry (the apiserver would prune it),
a schema field the model ignores, a status key written by teal.core that the schema
would prune, a default that differs between the CRD and api.py, or a copy of the CRD
(Python package, Helm chart) that is out of date.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from crd_helpers import (
    COPIES,
    CRDS,
    ROOT,
    apply_defaults,
    docs,
    example_files,
    invalid_files,
    node,
    rollout_crd,
    rollouts,
    schema,
    version,
    walk,
)
from teal import api, core

BG = "spec.strategy.blueGreen"
TR = f"{BG}.trafficRouting"

# Every field of api.py's spec model, and the CRD paths it is read from. A new dataclass
# field fails test_every_model_field_is_mapped until it is added here (and to the CRD).
MODEL_PATHS: dict[tuple[type, str], tuple[str, ...]] = {
    (api.RolloutSpec, "replicas"): ("spec.replicas",),
    (api.RolloutSpec, "match_labels"): ("spec.selector.matchLabels",),
    (api.RolloutSpec, "template"): ("spec.template",),
    (api.RolloutSpec, "workload_ref"): ("spec.workloadRef",),
    (api.RolloutSpec, "blue_green"): ("spec.strategy", BG),
    (api.RolloutSpec, "paused"): ("spec.paused",),
    (api.RolloutSpec, "revision_history_limit"): ("spec.revisionHistoryLimit",),
    (api.RolloutSpec, "analysis"): ("spec.analysis",),  # the rest is teal.analysis' (see below)
    (api.RolloutSpec, "release_policy"): ("spec.releasePolicy",),
    (api.ReleasePolicyRef, "policies"): ("spec.releasePolicy.policies",),
    (api.ReleasePolicyRef, "exclude"): ("spec.releasePolicy.exclude",),
    (api.WorkloadRef, "name"): ("spec.workloadRef.name",),
    (api.WorkloadRef, "kind"): ("spec.workloadRef.kind",),
    (api.WorkloadRef, "api_version"): ("spec.workloadRef.apiVersion",),
    (api.BlueGreen, "active_services"): (f"{BG}.activeServices",),
    (api.BlueGreen, "preview_service"): (f"{BG}.previewService",),
    (api.BlueGreen, "preview_replicas"): (f"{BG}.previewReplicas",),
    (api.BlueGreen, "auto_promote"): (f"{BG}.autoPromote",),
    (api.BlueGreen, "scale_down_delay_seconds"): (f"{BG}.scaleDownDelaySeconds",),
    (api.BlueGreen, "abort_scale_down_delay_seconds"): (f"{BG}.abortScaleDownDelaySeconds",),
    (api.BlueGreen, "progress_deadline_seconds"): (f"{BG}.progressDeadlineSeconds",),
    (api.BlueGreen, "traffic_routing"): (TR,),
    (api.BlueGreen, "steps"): (f"{BG}.steps",),
    (api.TrafficRouting, "kind"): (f"{TR}.gatewayAPI", f"{TR}.nginx", f"{TR}.istio"),
    (api.TrafficRouting, "name"): (f"{TR}.gatewayAPI.httpRoute", f"{TR}.nginx.ingress", f"{TR}.istio.virtualService"),
    (api.TrafficRouting, "routes"): (f"{TR}.istio.routes",),
    (api.TrafficRouting, "port"): (f"{TR}.gatewayAPI.port", f"{TR}.nginx.port", f"{TR}.istio.port"),
    (api.Step, "set_weight"): (f"{BG}.steps[].setWeight",),
    (api.Step, "pause"): (f"{BG}.steps[].pause",),
    (api.Step, "pause_seconds"): (f"{BG}.steps[].pause.duration",),
}
MODEL_CLASSES = (api.RolloutSpec, api.WorkloadRef, api.BlueGreen, api.TrafficRouting, api.Step, api.ReleasePolicyRef)
MAPPED = {p for paths in MODEL_PATHS.values() for p in paths}

# The CRD defaults that api.py must agree with (api.py falls back to the same values
# when a field is missing, e.g. for objects written before a default existed).
DEFAULTS = {
    "spec.replicas": 1,
    "spec.paused": False,
    "spec.revisionHistoryLimit": 10,
    "spec.workloadRef.kind": "Deployment",
    "spec.workloadRef.apiVersion": "apps/v1",
    f"{BG}.autoPromote": True,
    f"{BG}.scaleDownDelaySeconds": 30,
    f"{BG}.abortScaleDownDelaySeconds": 30,
    f"{BG}.progressDeadlineSeconds": 600,
}

MINIMAL_SPEC = {
    "selector": {"matchLabels": {"app": "a"}},
    "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "a", "image": "a"}]}},
    "strategy": {"blueGreen": {"activeServices": ["a"]}},
}


# ---------------------------------------------------------------- the CRD itself


def test_crd_names_and_version():
    crd = rollout_crd()
    assert crd["metadata"]["name"] == f"{api.PLURAL}.{api.GROUP}"
    spec = crd["spec"]
    assert spec["group"] == api.GROUP and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": api.KIND,
        "listKind": f"{api.KIND}List",
        "plural": api.PLURAL,
        "singular": "rollout",
        "shortNames": ["tro"],
        "categories": ["all", "teal"],
    }
    v = version()
    assert (v["name"], v["served"], v["storage"]) == (api.VERSION, True, True)
    assert v["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    cols = {c["name"]: c for c in v["additionalPrinterColumns"]}
    assert {n: (c["jsonPath"], c.get("priority", 0)) for n, c in cols.items()} == {
        "Phase": (".status.phase", 0),
        "Active": (".status.activeColor", 0),
        "Preview": (".status.previewColor", 0),
        "Revision": (".status.currentRevision", 0),
        "Step": (".status.currentStep", 1),
        "Held": (".status.release.heldSince", 1),
        "Message": (".status.message", 1),
        "Age": (".metadata.creationTimestamp", 0),
    }
    for c in cols.values():  # every column shows a field that exists
        if c["jsonPath"].startswith(".status."):
            assert node("status." + c["jsonPath"].removeprefix(".status.")), c


def test_copies_of_the_crds_are_identical():
    sources = {p.name: p.read_bytes() for p in CRDS.glob("*.yaml")}
    assert "rollouts.yaml" in sources
    for folder in COPIES:
        copies = {p.name: p.read_bytes() for p in folder.glob("*.yaml")}
        stale = sorted(n for n in set(sources) | set(copies) if sources.get(n) != copies.get(n))
        assert not stale, f"{folder.relative_to(ROOT)} differs from crds/ in {stale}: run hack/sync-crds.sh"


def test_schema_is_structural_where_it_matters():
    s = schema()
    spec = node("spec")
    assert spec["type"] == "object" and not spec.get("x-kubernetes-preserve-unknown-fields")
    assert node("spec.template.spec") == {
        **node("spec.template.spec"),
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    for m in ("labels", "annotations"):
        assert node(f"spec.template.metadata.{m}{{}}")["type"] == "string"
    # the only opaque parts: the PodSpec, kopf's bookkeeping and teal.analysis' run state
    opaque = {p for p, n in walk(s) if n.get("x-kubernetes-preserve-unknown-fields")}
    assert opaque == {
        "spec.template.spec",
        "spec.template.spec.containers[]",
        "status.analysis[]",
        "status.analysisRun",
        "status.analysisRun.metrics{}",
        "status.history[]",  # a newer version's keys in an entry round-trip, as in status.release
        "status.kopf",
        "status.notifications.pending{}",  # an entry's newer keys round-trip too (teal.notify)
        "status.release",
    }


def test_cel_rules_have_messages_and_bounded_inputs():
    """The apiserver's cost estimator needs bounds; users need a message (tested for real in test_crd_validation)."""
    rules = [(p, r) for p, n in walk(schema()) for r in n.get("x-kubernetes-validations") or []]
    assert len(rules) >= 25
    for path, rule in rules:
        assert rule.get("message") or rule.get("messageExpression"), (path, rule["rule"])
    for path, n in walk(node("spec"), "spec"):
        if path.startswith("spec.template.spec"):
            continue  # the PodSpec is opaque to CEL
        kind = n.get("type")
        if kind == "array":
            assert "maxItems" in n, path
        if kind == "string" and "enum" not in n:
            assert "maxLength" in n or path.startswith("spec.template.metadata.annotations"), path
        if kind == "object" and isinstance(n.get("additionalProperties"), dict):
            assert "maxProperties" in n, path


def test_main_fields_are_described():
    """`kubectl explain rollout.spec...` should say what each main field does."""
    parents = [
        "spec",
        BG,
        TR,
        f"{BG}.steps[]",
        "spec.analysis",
        "spec.analysis.prometheus",
        "spec.analysis.metrics[]",
        "status",
        "status.release",
    ]
    undocumented = []
    for parent in parents:
        for name, child in node(parent)["properties"].items():
            if not child.get("description") and not (parent.startswith("status.release")):
                undocumented.append(f"{parent}.{name}")
    assert not undocumented, undocumented


# ---------------------------------------------------------------- spec: api.py <-> CRD


def test_every_model_field_is_mapped_to_an_existing_crd_path():
    fields = {(cls, f.name) for cls in MODEL_CLASSES for f in dataclasses.fields(cls)}
    assert fields == set(MODEL_PATHS), "update MODEL_PATHS (and the CRD) for the model's new or removed fields"
    missing = sorted(p for p in MAPPED if node(p) is None)
    assert not missing, f"parsed by teal.api but not in crds/rollouts.yaml: {missing}"


def test_every_crd_spec_field_is_read_by_the_model():
    """Outside spec.analysis (teal.analysis' part) and the PodSpec, no schema field is ignored."""
    ignored = []
    for path, _ in walk(node("spec"), "spec"):
        if path.startswith(("spec.analysis", "spec.template.")) or path == "spec":
            continue
        # a path is used when it is mapped, or lies on the way to (or inside a map of) a mapped path
        if not any(
            m in (path, path.removesuffix("[]")) or m.startswith((path + ".", path + "[]")) or path.startswith(m + "{}")
            for m in MAPPED
        ):
            ignored.append(path)
    assert not ignored, f"in the CRD but not in teal.api's model (add to api.py and MODEL_PATHS): {ignored}"


def _keys_read_by(source: str) -> set[str]:
    """String keys api.py reads from the spec: x.get("key", ...) and x["key"]."""
    keys = set()
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get" and n.args:
            if isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str):
                keys.add(n.args[0].value)
        elif isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) and isinstance(n.slice.value, str):
            keys.add(n.slice.value)
    return keys


def test_every_key_parse_spec_reads_is_a_crd_field():
    source = "\n".join(inspect.getsource(f) for f in (api.parse_spec, api._step, api.parse_traffic_routing))
    keys = _keys_read_by(source)
    names = {p.rsplit(".", 1)[-1].rstrip("[]{}") for p, _ in walk(node("spec"), "spec")}
    # routing kinds/names are read through a dict literal in parse_traffic_routing: check its values too
    literal = {
        v.value
        for n in ast.walk(ast.parse(inspect.getsource(api.parse_traffic_routing)))
        if isinstance(n, ast.Dict)
        for v in (*n.keys, *n.values)
        if isinstance(v, ast.Constant) and isinstance(v.value, str)
    }
    assert {"activeServices", "setWeight", "httpRoute", "revisionHistoryLimit"} <= keys | literal  # the collector works
    unknown = sorted(k for k in keys | literal if k not in names)
    assert not unknown, f"teal.api reads keys that the CRD does not define (the apiserver prunes them): {unknown}"


def test_every_key_teal_analysis_reads_is_a_crd_field():
    """spec.analysis is parsed by teal.analysis: the keys it reads must exist in the schema too."""
    model = pytest.importorskip("teal.analysis.model")
    prom = pytest.importorskip("teal.analysis.prometheus")
    source = "\n".join(inspect.getsource(f) for f in (model._metric_from, model.parse_metrics, prom.provider_settings))
    keys = {k for k in _keys_read_by(source) if "_" not in k}  # snake_case keys are its own dicts
    assert {"thresholdRange", "noData", "bearerTokenSecretRef", "insecureSkipVerify"} <= keys  # the collector works
    names = {p.rsplit(".", 1)[-1].rstrip("[]{}") for p, _ in walk(node("spec.analysis"), "analysis")}
    unknown = sorted(keys - names)
    assert not unknown, f"teal.analysis reads keys that spec.analysis in the CRD does not define: {unknown}"


def test_crd_defaults_match_api_fallbacks():
    for path, value in DEFAULTS.items():
        assert node(path).get("default") == value, path
    defaulted = [p for p, n in walk(node("spec"), "spec") if "default" in n and not p.startswith("spec.analysis")]
    assert sorted(defaulted) == sorted(DEFAULTS), "a new default in the CRD: add it to DEFAULTS and api.py"
    # what api.py assumes for a missing field is what the apiserver fills in
    for spec in (MINIMAL_SPEC, {**MINIMAL_SPEC, "template": None, "workloadRef": {"name": "w"}}):
        spec = {k: v for k, v in spec.items() if v is not None}
        assert api.parse_spec(spec) == api.parse_spec(apply_defaults(node("spec"), spec))


def test_no_metric_level_defaults_that_would_hide_a_template():
    """A templateRef metric takes failureLimit, noData, ... from its template unless it sets them itself."""
    metric = node("spec.analysis.metrics[]")
    assert not [p for p, n in walk(metric) if "default" in n and p != "templateRef.kind"]


# ---------------------------------------------------------------- status: core.py <-> CRD


class _StatusWrites(ast.NodeVisitor):
    """Status paths that teal.core writes, found in its source.

    Writes are `x[k] = ...`, `x.update(k=...)`, `x.setdefault(k, ...)` on expressions that
    resolve to a status object: `st`/`t.st`/`self.st` is status, and the local names below
    stand for parts of it. A dict literal assigned there contributes its keys too.
    """

    NAMES = {
        "st": "status",
        "release": "status.release",
        "pending": "status.scaleDown",
        "stats": "status.stats",
        "cond": "status.conditions[]",
    }
    # functions returning a fresh status.release
    BUILDERS = {"_new_release": "status.release", "_reset_release": "status.release"}

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.dynamic: list[str] = []  # writes with computed keys, for the test to account for
        self.function: str | None = None

    def base(self, e: ast.expr) -> str | None:
        if isinstance(e, ast.Name):
            return self.NAMES.get(e.id)
        if isinstance(e, ast.Attribute) and e.attr == "st":
            return "status"
        if isinstance(e, ast.Attribute) and e.attr == "stats":  # st.stats (teal.status.Status.stats)
            return "status.stats"
        if isinstance(e, ast.BoolOp):  # (st.get("x") or {})
            return self.base(e.values[0])
        if isinstance(e, ast.Subscript) and isinstance(e.slice, ast.Constant):
            b = self.base(e.value)
            return f"{b}.{e.slice.value}" if b else None
        if isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and e.func.attr in ("get", "setdefault"):
            b = self.base(e.func.value)
            if b and e.args and isinstance(e.args[0], ast.Constant):
                return f"{b}.{e.args[0].value}"
        return None

    def add(self, path: str, value: ast.expr | None = None) -> None:
        self.paths.add(path)
        if isinstance(value, ast.Dict):
            for k in value.keys:
                if isinstance(k, ast.Constant):
                    self.paths.add(f"{path}.{k.value}")
        if isinstance(value, ast.DictComp) and isinstance(value.generators[0].iter, ast.Name):
            for k in getattr(api, value.generators[0].iter.id):  # {c: ... for c in COLORS}
                self.paths.add(f"{path}.{k}")

    def visit_FunctionDef(self, n: ast.FunctionDef) -> None:
        outer, self.function = self.function, n.name
        self.generic_visit(n)
        self.function = outer

    def visit_Return(self, n: ast.Return) -> None:
        if self.function in self.BUILDERS and isinstance(n.value, ast.Dict):
            self.add(self.BUILDERS[self.function], n.value)
        self.generic_visit(n)

    def visit_Assign(self, n: ast.Assign) -> None:
        for t in n.targets:
            if isinstance(t, ast.Subscript):
                b = self.base(t.value)
                if b and isinstance(t.slice, ast.Constant):
                    self.add(f"{b}.{t.slice.value}", n.value)
                elif b:
                    self.dynamic.append(f"{b}[{ast.unparse(t.slice)}]")
            elif isinstance(t, ast.Name) and t.id in self.NAMES and isinstance(n.value, ast.Dict):
                self.add(self.NAMES[t.id], n.value)
        self.generic_visit(n)

    def visit_Call(self, n: ast.Call) -> None:
        f = n.func
        if isinstance(f, ast.Attribute) and (b := self.base(f.value)):
            if f.attr == "update":
                for kw in n.keywords:
                    if kw.arg:
                        self.add(f"{b}.{kw.arg}", kw.value)
                for a in n.args:
                    self.add(b, a)
            elif f.attr == "setdefault" and n.args and isinstance(n.args[0], ast.Constant):
                self.add(f"{b}.{n.args[0].value}", n.args[1] if len(n.args) > 1 else None)
        # t.stats("key", at=False): status.stats.key (+ status.stats.last<Key>At)
        if isinstance(f, ast.Attribute) and f.attr == "stats" and n.args and isinstance(n.args[0], ast.Constant):
            key = n.args[0].value
            self.paths.add(f"status.stats.{key}")
            at = next((kw.value for kw in n.keywords if kw.arg == "at"), ast.Constant(True))
            if not (isinstance(at, ast.Constant) and at.value is False):
                self.paths.add(f"status.stats.last{key[0].upper()}{key[1:]}At")
        self.generic_visit(n)


def core_status_writes() -> _StatusWrites:
    v = _StatusWrites()
    v.visit(ast.parse(Path(core.__file__).read_text()))
    # the typed status (teal.status) names every key it persists; the core writes weights as a dict
    from teal import status as typed_status

    v.paths |= typed_status.persisted_paths() | {f"status.weights.{c}" for c in api.COLORS}
    return v


def test_every_status_key_core_writes_is_in_the_schema():
    w = core_status_writes()
    # the collector still understands core.py: a sample of writes it must find
    assert {
        "status.activeColor",
        "status.release.analysisKey",
        "status.release.fastRollback",
        "status.scaleDown.announced",
        "status.stats.lastReleaseSeconds",
        "status.stats.lastAbortedAt",
        "status.stats.retries",
        "status.conditions[].lastTransitionTime",
        "status.weights.green",
        "status.abort.reason",
        "status.release.passed",
    } <= w.paths
    # computed keys it cannot read must be the known ones (covered by the t.stats(...) calls)
    assert set(w.dynamic) <= {"status.stats[key]", "status.stats[f'last{key[0].upper()}{key[1:]}At']"}, w.dynamic
    missing = sorted(p for p in w.paths if node(p) is None)
    assert not missing, f"teal.core writes status fields the CRD does not define (the apiserver prunes them): {missing}"


def test_status_schema_lists_nothing_that_nobody_writes():
    """Schema entries no Python writes are documentation that lies; the doc's contract fields are allowed."""
    w = core_status_writes().paths
    contract = set(_doc_paths("status"))
    written_elsewhere = {"status.analysis", "status.analysisRun", "status.kopf", "status.promote"}
    stale = []
    for path, _ in walk(node("status"), "status"):
        if (
            path == "status"
            or path.endswith("[]")
            or path.startswith(("status.analysis", "status.kopf", "status.promote", "status.conditions[]"))
            or path.startswith("status.notifications")  # teal.notify writes it (docs/notifications.md)
        ):
            continue
        if path not in w and path not in contract and path not in written_elsewhere:
            stale.append(path)
    assert not stale, f"status fields in the CRD that neither teal.core nor docs/status-and-api.md mention: {stale}"


def test_status_analysis_items_hold_every_measurement_field():
    model = pytest.importorskip("teal.analysis.model")
    m = model.Measurement(
        metric="m",
        run="7:prePromotion",
        color="green",
        value=1.0,
        baseline=2.0,
        verdict="Successful",
        query="q",
        message="ok",
        at="2024-01-01T00:00:00Z",
        dry_run=True,
        baseline_query="b",
        error_kind="Timeout",
    )
    missing = sorted(k for k in m.as_dict() if node(f"status.analysis[].{k}") is None)
    assert not missing, f"Measurement.as_dict() keys without a schema entry in status.analysis[]: {missing}"


# ---------------------------------------------------------------- docs/status-and-api.md <-> CRD


def _doc_blocks() -> Iterator[tuple[str, Any]]:
    """The YAML blocks of the API doc with the heading they are under."""
    text = (ROOT / "docs" / "status-and-api.md").read_text()
    for m in re.finditer(r"^##+ (\S+)[^\n]*\n```yaml\n(.*?)```", text, re.M | re.S):
        yield m.group(1), yaml.safe_load(m.group(2))


def _paths(value: Any, prefix: str) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "...":
                continue
            yield f"{prefix}.{k}"
            yield from _paths(v, f"{prefix}.{k}")
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, dict):
                yield from _paths(v, prefix + "[]")


def _doc_paths(section: str) -> list[str]:
    out = []
    for heading, block in _doc_blocks():
        if heading == "spec" or heading == "spec.analysis":
            out += [p for p in _paths(block, "spec") if section == "spec"]
        elif heading == "status":
            out += [p for p in _paths(block, "status") if section == "status"]
    return out


def _in_schema(path: str) -> bool:
    """Does the path exist, or lie inside an opaque or map part of the schema?"""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        n = node(".".join(parts[:i]))
        if n is not None:
            return i == len(parts) or bool(n.get("x-kubernetes-preserve-unknown-fields") or n.get("additionalProperties"))
    return False


@pytest.mark.parametrize("section", ["spec", "status"])
def test_every_field_of_the_api_doc_is_in_the_schema(section):
    paths = _doc_paths(section)
    assert len(paths) > 30
    missing = sorted({p for p in paths if not _in_schema(p)})
    assert not missing, f"docs/status-and-api.md shows {section} fields the CRD does not define: {missing}"


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_examples_parse(path):
    found = rollouts(path)
    assert len(found) == 1, f"{path.name}: one Rollout per example"
    spec = found[0]["spec"]
    parsed = api.parse_spec(spec)
    # teal.api reads the same with and without the apiserver's defaulting (analysis is teal.analysis')
    defaulted = api.parse_spec(apply_defaults(node("spec"), spec))
    assert parsed == dataclasses.replace(defaulted, analysis=parsed.analysis)
    assert parsed.blue_green.active_services


def test_examples_cover_the_main_shapes():
    parsed = {p.name: api.parse_spec(rollouts(p)[0]["spec"]) for p in example_files()}
    assert any(s.template and not s.analysis for s in parsed.values()), "a minimal example"
    assert any(s.workload_ref for s in parsed.values()), "a workloadRef example"
    weighted = [s for s in parsed.values() if s.weighted]
    assert weighted and weighted[0].blue_green.traffic_routing.kind == "gatewayAPI"
    assert any(s.set_weight not in (None, 0, 100) for s in weighted[0].blue_green.steps)
    full = [s for s in parsed.values() if s.analysis and s.analysis.get("prePromotion") and s.blue_green.preview_service]
    assert full, "a full example with prePromotion analysis and a preview Service"
    metrics = full[0].analysis["metrics"]
    for kind in ("query", "templateRef", "baseline", "thresholdRange", "successCondition"):
        assert any(kind in m for m in metrics), f"the full example shows a {kind} metric"


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_examples_analysis_parses(path):
    """teal.analysis accepts the examples' metrics (templates stubbed with a valid one)."""
    model = pytest.importorskip("teal.analysis.model")
    analysis = rollouts(path)[0]["spec"].get("analysis")
    if not analysis:
        pytest.skip("no analysis")
    template = {"spec": {"query": "sum(up)", "thresholdRange": {"max": 1}}}
    names = [m["name"] for m in analysis["metrics"]]
    metrics = model.parse_metrics(analysis, names, lambda kind, name: template)
    assert [m.name for m in metrics] == names


def test_invalid_examples_are_single_rollouts_with_an_expectation():
    files = invalid_files()
    assert len(files) >= 15
    for p in files:
        assert [d["kind"] for d in docs(p)] == ["Rollout"], p.name
        assert len(set(re.findall(r"expect: (.+)", p.read_text()))) == 1, p.name
    names = [docs(p)[0]["metadata"]["name"] for p in files]
    assert len(names) == len(set(names)), "invalid examples share a namespace in the cluster test: names must differ"
