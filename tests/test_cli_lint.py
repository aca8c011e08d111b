"""`kubectl teal lint`: offline validation that rejects what the apiserver rejects.

The offline tests check lint against the example manifests (examples/*.yaml are valid,
each examples/invalid/*.yaml names the apiserver's reason in a `# expect:` comment).
The cluster tests send the same files, and a few hundred mutations of a valid Rollout,
to the real apiserver (dry run, strict field validation) and require the same verdict.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli_helpers import CRDS, EXAMPLES, run, teal
from teal import cli_lint

VALID = sorted(EXAMPLES.glob("*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def expectation(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# expect:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{path} has no '# expect:' comment")


@pytest.fixture(scope="module")
def index() -> cli_lint.CrdIndex:
    return cli_lint.CrdIndex.from_paths(cli_lint.default_crd_dirs())


def test_the_examples_exist():
    assert VALID and INVALID, "examples/*.yaml and examples/invalid/*.yaml are needed"


def test_crds_load_from_the_package(index):
    assert index.lookup("teal.dev/v1alpha1", "Rollout") is not None
    shipped = {p.name for d in cli_lint.default_crd_dirs() for p in d.glob("*.yaml")}
    assert {p.name for p in CRDS.glob("*.yaml")} <= shipped


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_examples_pass(path):
    r = teal("lint", "-f", str(path))
    assert r.code == 0, r
    assert r.out == ""
    assert "valid" in r.err


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_examples_fail_with_the_apiservers_reason(path):
    r = teal("lint", "-f", str(path))
    assert r.code == 1, r
    lines = r.out.splitlines()
    assert lines, r
    for line in lines:  # FILE: <kind>/<name>: <path>: <message>
        file, kind_name, field, message = line.split(": ", 3)
        assert file == str(path)
        assert kind_name.startswith("Rollout/")
        assert field and message
    assert any(expectation(path) in line for line in lines), (expectation(path), lines)


def test_many_files_one_line_per_error_and_directories(tmp_path):
    r = teal("lint", "-f", str(EXAMPLES / "invalid"), "-f", str(VALID[0]))
    assert r.code == 1
    files = {line.split(": ", 1)[0] for line in r.out.splitlines()}
    assert files == {str(p) for p in INVALID}
    assert f"{len(INVALID) + 1} file(s)" in r.err


def test_stdin_multi_document_and_other_kinds_skipped(monkeypatch):
    import io

    text = (EXAMPLES / "invalid" / "negative-replicas.yaml").read_text()
    doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n---\n" + text
    monkeypatch.setattr("sys.stdin", io.StringIO(doc))
    r = teal("lint", "-f", "-")
    assert r.code == 1
    assert r.out.startswith("<stdin>: Rollout/")
    assert "1 other object(s) skipped" in r.err


def test_unreadable_and_unparsable_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: teal.dev/v1alpha1\nkind: Rollout\nmetadata: {name: [\n")
    r = teal("lint", "-f", str(bad), "-f", str(tmp_path / "missing.yaml"))
    assert r.code == 1
    assert "cannot parse" in r.out and "cannot read" in r.out


def test_unknown_kind_of_our_group(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("apiVersion: teal.dev/v1alpha1\nkind: Rolout\nmetadata: {name: x}\nspec: {}\n")
    r = teal("lint", "-f", str(f))
    assert r.code == 1 and 'no matches for kind "Rolout"' in r.out


def test_defaults_are_applied_before_the_rules(index):
    # previewReplicas 2 > the default replicas (1): the CEL rule must see the default
    ro = yaml.safe_load((EXAMPLES / "invalid" / "negative-replicas.yaml").read_text())
    ro["spec"].pop("replicas")
    ro["spec"]["strategy"]["blueGreen"]["previewReplicas"] = 2
    problems = cli_lint.validate_object(ro, index.lookup("teal.dev/v1alpha1", "Rollout"))
    assert any("previewReplicas must not be larger" in m for _, m in problems), problems


def test_usage_errors_exit_64():
    assert teal("lint").code == 64
    assert teal("lint", "-f", "x", "--crds", "/nonexistent").code == 64


# ---------------------------------------------------------------- against the apiserver


def _rollout_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "Rollout"]


def _server_verdict(custom, namespace: str, obj: dict[str, Any]) -> str | None:
    """None if the apiserver accepts a create of obj (dry run, strict fields), else its message."""
    from kubernetes.client.exceptions import ApiException

    try:
        custom.create_namespaced_custom_object(
            "teal.dev", "v1alpha1", namespace, "rollouts", obj, dry_run="All", field_validation="Strict"
        )
        return None
    except ApiException as exc:
        try:
            return json.loads(exc.body).get("message", exc.body)
        except (TypeError, ValueError):
            return str(exc.body)


@pytest.mark.cluster
def test_apiserver_and_lint_agree_on_the_examples(k8s, namespace, teal_crds, kubectl, cluster):  # noqa: F811
    for path in VALID:
        run([kubectl, "--kubeconfig", cluster.kubeconfig, "apply", "--dry-run=server", "-n", namespace, "-f", str(path)])
    for path in INVALID:
        proc = run(
            [kubectl, "--kubeconfig", cluster.kubeconfig, "apply", "--dry-run=server", "-n", namespace, "-f", str(path)],
            check=False,
        )
        assert proc.returncode != 0, f"the apiserver accepted {path.name}"
        assert expectation(path) in proc.stderr, (path.name, proc.stderr)
        lint = teal("lint", "-f", str(path))
        assert lint.code == 1 and expectation(path) in lint.out, (path.name, lint)


# Mutations of a valid Rollout: lint must accept exactly what the apiserver accepts.
_VALUES: list[Any] = [
    None,
    -1,
    0,
    1,
    2,
    100,
    101,
    1.5,
    "",
    "x",
    "30",
    "30s",
    "1h30m",
    "2 minutes",
    True,
    [],
    ["a"],
    ["a", "a"],
    {},
    {"x": 1},
    "Deployment",
    "StatefulSet",
    "inconclusive",
    "maybe",
    "http://p:9090",
    "p:9090",
]


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _mutate(base: dict[str, Any], rng: random.Random) -> tuple[dict[str, Any], str]:
    obj = copy.deepcopy(base)
    spec_paths = [p for p in _paths(obj["spec"])]
    path = ("spec", *rng.choice(spec_paths))
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    leaf = path[-1]
    op = rng.choice(["set", "set", "set", "delete", "unknown"])
    if op == "delete":
        del parent[leaf]
        what = f"delete {path}"
    elif op == "unknown" and isinstance(parent, dict):
        parent[f"{leaf}X"] = 1
        what = f"add unknown {path}X"
    else:
        value = copy.deepcopy(rng.choice(_VALUES))
        parent[leaf] = value
        what = f"set {path} = {value!r}"
    return obj, what


@pytest.mark.cluster
def test_apiserver_and_lint_agree_on_mutations(k8s, namespace, teal_crds, index):  # noqa: F811
    from kubernetes import client

    custom = client.CustomObjectsApi(k8s)
    crd = index.lookup("teal.dev/v1alpha1", "Rollout")
    bases = [d for p in VALID for d in _rollout_docs(p)]
    assert bases
    rng = random.Random(20240611)
    disagreements = []
    rejected = accepted = 0
    for i in range(300):
        base = bases[i % len(bases)]
        obj, what = _mutate(base, rng)
        obj["metadata"] = {"name": f"m{i}"}
        server = _server_verdict(custom, namespace, obj)
        problems = cli_lint.check_object(obj, crd, [])[0]  # the apiserver's steps; the operator's: test_validation_agree
        if (server is None) != (not problems):
            disagreements.append(f"{what}: apiserver={server!r} lint={problems!r}")
        if server is None:
            accepted += 1
        else:
            rejected += 1
    assert not disagreements, "\n".join(disagreements[:20])
    assert rejected > 50 and accepted > 30, (rejected, accepted)  # the mutations exercise both sides


def test_kubectl_runs_it_as_a_plugin(kubectl, tmp_path):
    import os
    import shutil

    plugin = shutil.which("kubectl-teal")
    assert plugin, "kubectl-teal is not on PATH: install the package (pip install -e .)"
    # kubectl finds plugins on PATH; no cluster is needed for lint
    env = {"PATH": os.pathsep.join([os.path.dirname(plugin), os.environ.get("PATH", "")]), "KUBECONFIG": str(tmp_path / "none")}
    ok = run([kubectl, "teal", "lint", "-f", str(VALID[0])], env=env)
    assert "valid" in ok.stderr
    bad = run([kubectl, "teal", "lint", "-f", str(INVALID[0])], env=env, check=False)
    assert bad.returncode == 1 and expectation(INVALID[0]) in bad.stdout
    listed = run([kubectl, "plugin", "list"], env=env, check=False)
    assert "kubectl-teal" in listed.stdout


# ---------------------------------------------------------------- lint = the apiserver, then the operator

BASE = """\
apiVersion: teal.dev/v1alpha1
kind: Rollout
metadata: {name: app}
spec:
  replicas: 2
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec: {containers: [{name: app, image: app:1}]}
  strategy: {blueGreen: {activeServices: [app]}}
  analysis:
    prePromotion: [errors]
    metrics:
      - name: errors
        query: up
        thresholdRange: {max: 0.01}
