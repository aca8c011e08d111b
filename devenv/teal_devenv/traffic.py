"""Traffic that follows the cluster: a load generator that splits its requests between the
local processes playing each colour exactly as the cluster says traffic should go.

Pods on kwok nodes run nothing, so a local fake app stands in for each colour's pods. This
thread reads, every `period` seconds, what a real data plane would obey:
- the active Service's selector (`teal.dev/color`), or the weights of the Rollout's route
  when it has one (read through the same router Teal uses, from the cluster), and
- the preview Service's selector, which gets `preview_share` of the requests,
and re-weights the LoadGenerator. It only ever sends to loopback addresses and stops by
itself after `duration` seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import kubernetes

from teal.api import LABEL_COLOR

from .fakeapp import LoadGenerator


class ClusterTraffic:
    def __init__(
        self,
        api_client,
        namespace: str,
        apps: Mapping[str, Any],  # colour -> FakeAppProcess / FakeApp (has .url)
        active_service: str,
        preview_service: str | None = None,
        router=None,  # a teal.routers Router: weights from the route instead of the selector
        rps: float = 40.0,
        duration: float = 600.0,
        preview_share: float = 0.2,
        period: float = 0.2,
    ):
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.ns = namespace
        self.apps = dict(apps)
        self.active_service = active_service
        self.preview_service = preview_service
        self.router = router
        self.preview_share = preview_share
        self.period = period
        self.split: dict[str, float] = {}
        first = next(iter(self.apps.values()))
        self.load = LoadGenerator({first.url: 1}, rps=rps, duration=duration)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-traffic", daemon=True)

    def _selector_color(self, name: str | None) -> str | None:
        if not name:
            return None
        try:
            svc = self.core.read_namespaced_service(name, self.ns, _request_timeout=(2, 5))
        except Exception:
            return None
        return (svc.spec.selector or {}).get(LABEL_COLOR)

    def current_split(self) -> dict[str, float]:
        """{colour: share of requests} as the cluster routes them now."""
        split: dict[str, float] = {}
        if self.router is not None:
            try:
                weights = self.router.get_weights()
                split = {c: w / 100.0 for c, w in weights.items() if w > 0}
            except Exception:
                split = {}
        if not split:
            active = self._selector_color(self.active_service)
            if active:
                split = {active: 1.0}
        preview = self._selector_color(self.preview_service)
        if preview and self.preview_share > 0 and split and preview not in split:
            split = {c: s * (1 - self.preview_share) for c, s in split.items()}
            split[preview] = self.preview_share
        return split

    def _run(self) -> None:
        while not self._stop.is_set() and self.load.running:
            split = self.current_split()
            if split and split != self.split:
                targets = {self.apps[c].url: s for c, s in split.items() if c in self.apps and s > 0}
                if targets:
                    self.load.set_weights(targets)
                    self.split = split
            self._stop.wait(self.period)

    def start(self) -> ClusterTraffic:
        self.split = {}
        split = self.current_split()
        if split:
            self.load.set_weights({self.apps[c].url: s for c, s in split.items() if c in self.apps and s > 0})
            self.split = split
        self.load.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.load.stop()
        self._thread.join(5)

    def __enter__(self) -> ClusterTraffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
