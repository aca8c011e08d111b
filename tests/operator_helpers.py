"""Fixtures and helpers to run the real operator against the local control plane."""

from __future__ import annotations

import copy
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from teal_devenv.operator import OperatorProcess
from teal_devenv.wait import wait_for

__all__ = ["OperatorProcess", "Env", "EndpointRecorder", "rollout", "pod_template", "service"]

REPO = Path(__file__).resolve().parent.parent
CRDS = sorted((REPO / "crds").glob("*.yaml"))


_SESSION_OPERATORS: list[OperatorProcess] = []


@pytest.fixture(scope="session")
def teal_operator(cluster, teal_crds, router_crds, tmp_path_factory):  # see cli_helpers, routing_helpers
    """The operator, cluster-wide, for the whole session (tests may kill and restart it).
    The routers' CRDs exist before it starts, as in a cluster that runs Gateway API/Istio."""
    op = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log").start()
    _SESSION_OPERATORS.append(op)
    try:
        yield op
    finally:
        _SESSION_OPERATORS.remove(op)
        op.kill(signal.SIGTERM)
        if os.environ.get("TEAL_SHOW_OPERATOR_LOG"):
            print(op.log_tail(200))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test shows the end of the session operator's log (CI keeps nothing else)."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for op in _SESSION_OPERATORS:
            tail = "\n".join(line for line in op.log_tail(400).splitlines() if "Unresolved resources" not in line)
            report.sections.append(("teal operator log (end)", "\n".join(tail.splitlines()[-60:])))


@pytest.fixture(scope="module")
def no_operator():
    """For tests that write Rollout statuses by hand: the session operator, if it runs,
    stops for the module (it would reconcile those Rollouts) and starts again after."""
    stopped = [op for op in _SESSION_OPERATORS if op.proc is not None and op.proc.poll() is None]
    for op in stopped:
        op.kill(signal.SIGTERM)
    yield
    for op in stopped:
        op.start()


# ------------------------------------------------------------------ objects


def service(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": dict(labels or {"app": "demo"}), "ports": [{"port": 80, "targetPort": 8080}]},
    }


def rollout(name: str = "app", image: str = "v1", replicas: int = 2, **blue_green: Any) -> dict[str, Any]:
    bg = {
        "activeServices": [name],
        "previewService": f"{name}-preview",
        "scaleDownDelaySeconds": 5,
        "abortScaleDownDelaySeconds": 2,
    }
    bg.update(blue_green)
    return {
        "apiVersion": "teal.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": pod_template(image),
            "strategy": {"blueGreen": bg},
        },
    }


def pod_template(image: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "demo"}},
        "spec": {"containers": [{"name": "app", "image": f"example.com/app:{image}"}], **spec},
    }


class Env:
    """One namespace's view for a test: create objects, read Rollouts, wait for states."""

    def __init__(self, api_client, namespace: str):
        self.api = api_client
        self.ns = namespace
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    def create_service(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.core.create_namespaced_service(self.ns, service(name, labels))

    def create_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object("teal.dev", "v1alpha1", self.ns, "rollouts", body)

    def get(self, name: str = "app") -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            "teal.dev", "v1alpha1", self.ns, "rollouts", name, _request_timeout=(5, 15)
        )

    def status(self, name: str = "app") -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def patch_spec(self, patch: dict[str, Any], name: str = "app") -> None:
        self.custom.patch_namespaced_custom_object("teal.dev", "v1alpha1", self.ns, "rollouts", name, {"spec": patch})

    def set_image(self, image: str, name: str = "app", labels: dict[str, str] | None = None, **pod_spec: Any) -> None:
        template = pod_template(image, **pod_spec)
        if labels:
            template["metadata"]["labels"] = dict(labels)
        self.patch_spec({"template": template}, name)

    def patch_status(self, patch: dict[str, Any], name: str = "app") -> None:
        self.custom.patch_namespaced_custom_object_status("teal.dev", "v1alpha1", self.ns, "rollouts", name, {"status": patch})

    def promote(self, name: str = "app", full: bool = False) -> None:
        st = self.status(name)
        self.patch_status({"promote": {"revision": st["currentRevision"], "step": st.get("currentStep"), "full": full}}, name)

    def abort(self, name: str = "app") -> None:
        st = self.status(name)
        self.patch_status(
            {"abort": {"revision": st["currentRevision"], "reason": "AbortedByUser", "message": "aborted by the test"}}, name
        )

    def retry(self, name: str = "app") -> None:
        self.patch_status({"abort": None}, name)

    def selector_color(self, service_name: str) -> str | None:
        svc = self.core.read_namespaced_service(service_name, self.ns)
        return (svc.spec.selector or {}).get("teal.dev/color")

    def replicas(self, color: str, name: str = "app") -> int | None:
        try:
            return self.apps.read_namespaced_deployment(f"{name}-{color}", self.ns).spec.replicas
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def wait(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 60, name: str = "app", what: str = "rollout condition"
    ) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            last = self.status(name)
            return bool(pred(last))

        try:
            wait_for(check, timeout=timeout, interval=0.1, what=what)
        except Exception as e:
            raise AssertionError(f"{what}: not reached in {timeout}s; status: {last}") from e
        return last

    def wait_phase(self, phase: str, timeout: float = 60, name: str = "app", **fields: Any) -> dict[str, Any]:
        return self.wait(
            lambda s: s.get("phase") == phase and all(str(s.get(k)) == str(v) for k, v in fields.items()),
            timeout,
            name,
            what=f"phase {phase} {fields}",
        )

    def two_releases(self, timeout: float = 90) -> dict[str, Any]:
        """Services app/app-preview, a first release on blue, then v2 promoted to green; the last status."""
        self.create_service("app")
        self.create_service("app-preview")
        self.create_rollout(rollout())
        self.wait_phase("Healthy", activeColor="blue", stableRevision="1", timeout=timeout)
        self.set_image("v2")
        st = self.wait_phase("Healthy", activeColor="green", stableRevision="2", timeout=timeout)
        assert self.selector_color("app") == "green" and st["stats"]["promoted"] == 2, st
        return st

    def events(self, name: str = "app") -> list[str]:
        evs = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}")
        return [e.reason for e in evs.items]