"""


def lint_text(text: str, index: cli_lint.CrdIndex) -> tuple[list[str], list[str]]:
    result = cli_lint.LintResult()
    cli_lint.lint_text(text, "x.yaml", index, result)
    return [f"{p.path}: {p.message}" for p in result.problems], result.warnings


@pytest.mark.parametrize(
    "old, new, expect",
    [
        # each of these was "valid" to lint before; the apiserver or the operator refused it
        (
            "        thresholdRange: {max: 0.01}",
            "        thresholdRange: {max: 0.01}\n        failureLimit: 3\n        count: 1",
            "failureLimit must be less than its count",
        ),
        ("  analysis:\n", "  analysis:\n    count: 2\n", None),  # valid: failureLimit 0 < 2
        ("replicas: 2", "replicas: 3000000000", "spec.replicas: Invalid value: 3000000000"),
        ("{max: 0.01}", "{max: .nan}", "thresholdRange.max: Invalid value: NaN: JSON has no NaN or Infinity"),
        ("{max: 0.01}", "{max: -.inf}", "Invalid value: -Inf"),
        ("replicas: 2", "replicas: 2.0", None),  # kubectl sends 2
        ("prePromotion: [errors]", "prePromotion: [n]", 'prePromotion[0]: Invalid value: "boolean"'),  # n is false to kubectl
        ("query: up", "query: sum(rate(x[1m])", "is never closed"),  # the operator's PromQL check, not the apiserver's
        ("query: up", "query: '{{args.window}}'", "no argument 'window' is given"),
        ("query: up", "query: '   '", "must not be blank"),
        ("thresholdRange: {max: 0.01}", "successCondition: result <", "is not a valid expression"),
    ],
)
def test_lint_refuses_what_the_apiserver_or_the_operator_refuses(index, old, new, expect):
    assert old in BASE
    problems, _ = lint_text(BASE.replace(old, new, 1), index)
    if expect is None:
        assert not problems
    else:
        assert any(expect in p for p in problems), problems


TEMPLATE = """\
apiVersion: teal.dev/v1alpha1
kind: AnalysisTemplate
metadata: {name: latency}
spec:
  query: histogram_quantile(0.99, sum by (le) (rate(x[1m])))
  thresholdRange: {max: 0.5}
  failureLimit: 2
