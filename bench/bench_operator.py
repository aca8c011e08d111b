"""The operator's own reaction time on the local control plane.

- switch latency: from the moment the new colour's Deployment reports all pods available
  (seen on a watch) to the moment the active Service's selector names it (seen on a watch);
- revert latency: from the moment an abort is written to status (after a switch, during
  post-promotion analysis) to the moment the Service selects the stable colour again.

Both ends are observed by this process's own watches, so the figures include the
apiserver's watch delivery but not the kubelet (there is none: kwok). Prints p50/p90/p99.

    python bench/bench_operator.py [--releases 20]
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import kubernetes

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "devenv"))  # teal_devenv, when not installed

from stats import summary  # noqa: E402

from teal_devenv.cluster import LocalCluster  # noqa: E402
from teal_devenv.crds import crd_documents, install_crds  # noqa: E402
from teal_devenv.operator import OperatorProcess  # noqa: E402

NS = "bench"


class Watch(threading.Thread):
    """Puts (monotonic time, type, object) of a watch into a queue."""

    def __init__(self, fn, *args, **kwargs):
        super().__init__(daemon=True)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.q: queue.Queue = queue.Queue()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            w = kubernetes.watch.Watch()
            try:
                for ev in w.stream(self.fn, *self.args, timeout_seconds=5, **self.kwargs):
                    self.q.put((time.monotonic(), ev["type"], ev["object"]))
                    if self.stop.is_set():
                        break
            except Exception:
                time.sleep(0.05)

    def wait(self, pred, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                t, typ, obj = self.q.get(timeout=0.5)
            except queue.Empty:
                continue
            if pred(obj):
                return t, obj
        raise TimeoutError("watch condition not met")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--releases", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="teal-bench-op-"))
    with LocalCluster(work / "cluster") as cluster:
        api = cluster.api_client()
        install_crds(api, crd_documents(sorted((REPO / "crds").glob("*.yaml"))))
        core = kubernetes.client.CoreV1Api(api)
        apps = kubernetes.client.AppsV1Api(api)
        custom = kubernetes.client.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": NS}})
        for svc in ("app", "app-preview"):
            core.create_namespaced_service(
                NS, {"metadata": {"name": svc}, "spec": {"selector": {"app": "demo"}, "ports": [{"port": 80}]}}
            )
        op = OperatorProcess(cluster.kubeconfig, work / "operator.log", ["-A"], log_level="warning").start()
        try:
            svc_watch = Watch(core.list_namespaced_service, NS, field_selector="metadata.name=app")
            dep_watch = Watch(apps.list_namespaced_deployment, NS)
            svc_watch.start()
            dep_watch.start()

            def image(i: int) -> dict:
                return {
                    "metadata": {"labels": {"app": "demo"}},
                    "spec": {"containers": [{"name": "app", "image": f"example.com/app:{i}"}]},
                }

            custom.create_namespaced_custom_object(
                "teal.dev",
                "v1alpha1",
                NS,
                "rollouts",
                {
                    "apiVersion": "teal.dev/v1alpha1",
                    "kind": "Rollout",
                    "metadata": {"name": "app"},
                    "spec": {
                        "replicas": 3,
                        "selector": {"matchLabels": {"app": "demo"}},
                        "template": image(0),
                        "strategy": {
                            "blueGreen": {
                                "activeServices": ["app"],
                                "previewService": "app-preview",
                                "scaleDownDelaySeconds": 600,
                                "abortScaleDownDelaySeconds": 0,
                            }
                        },
                        "analysis": {
                            "prometheus": {"address": "http://127.0.0.1:9"},
                            "initialDelay": "1h",
                            "postPromotion": ["hold"],
                            "metrics": [{"name": "hold", "query": "vector(0)", "thresholdRange": {"max": 1}}],
                        },
                    },
                },
            )

            def selector(obj) -> str | None:
                return (obj.spec.selector or {}).get("teal.dev/color")

            svc_watch.wait(lambda o: selector(o) == "blue")
            switch, revert = [], []

            def settled() -> dict:
                """The status once it records where traffic is (the selector moves before status does)."""
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    st = custom.get_namespaced_custom_object("teal.dev", "v1alpha1", NS, "rollouts", "app").get("status") or {}
                    if st.get("stableColor") and st.get("phase") in ("Healthy", "Aborted"):
                        return st
                    time.sleep(0.05)
                raise TimeoutError(f"the Rollout did not settle: {st}")

            for i in range(1, args.releases + 1):
                stable = settled()["stableColor"]
                new = "green" if stable == "blue" else "blue"
                custom.patch_namespaced_custom_object(
                    "teal.dev", "v1alpha1", NS, "rollouts", "app", {"spec": {"template": image(i)}}
                )

                def available(d, new=new, i=i) -> bool:
                    s = d.status
                    return (
                        d.metadata.name == f"app-{new}"
                        and d.spec.template.spec.containers[0].image.endswith(f":{i}")
                        and (s.observed_generation or 0) >= d.metadata.generation
                        and (s.available_replicas or 0) >= 3
                        and (s.updated_replicas or 0) >= 3
                        and (s.replicas or 0) == 3
                    )

                t_avail, _ = dep_watch.wait(available)
                t_switch, _ = svc_watch.wait(lambda o, new=new: selector(o) == new)
                switch.append(t_switch - t_avail)
                rev = custom.get_namespaced_custom_object("teal.dev", "v1alpha1", NS, "rollouts", "app")["status"][
                    "currentRevision"
                ]
                t_abort = time.monotonic()
                custom.patch_namespaced_custom_object_status(
                    "teal.dev",
                    "v1alpha1",
                    NS,
                    "rollouts",
                    "app",
                    {"status": {"abort": {"revision": rev, "reason": "AbortedByUser", "message": "bench"}}},
                )
                t_back, _ = svc_watch.wait(lambda o, stable=stable: selector(o) == stable)
                revert.append(t_back - t_abort)
                # drain stale events before the next round
                while not svc_watch.q.empty():
                    svc_watch.q.get_nowait()
            print(summary("switch latency (new colour available -> Service switched)", switch))
            print(summary("revert latency (abort written -> Service back on stable)", revert))
        finally:
            op.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
