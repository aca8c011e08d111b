"""`teal-sandbox`: Teal's main job on a local default, in a few minutes, without a cluster.

It starts a real local control plane (etcd, kube-apiserver, controller-manager, scheduler,
kwok fake nodes) and a real Prometheus, runs the operator against them, and walks a demo
Rollout through a release, printing what happens. Pods on fake nodes run nothing, so two
local processes play the blue and green versions: they serve requests and export
`http_requests_total`, a load generator sends them traffic split exactly as the cluster's
Services say, and Prometheus scrapes them every second as the cluster's real pods: it
discovers the pods (with kubernetes_sd's meta labels) and labels each target `namespace`,
`pod`, `container`, as a PodMonitor would, the process of the pod's colour answering for it. The Rollout's analysis queries that Prometheus on those labels, as it would in
a real cluster, so its verdicts are real.

    teal-sandbox                 # first release, then a good release: analysed and promoted
    teal-sandbox --bad-release   # ... then a bad release: caught by analysis, traffic stays on stable
    teal-sandbox --keep          # leave everything running (prints KUBECONFIG) until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .wait import WaitTimeout, wait_for

NS = "demo"
NAME = "checkout"


def _say(msg: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"{stamp}  {msg}", flush=True)


def rollout_manifest(image: str, prometheus: str) -> dict[str, Any]:
    error_rate = (  # the colour's pods, by the labels Prometheus gives any pod (docs/analysis-queries.md)
        'sum(rate(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}",code=~"5.."}[10s]))'
        ' / sum(rate(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}"}[10s]))'
    )
    return {
        "apiVersion": "teal.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": NAME}},
            "template": {
                "metadata": {"labels": {"app": NAME}},
                "spec": {"containers": [{"name": "app", "image": f"registry.example.com/checkout:{image}"}]},
            },
            "strategy": {
                "blueGreen": {
                    "activeServices": [NAME],
                    "previewService": f"{NAME}-preview",
                    "autoPromote": True,
                    "scaleDownDelaySeconds": 20,
                    "abortScaleDownDelaySeconds": 5,
                    "progressDeadlineSeconds": 300,
                }
            },
            "analysis": {
                "prometheus": {"address": prometheus, "timeout": "5s"},
                "interval": "3s",
                "count": 3,
                "initialDelay": "8s",  # a new colour's pods are discovered and scraped after 4-6 s
                "prePromotion": ["error-rate"],
                "postPromotion": ["error-rate"],
                "metrics": [
                    {"name": "error-rate", "query": error_rate, "thresholdRange": {"max": 0.05}, "noData": "inconclusive"},
                ],
            },
        },
    }


class Watcher(threading.Thread):
    """Prints each change of the Rollout's phase/message and each new Event."""

    def __init__(self, api_client):
        super().__init__(daemon=True, name="sandbox-watch")
        import kubernetes

        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.stop_flag = threading.Event()
        self.seen_events: set[str] = set()
        self.last = None
        self.status: dict[str, Any] = {}

    def run(self) -> None:
        while not self.stop_flag.is_set():
            with contextlib.suppress(Exception):
                body = self.custom.get_namespaced_custom_object(
                    "teal.dev", "v1alpha1", NS, "rollouts", NAME, _request_timeout=(2, 5)
                )
                st = body.get("status") or {}
                self.status = st
                key = (st.get("phase"), st.get("message"))
                if key != self.last and st.get("phase"):
                    self.last = key
                    _say(f"[{st['phase']:<11}] {st.get('message', '')}")
                evs = self.core.list_namespaced_event(NS, field_selector=f"involvedObject.name={NAME}", _request_timeout=(2, 5))
                for ev in sorted(evs.items, key=lambda e: e.metadata.creation_timestamp):
                    if ev.metadata.name not in self.seen_events:
                        self.seen_events.add(ev.metadata.name)
                        _say(f"  event {ev.type:<7} {ev.reason}: {ev.message}")
            self.stop_flag.wait(0.25)

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """The Rollout's status once ``pred`` holds for it; the sandbox ends when it does not in time."""

        def holds() -> dict[str, Any] | None:
            status = self.status  # one snapshot: the watcher thread replaces it
            return status if status and pred(status) else None

        try:
            return wait_for(holds, timeout=timeout, what=what, ignore=())
        except WaitTimeout:
            raise SystemExit(f"sandbox: timed out after {timeout:.0f}s waiting for {what}; last status: {self.status}") from None