"""


def test_metrics_are_checked_with_the_templates_among_the_linted_files(index):
    uses = BASE.replace(
        "        query: up\n        thresholdRange: {max: 0.01}\n", "        templateRef: {name: latency}\n        count: 2\n"
    )
    problems, warnings = lint_text(uses, index)
    assert not problems and any("AnalysisTemplate/latency is not among the linted files" in w for w in warnings)
    problems, _ = lint_text(TEMPLATE + "---\n" + uses, index)  # the template's failureLimit 2 >= the metric's count 2
    assert any("failureLimit 2 >= count 2" in p for p in problems), problems
    problems, _ = lint_text(TEMPLATE + "---\n" + uses.replace("count: 2", "count: 3"), index)
    assert not problems


def test_a_template_is_checked_as_every_rollout_would_use_it(index):
    assert lint_text(TEMPLATE, index) == ([], [])
    problems, _ = lint_text(TEMPLATE.replace("thresholdRange: {max: 0.5}", "successCondition: result >"), index)
    assert problems and "is not a valid expression" in problems[0]


def test_yaml_errors_say_where(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: teal.dev/v1alpha1\nkind: Rollout\nmetadata: {name: [\n")
    r = teal("lint", "-f", str(bad))
    assert r.code == 1 and "<yaml>: cannot parse: line 4, column 1:" in r.out, r


OVERLAPPING_POLICY = """\
apiVersion: teal.dev/v1alpha1
kind: ReleasePolicy
metadata: {name: trading, namespace: shop}
spec:
  timeZone: Europe/London
  windows:
    - {name: day, days: [Mon, Tue, Wed, Thu, Fri], start: "09:00", end: "16:00"}
    - {name: late, days: [Mon], start: "15:00", end: "18:00"}
"""


def test_overlapping_policy_windows_are_a_warning_as_the_operator_reports_them(index: cli_lint.CrdIndex) -> None:
    problems, warnings = lint_text(OVERLAPPING_POLICY, index)
    assert not problems  # the apiserver stores it and the operator acts on the union (Ready=False)
    assert any("ReleasePolicy trading: windows: day and late overlap at" in w for w in warnings), warnings
    apart = OVERLAPPING_POLICY.replace('start: "15:00", end: "18:00"', 'start: "16:00", end: "18:00"')
    assert lint_text(apart, index) == ([], [])
