"""Chaos (issue 12): releases (6 in the suite; TEAL_CHAOS_RELEASES=20 in bench/bench_chaos.py) with Prometheus analysis while the operator is SIGKILLed at
random moments and the apiserver is restarted once; each release must end as an
undisturbed one would, and the active Service never loses its endpoints or mixes colours.

The analysis gate is a real Prometheus query whose answer depends on the release's
revision (`vector({{revision}} % 3)` must be at least 1): revisions 3, 6, 9, ... fail their
prePromotion analysis and must end Aborted with the stable colour still serving; the others
must end Healthy on the new colour. The kill moments come from a seeded random generator
(TEAL_CHAOS_SEED, default 12) and are printed, so a failing run can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from operator_helpers import EndpointRecorder, Env, OperatorProcess, rollout
from teal_devenv.wait import wait_for

RELEASES = int(os.environ.get("TEAL_CHAOS_RELEASES", "6"))
pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.timeout(120 + 30 * RELEASES)]
APISERVER_RESTART_AT = 4  # the release during which the apiserver is restarted
SEED = int(os.environ.get("TEAL_CHAOS_SEED", "12"))


def bad(revision: int) -> bool:
    return revision % 3 == 0


class Chaos:
    """SIGKILLs the operator at random moments (1-4 s apart) and starts it again at once."""

    def __init__(self, operator: OperatorProcess, rng: random.Random):
        self.operator, self.rng = operator, rng
        self.kills: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.rng.uniform(1.0, 4.0)):
            self.operator.kill(signal.SIGKILL)
            self.operator.start()
            self.kills.append(time.monotonic())
            print(f"chaos: operator SIGKILLed and restarted (kill {len(self.kills)} at {time.monotonic():.1f})")

    def __enter__(self) -> Chaos:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def ended(previous_revision: int):
    def check(st: dict) -> bool:
        rev = int(st.get("currentRevision") or 0)
        healthy = st.get("phase") == "Healthy" and st.get("stableRevision") == str(rev)
        return rev > previous_revision and (healthy or st.get("phase") == "Aborted")

    return check


def test_releases_end_as_undisturbed_ones_would_through_kills_and_an_apiserver_restart(
    cluster, k8s, teal_crds, namespace, prometheus, no_operator, tmp_path
):
    env = Env(k8s, namespace)
    env.create_service("app")
    env.create_service("app-preview")
    body = rollout(scaleDownDelaySeconds=1, abortScaleDownDelaySeconds=1)
    body["spec"]["analysis"] = {
        "prometheus": {"address": prometheus.url, "timeout": "3s"},
        "interval": "500ms",
        "count": 2,
        "prePromotion": ["gate"],
        "metrics": [{"name": "gate", "query": "vector({{revision}} % 3)", "thresholdRange": {"min": 1}}],
    }
    rng = random.Random(SEED)
    print(f"chaos seed {SEED}")
    operator = OperatorProcess(cluster.kubeconfig, tmp_path / "operator.log", extra_args=["--namespace", namespace])
    operator.start()
    outcomes: list[tuple[int, str, str]] = []
    try:
        env.create_rollout(body)
        st = env.wait_phase("Healthy", stableRevision="1", timeout=60)
        with EndpointRecorder(k8s, namespace, "app") as rec, Chaos(operator, rng) as chaos:
            for i in range(RELEASES):
                stable = st["stableColor"]
                t0 = time.monotonic()
                wait_for(lambda: env.set_image(f"v{i + 2}") or True, timeout=60, what="new template written")
                if i == APISERVER_RESTART_AT:
                    cluster.restart_apiserver()
                    print("chaos: kube-apiserver restarted")
                st = env.wait(ended(int(st["currentRevision"])), timeout=90, what=f"release {i + 1} ended")
                rev, new = int(st["currentRevision"]), ("green" if stable == "blue" else "blue")
                outcomes.append((rev, st["phase"], st.get("reason", "")))
                if bad(rev):
                    assert st["phase"] == "Aborted" and st["reason"] == "AnalysisFailed", st
                    assert st["stableColor"] == stable and env.selector_color("app") == stable, st
                    assert not any(c.get(new) for t, c in rec.timeline if t >= t0), "an aborted colour got traffic"
                else:
                    assert st["phase"] == "Healthy" and st["stableRevision"] == str(rev), st
                    assert st["stableColor"] == new, st
                    wait_for(lambda: env.selector_color("app") == new, timeout=30, what=f"app on {new}")
            wait_for(lambda: rec.ready_colors().get(st["stableColor"]) == 2, timeout=30, what="stable colour ready")
        rec.assert_safe()
        print(
            f"chaos: {len(outcomes)} releases {outcomes}, {len(chaos.kills)} operator kills, "
            "1 apiserver restart, 0 endpoint-invariant violations"
        )
        assert len(outcomes) == RELEASES and chaos.kills
        assert [p for _, p, _ in outcomes].count("Aborted") == sum(bad(r) for r, _, _ in outcomes) >= 2
    finally:
        operator.kill(signal.SIGTERM)
