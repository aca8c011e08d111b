"""docs/metrics.md lists exactly the metrics the operator registers: name, type and labels,
both ways (a metric added without its reference fails here, and so does a stale entry)."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import teal

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
ROW = re.compile(r"^\|\s*`(teal_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|")


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            assert m.group(1) not in out, f"{m.group(1)} is listed twice"
            out[m.group(1)] = (m.group(2), tuple(re.findall(r"`(\w+)`", m.group(3))))
    return out


def registered() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every teal_* metric of every module of the operator's package (imported here, so that a
    metric defined outside teal.metrics counts too)."""
    for info in pkgutil.walk_packages(teal.__path__, "teal."):
        importlib.import_module(info.name)
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for family in REGISTRY.collect():
        if family.name.startswith("teal_"):
            name = family.name + ("_total" if family.type == "counter" else "")
            out[name] = (family.type, ())
    import sys

    for module in [m for n, m in sys.modules.items() if n == "teal" or n.startswith("teal.")]:
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase) and obj._name.startswith("teal_"):
                name = obj._name + ("_total" if obj._type == "counter" else "")
                out[name] = (obj._type, tuple(obj._labelnames))
    return out


def test_every_metric_is_in_the_reference_and_every_reference_is_a_metric():
    doc, reg = documented(), registered()
    assert len(doc) >= 20
    assert sorted(set(reg) - set(doc)) == [], "exposed but not in docs/metrics.md"
    assert sorted(set(doc) - set(reg)) == [], "in docs/metrics.md but not exposed"
    for name, (kind, labels) in reg.items():
        assert doc[name] == (kind, labels), f"{name}: docs/metrics.md says {doc[name]}, the registry {kind, labels}"


def test_per_rollout_metrics_are_forgotten_and_labels_are_bounded():
    from teal import metrics

    for name, (_, labels) in registered().items():
        assert not {"revision", "hash", "image", "pod"} & set(labels), name
        if labels[:2] == ("namespace", "rollout"):
            collectors = [c for c in metrics.PER_ROLLOUT if c._name + ("_total" if c._type == "counter" else "") == name]
            assert collectors, f"{name} has a series per Rollout but is not in metrics.PER_ROLLOUT (never forgotten)"
