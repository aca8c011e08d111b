"""The chart's notifications: targets rendered into the ConfigMap the operator reads (and that
its own parser accepts), a Role to read it and the targets' Secrets by name, the Deployment
pointed at it; nothing of it without targets; the values schema refuses a bad target."""

from __future__ import annotations

from pathlib import Path

import yaml

from cli_helpers import run
from teal import notify
from teal.main import parser
from test_helm_chart import by_kind, template

VALUES = """
notifications:
  targets:
  - {name: releases, type: cloudevents, url: "https://events.example.com/teal", headers: {X-Team: payments}}
  - {name: slack, type: slack, urlFrom: {secretKeyRef: {name: teal-slack, key: url}}, template: "*{rollout}* {event}: {message}"}
  - {name: teams, type: teams, urlFrom: {secretKeyRef: {name: teal-teams, key: url}}, card: messageCard}
  retry: {attempts: 4, initialDelaySeconds: 1, factor: 2, maxDelaySeconds: 30}
"""


def test_targets_render_to_a_configmap_the_operator_reads(helm, chart_dir, tmp_path: Path, monkeypatch):
    values = tmp_path / "values.yaml"
    values.write_text(VALUES)
    docs = template(helm, chart_dir, extra=["-f", str(values)])
    [cm] = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "teal-notifications"]
    config = notify.parse_config(cm["data"][notify.CONFIG_KEY])
    assert config.errors == () and set(config.targets) == {"releases", "slack", "teams"}
    assert config.targets["slack"].secret == ("teal-slack", "url") and config.targets["teams"].card == "messageCard"
    assert config.retry == notify.Retry(attempts=4, initial_delay=1, factor=2, max_delay=30)
    [role] = [d for d in by_kind(docs, "Role") if d["metadata"]["name"] == "teal-notifications"]
    assert role["metadata"]["namespace"] == "teal-system"
    assert {(r["resources"][0], tuple(r["resourceNames"])) for r in role["rules"]} == {
        ("configmaps", ("teal-notifications",)),
        ("secrets", ("teal-slack", "teal-teams")),
    }
    assert all(r["verbs"] == ["get"] for r in role["rules"])
    [binding] = [d for d in by_kind(docs, "RoleBinding") if d["metadata"]["name"] == "teal-notifications"]
    assert binding["roleRef"]["name"] == "teal-notifications" and binding["subjects"][0]["kind"] == "ServiceAccount"
    [dep] = by_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TEAL_NOTIFICATIONS_CONFIG"] == "teal-system/teal-notifications"
    monkeypatch.setenv("TEAL_NOTIFICATIONS_CONFIG", env["TEAL_NOTIFICATIONS_CONFIG"])  # teal run reads the same setting
    assert parser().parse_args(["run"]).notifications_config == "teal-system/teal-notifications"


def test_no_targets_no_notifications_objects(helm, chart_dir):
    docs = template(helm, chart_dir)
    assert not [d for d in docs if d["metadata"]["name"].endswith("-notifications")]
    [dep] = by_kind(docs, "Deployment")
    assert "TEAL_NOTIFICATIONS_CONFIG" not in {e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_schema_refuses_bad_targets(helm, chart_dir, tmp_path: Path):
    for bad, where in [
        ({"name": "x", "type": "email", "url": "https://x.example"}, "type"),
        ({"name": "x", "type": "slack"}, "oneOf"),  # neither url nor urlFrom
        ({"name": "x", "type": "slack", "url": "ftp://x.example"}, "url"),
    ]:
        values = tmp_path / "bad.yaml"
        values.write_text(yaml.safe_dump({"notifications": {"targets": [bad]}}))
        proc = run([helm, "template", "t", str(chart_dir), "-f", str(values)], check=False)
        assert proc.returncode != 0 and "values don't meet the specifications of the schema" in proc.stderr, (bad, proc.stderr)
        assert "/notifications/targets/0" in proc.stderr and where in proc.stderr, proc.stderr