def app_env(api_client, namespace: str) -> Env:
    """A namespace's Env with the Services app and app-preview (what `rollout()` names)."""
    e = Env(api_client, namespace)
    e.create_service("app")
    e.create_service("app-preview")
    return e


def live_rollout(e: Env) -> Env:
    """Rollout app live on blue: promotion by hand, the old colour kept warm for 300 s."""
    e.create_rollout(rollout(autoPromote=False, scaleDownDelaySeconds=300))
    e.wait_phase("Healthy", activeColor="blue", stableRevision="1")
    return e


@pytest.fixture
def env(k8s, namespace, teal_operator) -> Env:
    """A fresh namespace with the Services app and app-preview; the session's operator runs."""
    return app_env(k8s, namespace)


_POD_COLOR = re.compile(r"-(blue|green)-[a-z0-9]+-[a-z0-9]+$")


class EndpointRecorder:
    """Watches a Service's EndpointSlices and records ready endpoints per colour over time."""

    def __init__(self, api_client, namespace: str, service_name: str):
        self.api = kubernetes.client.DiscoveryV1Api(api_client)
        self.ns = namespace
        self.service = service_name
        self.slices: dict[str, list] = {}
        self.timeline: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> EndpointRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        sel = f"kubernetes.io/service-name={self.service}"
        while not self._stop.is_set():
            w = kubernetes.watch.Watch()
            try:
                for ev in w.stream(self.api.list_namespaced_endpoint_slice, self.ns, label_selector=sel, timeout_seconds=2):
                    obj = ev["object"]
                    with self._lock:
                        if ev["type"] == "DELETED":
                            self.slices.pop(obj.metadata.name, None)
                        else:
                            self.slices[obj.metadata.name] = list(obj.endpoints or [])
                        self._record()
                    if self._stop.is_set():
                        break
            except Exception:  # a dropped watch: start again
                time.sleep(0.05)
            finally:
                w.stop()

    def _record(self) -> None:
        counts: dict[str, int] = {}
        for endpoints in self.slices.values():
            for ep in endpoints:
                if not (ep.conditions and ep.conditions.ready):
                    continue
                name = ep.target_ref.name if ep.target_ref else ""
                m = _POD_COLOR.search(name)
                color = m.group(1) if m else "other"
                counts[color] = counts.get(color, 0) + len(ep.addresses or [])
        if not self.timeline or self.timeline[-1][1] != counts:
            self.timeline.append((time.monotonic(), counts))

    def ready_colors(self) -> dict[str, int]:
        with self._lock:
            return dict(self.timeline[-1][1]) if self.timeline else {}

    def assert_safe(self) -> None:
        """Once any endpoint was ready, never zero; never two colours at once."""
        seen_ready = False
        for t, counts in self.timeline:
            total = sum(counts.values())
            if total:
                seen_ready = True
            elif seen_ready:
                raise AssertionError(f"Service {self.service} had no ready endpoints at {t}: {self.timeline}")
            colors = [c for c, n in counts.items() if n]
            assert len(colors) <= 1, f"Service {self.service} mixed colours {counts}: {self.timeline}"


def deep(d: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(d)
