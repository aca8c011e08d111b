"""What the operator sends to the apiserver: a release, and an idle operator (issue 10).

The real operator (teal.main.build: the informers and the caching client, kopf for the rest)
runs in this process against the local control plane, so its teal.client request counter can be
read directly. Reads come from the informers' caches, so a release costs only its writes, and
an operator with nothing to do sends nothing (watch requests and their bookmarks aside).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Iterator
from typing import Any

import kopf
import pytest

from operator_helpers import Env, rollout
from teal import controller as teal_controller
from teal import core
from teal.client import Client
from teal.controller import Controller, Settings, informers_for
from teal.informer import CachingClient
from teal.kube import TIMEOUT, Kube
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

MAX_REQUESTS_PER_RELEASE = 17  # Argo Rollouts v1.8.3 sends 17.6 for the same release (issue 10)


class InProcessOperator:
    """teal run, in a thread with its own event loop: the Controller on the caching client and
    informers as teal.main.build makes it, Teal's kopf registry, kopf logged in by the kubeconfig."""

    def __init__(self, kubeconfig: str, namespace: str):
        self.settings = Settings(namespaces=[namespace], routers=())
        client = Client.from_kubeconfig(kubeconfig, timeout=TIMEOUT)
        self.ctl = Controller(Kube(CachingClient(client, informers_for(client, self.settings))), self.settings)
        self.registry = teal_controller.registry(self.ctl)
        kopf.on.login(registry=self.registry)(kopf.login_with_kubeconfig)  # reads $KUBECONFIG
        self.stop_flag, self.ready = threading.Event(), threading.Event()
        self.crashed: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="teal-operator", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=self.registry,
                    namespaces=self.settings.namespaces,
                    standalone=True,
                    stop_flag=self.stop_flag,
                    ready_flag=self.ready,
                )
            )
        except BaseException as e:  # reported by the test
            self.crashed.append(e)

    def __enter__(self) -> InProcessOperator:
        self.thread.start()
        wait_for(lambda: self.ready.is_set() or self.crashed, timeout=30, what="kopf started")
        wait_for(lambda: self.ctl.ready.is_set() or self.crashed, timeout=60, what="informers synced")
        assert not self.crashed, self.crashed
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join(20)
        self.ctl.kube.close()
        assert not self.thread.is_alive(), "the operator did not stop within 20 s"

    def requests(self) -> collections.Counter[tuple[str, str]]:
        """Requests sent so far, watches left out."""
        return collections.Counter({k: v for k, v in self.ctl.kube.client.requests.items() if k[0] != "watch"})

    def quiet(self, seconds: float = 1.0) -> collections.Counter[tuple[str, str]]:
        """Wait until no request was sent for `seconds`; the count then."""
        last: list[Any] = [self.requests(), time.monotonic()]

        def settled() -> bool:
            now = self.requests()
            if now != last[0]:
                last[:] = [now, time.monotonic()]
                return False
            return time.monotonic() - last[1] >= seconds

        wait_for(settled, timeout=30, interval=0.1, what="no more requests")
        return last[0]


@pytest.fixture
def decisions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The loops wake every second (not every 30 s), so a short idle window holds many resyncs;
    yields the names of the Rollouts core.decide ran for, in order."""
    monkeypatch.setattr(teal_controller, "RESYNC_SECONDS", 1.0)
    seen: list[str] = []
    decide = core.decide

    def counting(spec: Any, status: Any, observed: Any, now: Any, generation: Any = None) -> core.Plan:
        seen.append(str(generation))
        return decide(spec, status, observed, now, generation)

    monkeypatch.setattr(core, "decide", counting)
    yield seen


def test_a_release_costs_at_most_17_requests_and_an_idle_operator_none(
    cluster, teal_crds, k8s, namespace, no_operator, decisions, monkeypatch
):
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)  # for kopf's login
    env = Env(k8s, namespace)
    for svc in ("app", "app-preview"):
        env.create_service(svc)
    with InProcessOperator(cluster.kubeconfig, namespace) as op:
        env.create_rollout(rollout(scaleDownDelaySeconds=0))
        env.wait_phase("Healthy", activeColor="blue", stableRevision="1")
        wait_for(lambda: env.replicas("blue") == 2, timeout=30, what="blue at full size")
        before = op.quiet()

        # idle: many resyncs of the loop, no request (a decision that changed nothing is not repeated)
        loop = op.ctl.loops[(namespace, "app")]
        decided = len(decisions)
        time.sleep(5)  # the idle window itself is what is measured: five resyncs at RESYNC_SECONDS=1
        idle = op.requests() - before
        assert not idle, f"an idle operator sent {dict(idle)}"
        assert len(decisions) == decided, "an idle Rollout was decided again"
        assert loop.quiet is not None

        # one release: template patch -> switched, Healthy, old colour scaled down
        before = op.requests()
        env.set_image("v2")
        st = env.wait_phase("Healthy", activeColor="green", stableRevision="2")
        wait_for(lambda: env.replicas("blue") == 0, timeout=30, what="blue scaled down")
        assert env.selector_color("app") == env.selector_color("app-preview") == "green"
        used = op.quiet() - before
        total = sum(used.values())
        print(f"requests for one release: {total}: {dict(sorted(used.items()))}")
        assert total <= MAX_REQUESTS_PER_RELEASE, dict(used)
        assert not {k for k in used if k[0] in ("get", "list")}, f"reads went to the apiserver: {dict(used)}"
        assert st["stats"]["promoted"] == 2
