"""An in-memory world for exercising teal.core.decide() without a cluster.

Deployments become ready `ready_after` ticks after they are changed; Services and routes
take actions at once. `World.tick()` runs one reconcile: observe, decide, apply.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from teal import core
from teal.api import COLORS, parse_spec, template_hash


def rollout_spec(**bg: Any) -> dict[str, Any]:
    blue_green = {
        "activeServices": ["app"],
        "previewService": "app-preview",
        "scaleDownDelaySeconds": 30,
        "abortScaleDownDelaySeconds": 10,
        "progressDeadlineSeconds": 120,
    }
    blue_green.update(bg)
    return {
        "replicas": 3,
        "selector": {"matchLabels": {"app": "demo"}},
        "template": template("v1"),
        "strategy": {"blueGreen": blue_green},
    }


def template(image: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "demo"}},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


@dataclasses.dataclass
class Dep:
    hash: str | None = None
    replicas: int = 0
    ready: int = 0
    changed_at_tick: int = 0
    broken: bool = False  # pods never turn ready


@dataclasses.dataclass
class World:
    spec: dict[str, Any]
    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    deployments: dict[str, Dep] = dataclasses.field(default_factory=dict)
    services: dict[str, str | None] = dataclasses.field(default_factory=dict)
    weights: dict[str, int] | None = None
    now: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ticks: int = 0
    ready_after: int = 1
    analysis: core.AnalysisRun | None = None
    broken_hashes: set = dataclasses.field(default_factory=set)
    history: list = dataclasses.field(default_factory=list)
    events: list = dataclasses.field(default_factory=list)
    last_observed: core.Observed | None = None
    refused: dict = dataclasses.field(default_factory=dict)  # hash -> (code, message): its Deployment is refused
    forbidden_pods: dict = dataclasses.field(default_factory=dict)  # hash -> ReplicaFailure message
    rejection: core.Rejection | None = None  # the last refused DeployColor, until a decision saw it

    def __post_init__(self) -> None:
        bg = self.spec["strategy"]["blueGreen"]
        for name in bg["activeServices"]:
            self.services.setdefault(name, None)
        if bg.get("previewService"):
            self.services.setdefault(bg["previewService"], None)
        if bg.get("trafficRouting") and self.weights is None:
            self.weights = {"blue": 0, "green": 0}

    # -- the world's own progress (the Deployment controller and kubelets)
    def _settle(self) -> None:
        for dep in self.deployments.values():
            if dep.broken or dep.hash in self.broken_hashes or dep.hash in self.forbidden_pods:
                dep.ready = 0
            elif self.ticks - dep.changed_at_tick >= self.ready_after:
                dep.ready = dep.replicas
            else:
                dep.ready = min(dep.ready, dep.replicas)

    def observe(self) -> core.Observed:
        tpl = self.spec["template"]
        colors = {}
        for c in COLORS:
            d = self.deployments.get(c)
            if d is None:
                colors[c] = core.ColorObs()
            else:
                fresh = d.ready if d.ready <= d.replicas else d.replicas
                colors[c] = core.ColorObs(True, d.hash, d.replicas, d.ready, fresh, True, failure=self.forbidden_pods.get(d.hash))
        return core.Observed(
            template=tpl,
            template_hash=template_hash(tpl),
            colors=colors,
            services={n: core.ServiceObs(True, c) for n, c in self.services.items()},
            weights=dict(self.weights) if self.weights is not None else None,
            analysis=self.analysis,
            rejected=self.rejection,
        )

    def apply(self, action: core.Action) -> None:
        if isinstance(action, core.DeployColor):
            if action.hash in self.refused:
                code, message = self.refused[action.hash]
                self.rejection = core.Rejection(action.color, action.hash, action.replicas, code, message)
                return
            d = self.deployments.setdefault(action.color, Dep())
            if d.hash != action.hash:
                d.ready = 0
                d.changed_at_tick = self.ticks
            elif action.replicas > d.replicas:
                d.changed_at_tick = self.ticks
            d.hash, d.replicas = action.hash, action.replicas
        elif isinstance(action, core.ScaleColor):
            d = self.deployments.setdefault(action.color, Dep())
            if action.replicas > d.replicas:
                d.changed_at_tick = self.ticks
            d.replicas = action.replicas
        elif isinstance(action, core.SelectColor):
            self.services[action.service] = action.color
        elif isinstance(action, core.SetWeights):
            self.weights = action.as_dict()

    def tick(self, seconds: float = 1.0) -> core.Plan:
        self.now += dt.timedelta(seconds=seconds)
        self.ticks += 1
        self._settle()
        self.last_observed = self.observe()
        plan = core.decide(parse_spec(self.spec), self.status, self.last_observed, self.now, generation=1)
        self.status = plan.status
        self.rejection = None  # recorded in status by that decision
        for a in plan.actions:
            self.apply(a)
        self.events.extend(plan.events)
        self.history.append((self.ticks, dict(self.services), dict(self.weights or {}), plan))
        return plan

    def run(self, n: int = 10, seconds: float = 1.0) -> core.Plan:
        plan = None
        for _ in range(n):
            plan = self.tick(seconds)
        assert plan is not None
        return plan

    def until(self, pred, n: int = 200, seconds: float = 1.0) -> core.Plan:
        for _ in range(n):
            plan = self.tick(seconds)
            if pred(self):
                return plan
        raise AssertionError(f"condition not reached; status={self.status}")

    def set_image(self, image: str) -> None:
        self.spec["template"] = template(image)

    def ready(self, color: str) -> int:
        d = self.deployments.get(color)
        return d.ready if d else 0

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]