@dataclasses.dataclass
class Sandbox:
    """What runs for the demo: the cluster's clients, the two colours' processes, the traffic, the watcher."""

    custom: Any  # kubernetes.client.CustomObjectsApi
    apps: dict[str, Any]  # colour -> FakeAppProcess
    traffic: Any  # ClusterTraffic
    watcher: Watcher
    kubeconfig: str
    prometheus_url: str

    def first_release(self) -> None:
        self.custom.create_namespaced_custom_object(
            "teal.dev", "v1alpha1", NS, "rollouts", rollout_manifest("1.0.0", self.prometheus_url)
        )

    def release(self, image: str) -> None:
        """A new version: the Rollout's template gets another image, and the commit time CI
        would stamp (teal.dev/source-time; here: as if committed 20 minutes earlier)."""
        committed = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
        template = {
            "metadata": {
                "labels": {"app": NAME},
                "annotations": {"teal.dev/source-time": committed.isoformat(timespec="seconds")},
            },
            "spec": {"containers": [{"name": "app", "image": f"registry.example.com/checkout:{image}"}]},
        }
        self.custom.patch_namespaced_custom_object("teal.dev", "v1alpha1", NS, "rollouts", NAME, {"spec": {"template": template}})


def start_sandbox(stack: contextlib.ExitStack, workdir: Path, t0: float) -> Sandbox:
    """Start the control plane, Prometheus, the colours' processes, the operator, the Services,
    the watcher and the traffic; ``stack`` stops them all."""
    import kubernetes

    from .cluster import LocalCluster
    from .crds import crd_documents, install_crds, teal_crd_files
    from .fakeapp import run_fakeapp
    from .operator import OperatorProcess
    from .prometheus import LocalPrometheus
    from .traffic import ClusterTraffic

    _say("starting a local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok) ...")
    cluster = stack.enter_context(LocalCluster(workdir / "cluster", keep_logs=True))
    _say(f"control plane ready in {time.monotonic() - t0:.1f}s at {cluster.server}")
    prom = stack.enter_context(LocalPrometheus(workdir / "prometheus", keep_logs=True))
    _say(f"Prometheus ready at {prom.url}")
    api = cluster.api_client()
    install_crds(api, crd_documents(teal_crd_files()))
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NS}})
    apps = {c: stack.enter_context(run_fakeapp(c, NS)) for c in ("blue", "green")}
    stack.enter_context(prom.scrape_pods(NS, api, NS, {c: a.target for c, a in apps.items()}, rollout=NAME))
    _say(
        f"the blue and green versions run as local processes: {apps['blue'].url}, {apps['green'].url};"
        " Prometheus discovers the Rollout's pods and scrapes each through its colour's process"
    )

    operator = stack.enter_context(
        OperatorProcess(cluster.kubeconfig, workdir / "operator.log", ["--all-namespaces", "--prometheus-address", prom.url])
    )
    _say(f"operator started (pid {operator.pid}, log {workdir / 'operator.log'})")

    for svc in (NAME, f"{NAME}-preview"):
        core.create_namespaced_service(
            NS, {"metadata": {"name": svc}, "spec": {"selector": {"app": NAME}, "ports": [{"port": 80, "targetPort": 8080}]}}
        )
    watcher = Watcher(api)
    watcher.start()
    stack.callback(watcher.stop_flag.set)
    traffic = stack.enter_context(ClusterTraffic(api, NS, apps, NAME, f"{NAME}-preview", rps=40, duration=1200))
    custom = kubernetes.client.CustomObjectsApi(api)
    assert cluster.kubeconfig is not None and prom.url is not None  # both started
    return Sandbox(custom, apps, traffic, watcher, cluster.kubeconfig, prom.url)


