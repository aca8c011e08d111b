"""The chart's PrometheusRule: rendered by helm, checked by `promtool check rules`, and every
alert unit-tested by `promtool test rules` (tests/data/alerts-test.yaml) with a case where it
fires and one where it does not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli_helpers import CHART, run

DATA = Path(__file__).resolve().parent / "data"
TESTS = [DATA / "alerts-test.yaml", DATA / "alerts-test-daily.yaml"]
ALERTS = {
    "TealRolloutDegraded",
    "TealRolloutAborted",
    "TealReleasePaused",
    "TealAnalysisErroring",
    "TealReconcileErrors",
    "TealOperatorAbsent",
    "TealChangeFailureRateHigh",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if not found:
        pytest.fail("promtool was not found (Debian's prometheus package ships it: hack/build-binaries.sh installs it)")
    return found


def render(helm: str, *sets: str, values: Path | None = None) -> list[dict[str, Any]]:
    args = [helm, "template", "teal", str(CHART), "--namespace", "teal-system", *(["-f", str(values)] if values else [])]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(run(args).stdout) if d]


def rule_file(helm: str, directory: Path, values: dict[str, Any] | None = None) -> Path:
    """The groups of the PrometheusRule rendered with `values` as a Prometheus rule file."""
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump({"prometheusRule": {"enabled": True, **(values or {})}}))
    (rule,) = [d for d in render(helm, values=path) if d["kind"] == "PrometheusRule"]
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def alerts_of(path: Path) -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_rules_pass_promtool_check_and_every_alert_its_unit_tests(helm, promtool, tmp_path):
    rules = rule_file(helm, tmp_path)
    assert set(alerts_of(rules)) == ALERTS
    check = run([promtool, "check", "rules", str(rules)])
    assert f"SUCCESS: {len(ALERTS)} rules found" in check.stdout, check.stdout
    for f in TESTS:
        shutil.copy(f, tmp_path / f.name)
    proc = subprocess.run(
        [promtool, "test", "rules", *(f.name for f in TESTS)], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    cases: dict[str, set[bool]] = {}
    for test in [t for f in TESTS for t in yaml.safe_load(f.read_text())["tests"]]:
        for case in test.get("alert_rule_test") or []:
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    assert {a: cases.get(a) for a in ALERTS} == dict.fromkeys(ALERTS, {True, False})


def test_off_by_default(helm):
    assert not [d for d in render(helm) if d["kind"] == "PrometheusRule"]


def test_values_set_thresholds_labels_and_the_operator_selector(helm, promtool, tmp_path):
    values = {
        "alertLabels": {"team": "platform"},
        "degradedFor": "5m",
        "changeFailureRate": 0.15,
        "changeFailureWindow": "30d",
        "operatorSelector": 'job="teal-metrics",namespace="teal-system"',
    }
    rules = rule_file(helm, tmp_path, values)
    assert "SUCCESS" in run([promtool, "check", "rules", str(rules)]).stdout
    alerts = alerts_of(rules)
    assert all(a["labels"]["team"] == "platform" for a in alerts.values())
    assert alerts["TealRolloutDegraded"]["for"] == "5m"
    assert alerts["TealOperatorAbsent"]["expr"] == 'absent(teal_build_info{job="teal-metrics",namespace="teal-system"})'
    cfr = alerts["TealChangeFailureRateHigh"]["expr"]
    assert "> 0.15" in cfr and "[30d]" in cfr and "offset 30d" in cfr
    (rule,) = [
        d for d in render(helm, "prometheusRule.enabled=true", "prometheusRule.labels.release=x") if d["kind"] == "PrometheusRule"
    ]
    assert rule["metadata"]["labels"]["release"] == "x" and rule["metadata"]["namespace"] == "teal-system"


@pytest.mark.parametrize(
    "bad, message",
    [
        ("prometheusRule.degradedFor=15 minutes", "/prometheusRule/degradedFor"),
        ("prometheusRule.changeFailureRate=2", "/prometheusRule/changeFailureRate"),
        ("prometheusRule.operatorSelector={job=x}", "/prometheusRule/operatorSelector"),
        ("prometheusRule.severity=page", "additional properties 'severity' not allowed"),
    ],
)
def test_schema_rejects_bad_alert_values(helm, bad, message):
    proc = run([helm, "template", "t", str(CHART), "--set", "prometheusRule.enabled=true", "--set", bad], check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_the_chart_readme_example_renders_valid_rules(helm, promtool, tmp_path):
    """The values that charts/teal/README.md ("Alerts and dashboard") shows."""
    readme = (CHART / "README.md").read_text()
    section = readme[readme.index("## Alerts and dashboard") :]
    example = section[section.index("```yaml\n") + 8 : section.index("```", section.index("```yaml\n") + 8)]
    values = tmp_path / "example.yaml"
    values.write_text(example)
    docs = render(helm, values=values)
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    assert "SUCCESS" in run([promtool, "check", "rules", str(rules)]).stdout
    assert alerts_of(rules)["TealOperatorAbsent"]["expr"] == 'absent(teal_build_info{job="teal-metrics"})'
    (service,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "teal-metrics"]  # the job's name
    assert [d["metadata"]["namespace"] for d in docs if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]] == [
        "monitoring"
    ]
