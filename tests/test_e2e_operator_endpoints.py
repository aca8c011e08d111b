"""The operator's own endpoints, as the Helm chart's probes and ServiceMonitor use them:
liveness on /healthz, and Prometheus metrics that answer "how often do we ship, and how
often does it hurt?"."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from operator_helpers import Env, OperatorProcess, rollout
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def test_probes_and_release_metrics(cluster, k8s, namespace, teal_crds, teal_operator, tmp_path):
    live, metrics = free_port(), free_port()
    teal_operator.kill()  # one operator at a time: this one counts the releases
    op = OperatorProcess(
        cluster.kubeconfig, tmp_path / "op.log", ["-A", "--liveness-port", str(live), "--metrics-port", str(metrics)]
    ).start()
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{live}/healthz"), timeout=30, what="liveness endpoint")
        env = Env(k8s, namespace)
        env.create_service("app")
        env.create_service("app-preview")
        env.create_rollout(rollout(autoPromote=False))
        env.wait_phase("Healthy", stableRevision="1")
        env.set_image("v2")
        env.wait_phase("Paused")
        env.abort()
        env.wait_phase("Aborted")
        env.set_image("v3")
        env.wait_phase("Paused", currentRevision="3")
        env.promote()
        env.wait_phase("Healthy", stableRevision="3")

        def samples() -> dict[tuple, float]:
            out = {}
            for family in text_string_to_metric_families(get(f"http://127.0.0.1:{metrics}/metrics")):
                for smp in family.samples:
                    if smp.labels.get("namespace") == namespace:
                        out[(smp.name, smp.labels.get("outcome") or smp.labels.get("phase"))] = smp.value
            return out

        want = {
            ("teal_releases_total", "started"): 3,
            ("teal_releases_total", "promoted"): 2,
            ("teal_releases_total", "aborted"): 1,
        }
        wait_for(lambda: all(samples().get(k) == v for k, v in want.items()), timeout=10, what="release counters")
        got = samples()
        assert got[("teal_rollout_phase", "Healthy")] == 1 and got[("teal_rollout_phase", "Aborted")] == 0
        assert got[("teal_release_duration_seconds_count", None)] == 2
        assert "teal_reconcile_duration_seconds_count" in get(f"http://127.0.0.1:{metrics}/metrics")
    finally:
        op.stop()
        teal_operator.start()
