"""From "the new colour starts failing" to "every active Service is back on the stable one".

A real control plane, a real Prometheus (scraping every second), two local processes that
play the colours, traffic that follows the Service selector, and the operator. Each round
releases a new version, waits until it is live and its post-promotion analysis has passed
a first measurement, then makes it fail half of its requests and times the revert:

  scrape    failure -> the first Prometheus sample that holds a failed request
  analysis  that sample -> Teal's failing measurement (waiting for the next interval tick)
  teal      that measurement -> the Service selector back on the stable colour (Teal's own share)

    python bench/bench_revert.py [--rounds 10] [--interval 1s]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import kubernetes

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "devenv"))  # teal_devenv, when not installed

from stats import summary  # noqa: E402

from teal.analysis.model import pod_regex  # noqa: E402
from teal_devenv.cluster import LocalCluster  # noqa: E402
from teal_devenv.crds import crd_documents, install_crds  # noqa: E402
from teal_devenv.fakeapp import run_fakeapp  # noqa: E402
from teal_devenv.operator import OperatorProcess  # noqa: E402
from teal_devenv.prometheus import LocalPrometheus  # noqa: E402
from teal_devenv.traffic import ClusterTraffic  # noqa: E402
from teal_devenv.wait import wait_for  # noqa: E402

NS = "bench"
RATE = (
    'sum(rate(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}",code=~"5.."}[3s]))'
    ' / sum(rate(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}"}[3s]))'
)


def pods_of(color: str) -> str:
    """A selector of the colour's pods by the labels Prometheus gives them."""
    return f'namespace="{NS}",pod=~"{pod_regex(f"app-{color}")}"'


def first_failed_scrape(prom, color: str, t0: float, t_end: float) -> float:
    """The timestamp of the first scrape after t0 whose 5xx counter of `color` grew."""
    window = int(t_end - t0) + 30
    data = prom.api(
        "/api/v1/query", {"query": f'http_requests_total{{{pods_of(color)},code="500"}}[{window}s]', "time": f"{t_end:.3f}"}
    )
    firsts = []
    for series in data["result"]:  # one per pod: each counter grows on its own
        samples = [(float(ts), float(v)) for ts, v in series["values"]]
        before = max((v for ts, v in samples if ts <= t0), default=0.0)
        grown = [ts for ts, v in sorted(samples) if ts > t0 and v > before]
        firsts += grown[:1]
    return min(firsts, default=t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--interval", default="1s")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="teal-bench-revert-"))
    parts: dict[str, list[float]] = {"scrape": [], "analysis": [], "teal": [], "total": []}
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(LocalCluster(work / "cluster"))
        prom = stack.enter_context(LocalPrometheus(work / "prom"))
        api = cluster.api_client()
        install_crds(api, crd_documents(sorted((REPO / "crds").glob("*.yaml"))))
        core = kubernetes.client.CoreV1Api(api)
        custom = kubernetes.client.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": NS}})
        for svc in ("app", "app-preview"):
            core.create_namespaced_service(
                NS, {"metadata": {"name": svc}, "spec": {"selector": {"app": "demo"}, "ports": [{"port": 80}]}}
            )
        apps = {c: stack.enter_context(run_fakeapp(c, NS)) for c in ("blue", "green")}
        stack.enter_context(prom.scrape_pods(NS, api, NS, {c: a.target for c, a in apps.items()}, rollout="app"))
        stack.enter_context(OperatorProcess(cluster.kubeconfig, work / "operator.log", ["-A"], log_level="warning"))

        def template(i: int) -> dict:
            return {
                "metadata": {"labels": {"app": "demo"}},
                "spec": {"containers": [{"name": "app", "image": f"example.com/app:{i}"}]},
            }

        def status() -> dict:
            return custom.get_namespaced_custom_object("teal.dev", "v1alpha1", NS, "rollouts", "app").get("status") or {}

        def selector() -> str | None:
            return (core.read_namespaced_service("app", NS).spec.selector or {}).get("teal.dev/color")

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
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "demo"}},
                    "template": template(0),
                    "strategy": {
                        "blueGreen": {
                            "activeServices": ["app"],
                            "previewService": "app-preview",
                            "scaleDownDelaySeconds": 600,
                            "abortScaleDownDelaySeconds": 0,
                        }
                    },
                    "analysis": {
                        "prometheus": {"address": prom.url, "timeout": "3s"},
                        "interval": args.interval,
                        "count": 1000,
                        "initialDelay": "2s",
                        "postPromotion": ["error-rate"],
                        "metrics": [
                            {
                                "name": "error-rate",
                                "query": RATE,
                                "thresholdRange": {"max": 0.05},
                                "noData": "inconclusive",
                                "inconclusiveLimit": 15,
                            }
                        ],
                    },
                },  # new pods: discovery + 2 scrapes
            },
        )
        wait_for(lambda: status().get("phase") == "Healthy", timeout=60, what="first release")
        stack.enter_context(ClusterTraffic(api, NS, apps, "app", "app-preview", rps=100, duration=1800, preview_share=0.0))
        for i in range(1, args.rounds + 1):
            stable = status()["stableColor"]
            new = "green" if stable == "blue" else "blue"
            apps[new].set(error_rate=0.0)
            custom.patch_namespaced_custom_object(
                "teal.dev", "v1alpha1", NS, "rollouts", "app", {"spec": {"template": template(i)}}
            )
            # live on the new colour, with post-promotion analysis measuring it successfully
            wait_for(lambda: selector() == new, timeout=60, what="switch")
            wait_for(
                lambda: any(
                    m.get("verdict") == "Successful" and m.get("run") == f"{status().get('currentRevision')}:postPromotion"
                    for m in status().get("analysis") or []
                ),
                timeout=30,
                what="a passing measurement",
            )
            t0 = time.time()
            apps[new].set(error_rate=0.5)
            wait_for(lambda: selector() == stable, timeout=60, interval=0.01, what="revert")
            t_back = time.time()
            st = status()
            failed = [m for m in st.get("analysis") or [] if m.get("verdict") == "Failed"]
            t_measured = dt.datetime.fromisoformat(failed[-1]["at"].replace("Z", "+00:00")).timestamp()
            t_scraped = first_failed_scrape(prom, new, t0, t_back)
            parts["scrape"].append(max(0.0, t_scraped - t0))
            parts["analysis"].append(max(0.0, t_measured - t_scraped))
            parts["teal"].append(max(0.0, t_back - t_measured))
            parts["total"].append(t_back - t0)
            print(
                f"round {i}: total {t_back - t0:.2f}s (scrape {parts['scrape'][-1]:.2f}, analysis "
                f"{parts['analysis'][-1]:.2f}, teal {parts['teal'][-1]:.3f})",
                flush=True,
            )
            apps[new].set(error_rate=0.0)
            wait_for(lambda: status().get("phase") == "Aborted", timeout=30, what="aborted")
            # the next round starts when this round's errors have left the 3 s rate window
            wait_for(
                lambda: not prom.query_value(f'sum(increase(http_requests_total{{{pods_of(new)},code="500"}}[4s]))'),
                timeout=30,
                interval=0.5,
                what="errors out of the window",
            )
        print(f"revert after degradation, {args.rounds} rounds, analysis interval {args.interval}, scrape 1s:")
        for name, values in parts.items():
            print("  " + summary(name, values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
