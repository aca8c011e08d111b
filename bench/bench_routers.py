"""How long a weighted step takes through each traffic router on a local apiserver.

    python bench/bench_routers.py [--iterations 50] [--kubeconfig PATH]

For each router (Gateway API HTTPRoute, NGINX canary Ingress, Istio VirtualService) it
prepares the objects of a fresh namespace, then times `iterations` steps, each a
set_weights() of a new split followed by the get_weights() that reads it back from the
apiserver (and checks it). Prints, per router, p50/p99/max of that round trip, of
set_weights alone and of get_weights alone, and the time of prepare(). Without
--kubeconfig it starts its own LocalCluster (teal_devenv.cluster) and installs the real
CRDs via hack/fetch-router-crds.sh.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "devenv"))  # teal_devenv, when not installed
sys.path.insert(0, str(ROOT / "tests"))

from kubernetes import client, config  # noqa: E402

from routing_helpers import RoutingEnv, crd_documents, fetch_router_crds, install_crds, make_owner  # noqa: E402
from teal_devenv.cluster import LocalCluster  # noqa: E402


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of values, in milliseconds."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q * len(ordered) + 0.5)) - 1))
    return ordered[k] * 1000


def line(label: str, values: list[float]) -> str:
    return (
        f"{label:<22} p50 {pct(values, 0.50):7.1f} ms   p99 {pct(values, 0.99):7.1f} ms   "
        f"max {max(values) * 1000:7.1f} ms   mean {statistics.fmean(values) * 1000:7.1f} ms"
    )


def bench_router(api: client.ApiClient, kind: str, iterations: int) -> None:
    ns = f"bench-routers-{kind.lower()}-{uuid.uuid4().hex[:5]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
    try:
        env = RoutingEnv(api, ns, make_owner(api, ns))
        env.active_service()
        {"gatewayAPI": env.httproute, "istio": env.virtualservice, "nginx": env.ingress}[kind]()
        router = env.router(kind)
        t0 = time.perf_counter()
        router.prepare()
        prepare = time.perf_counter() - t0
        rounds, sets, gets = [], [], []
        for i in range(iterations):
            green = (i * 7 + 10) % 101
            want = {"blue": 100 - green, "green": green}
            t0 = time.perf_counter()
            router.set_weights(want)
            t1 = time.perf_counter()
            got = router.get_weights()
            t2 = time.perf_counter()
            if got != want:
                raise SystemExit(f"{kind}: read back {got} after setting {want}")
            rounds.append(t2 - t0)
            sets.append(t1 - t0)
            gets.append(t2 - t1)
        name = {"gatewayAPI": "Gateway API HTTPRoute", "nginx": "NGINX canary Ingress", "istio": "Istio VirtualService"}[kind]
        print(f"{name} ({iterations} steps, prepare {prepare * 1000:.1f} ms)")
        print("  " + line("set+get round trip", rounds))
        print("  " + line("set_weights", sets))
        print("  " + line("get_weights", gets), flush=True)
    finally:
        client.CoreV1Api(api).delete_namespace(ns, propagation_policy="Background")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting a LocalCluster")
    args = parser.parse_args(argv)

    cluster = None
    if args.kubeconfig:
        config.load_kube_config(config_file=args.kubeconfig)
        api = client.ApiClient()
    else:
        cluster = LocalCluster(nodes=1)
        t0 = time.perf_counter()
        cluster.start()
        print(f"local cluster started in {time.perf_counter() - t0:.1f} s", flush=True)
        api = cluster.api_client()
    try:
        t0 = time.perf_counter()
        folders = fetch_router_crds()
        install_crds(api, crd_documents(folders.values()))
        print(
            f"router CRDs ({', '.join(p.name for p in folders.values())}) ready in {time.perf_counter() - t0:.1f} s", flush=True
        )
        for kind in ("gatewayAPI", "nginx", "istio"):
            bench_router(api, kind, args.iterations)
    finally:
        api.close()
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