def bad_release(sb: Sandbox, active: str) -> bool:
    """Release 3, failing 30% of its requests: True when analysis caught it and it was aborted."""
    bad = "blue" if active == "green" else "green"
    sb.apps[bad].set(error_rate=0.3)
    _say(f"== release 3: a bad version ({bad} fails 30% of requests)")
    sb.release("1.2.0-bad")
    st = sb.watcher.wait(
        lambda s: s.get("phase") in ("Aborted", "Healthy") and s.get("currentRevision") == "3", 300, "release 3 to end"
    )
    if st["phase"] != "Aborted":
        _say("UNEXPECTED: the bad release was promoted")
        return False
    with contextlib.suppress(WaitTimeout):  # the preview Service follows a moment after the status
        wait_for(lambda: bad not in sb.traffic.split, timeout=5, interval=0.1, what="the preview traffic to stop")
    _say(f"the bad release was aborted; all traffic on {st['activeColor']} (traffic now {sb.traffic.split})")
    for m in (st.get("analysis") or [])[-3:]:
        value = "no data" if m.get("value") is None else f"{m['value']:.4g}"
        _say(f"  measured {m.get('metric')} on {m.get('color')}: {value} -> {m.get('verdict')} ({m.get('message', '')})")
    return True


def print_stats(sb: Sandbox) -> None:
    """What `kubectl teal stats -n demo` prints now (teal.cli_stats, read from status.history)."""
    from teal import cli_stats
    from teal.client import Client

    _say(f"$ kubectl teal stats -n {NS} --since 1d")
    api = Client.from_kubeconfig(sb.kubeconfig)
    try:
        cli_stats.run(api, NS, False, None, since="1d", out=sys.stdout)
    finally:
        api.close()
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.dir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        t0 = time.monotonic()
        sb = start_sandbox(stack, workdir, t0)
        _say("== release 1: the first version simply becomes active")
        sb.first_release()
        sb.watcher.wait(lambda s: s.get("phase") == "Healthy" and s.get("stableRevision") == "1", 180, "release 1")

        _say("== release 2: a good version; analysed before any traffic, switched atomically, analysed again")
        sb.release("1.1.0")
        st = sb.watcher.wait(lambda s: s.get("phase") == "Healthy" and s.get("stableRevision") == "2", 300, "release 2")
        _say(f"release 2 is live on {st['activeColor']}; traffic now {sb.traffic.split}")
        if args.bad_release and not bad_release(sb, st["activeColor"]):
            return 1
        totals = sb.traffic.load.totals()
        stats = sb.watcher.status.get("stats", {})
        _say(
            f"summary: releases {stats.get('releases', 0)}, promoted {stats.get('promoted', 0)}, "
            f"aborted {stats.get('aborted', 0)}; requests sent {sum(totals.values())} {dict(totals)}"
        )
        print_stats(sb)
        _say(f"done in {time.monotonic() - t0:.0f}s")
        if args.keep:
            _say(f"everything keeps running: export KUBECONFIG={sb.kubeconfig}; Ctrl-C stops it")
            with contextlib.suppress(KeyboardInterrupt):
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
        _say("stopping the operator, Prometheus and the control plane")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="teal-sandbox", description=__doc__.split("\n\n")[0])
    p.add_argument("--bad-release", action="store_true", help="also release a bad version and watch it get reverted")
    p.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    p.add_argument("--dir", default=os.environ.get("TEAL_SANDBOX_DIR", ".teal/sandbox"), help="work folder")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
