"""Failover of a shard when its replica dies: kill -9 -> Lease taken by another replica ->
first reconcile of a Rollout in that shard.

A real control plane and three operator replicas (`teal run --shards 3`), one namespace per
shard with a Rollout in it. Each round kills the holder of one shard with SIGKILL (no
hand-back: the Lease has to expire) and at the same instant changes that shard's Rollout
(a new pod template), then times

  lease      kill -> the shard's Lease held by another live replica
  reconcile  kill -> the Rollout's status.observedGeneration reaches the new generation
             (the new holder's first decision on it)

and starts the killed replica again under a new identity (a replaced pod), waiting until
the three hold one shard each before the next round.

    python bench/bench_failover.py [--rounds 10] [--lease-duration 8 --renew-deadline 5 --retry-period 1]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import tempfile
import time
from pathlib import Path

import kubernetes

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "devenv"))  # teal_devenv, when not installed

from stats import summary  # noqa: E402

from teal.leases import shard_of  # noqa: E402
from teal_devenv.cluster import LocalCluster  # noqa: E402
from teal_devenv.crds import crd_documents, install_crds  # noqa: E402
from teal_devenv.operator import OperatorProcess  # noqa: E402
from teal_devenv.wait import wait_for  # noqa: E402

SHARDS = 3
LEASE_NS = "teal-system"
LEASE = "teal"


def rollout(image: str) -> dict:
    return {
        "apiVersion": "teal.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "app"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": template(image),
            "strategy": {"blueGreen": {"activeServices": ["app"], "scaleDownDelaySeconds": 1}},
        },
    }


def template(image: str) -> dict:
    return {
        "metadata": {"labels": {"app": "demo"}},
        "spec": {"containers": [{"name": "app", "image": f"example.com/app:{image}"}]},
    }


def namespaces() -> dict[int, str]:
    """One namespace per shard."""
    found: dict[int, str] = {}
    for i in itertools.count():
        found.setdefault(shard_of(f"shop-{i}", SHARDS), f"shop-{i}")
        if len(found) == SHARDS:
            return found
    raise AssertionError


class Bench:
    def __init__(self, api, kubeconfig: str, work: Path, timing: list[str]) -> None:
        self.core = kubernetes.client.CoreV1Api(api)
        self.coord = kubernetes.client.CoordinationV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.kubeconfig, self.work, self.timing = kubeconfig, work, timing
        self.ids = itertools.count()
        self.replicas: dict[str, OperatorProcess] = {}

    def start_replica(self) -> None:
        ident = f"op-{next(self.ids)}"
        args = ["-A", "--routers", "none", "--shards", str(SHARDS), "--lease-namespace", LEASE_NS, *self.timing]
        op = OperatorProcess(self.kubeconfig, self.work / f"{ident}.log", args, env={"POD_ID": ident}, log_level="warning")
        self.replicas[ident] = op.start()

    def holder(self, shard: int) -> str:
        try:
            return self.coord.read_namespaced_lease(f"{LEASE}-{shard}", LEASE_NS).spec.holder_identity or ""
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return ""
            raise

    def spread(self) -> bool:
        return sorted(self.holder(s) for s in range(SHARDS)) == sorted(self.replicas)

    def status(self, ns: str) -> dict:
        return self.custom.get_namespaced_custom_object("teal.dev", "v1alpha1", ns, "rollouts", "app").get("status") or {}

    def round(self, shard: int, ns: str, image: str) -> tuple[float, float]:
        victim = self.holder(shard)
        t0 = time.time()
        self.replicas.pop(victim).kill()
        obj = self.custom.patch_namespaced_custom_object(
            "teal.dev", "v1alpha1", ns, "rollouts", "app", {"spec": {"template": template(image)}}
        )
        generation = obj["metadata"]["generation"]
        lease = reconcile = None
        while reconcile is None or lease is None:
            now = time.time()
            if now - t0 > 60:
                raise TimeoutError(f"shard {shard}: no failover within 60 s")
            if lease is None and self.holder(shard) in self.replicas:
                lease = now - t0
            if reconcile is None and (self.status(ns).get("observedGeneration") or 0) >= generation:
                reconcile = now - t0
            time.sleep(0.02)
        wait_for(lambda: self.status(ns).get("phase") == "Healthy", timeout=60, what=f"{ns} Healthy")
        self.start_replica()
        wait_for(self.spread, timeout=90, interval=0.2, what="one shard per replica")
        return lease, reconcile


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--lease-duration", default="8")
    p.add_argument("--renew-deadline", default="5")
    p.add_argument("--retry-period", default="1")
    args = p.parse_args()
    timing = [
        "--lease-duration",
        args.lease_duration,
        "--renew-deadline",
        args.renew_deadline,
        "--retry-period",
        args.retry_period,
    ]
    work = Path(tempfile.mkdtemp(prefix="teal-bench-failover-"))
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(LocalCluster(work / "cluster"))
        api = cluster.api_client()
        install_crds(api, crd_documents(sorted((REPO / "crds").glob("*.yaml"))))
        b = Bench(api, cluster.kubeconfig, work, timing)
        by_shard = namespaces()
        for ns in [LEASE_NS, *by_shard.values()]:
            b.core.create_namespace({"metadata": {"name": ns}})
        for ns in by_shard.values():
            svc = {"metadata": {"name": "app"}, "spec": {"selector": {"app": "demo"}, "ports": [{"port": 80}]}}
            b.core.create_namespaced_service(ns, svc)
            b.custom.create_namespaced_custom_object("teal.dev", "v1alpha1", ns, "rollouts", rollout("v0"))
        for _ in range(SHARDS):
            b.start_replica()
        stack.callback(lambda: [op.stop() for op in b.replicas.values()])
        for ns in by_shard.values():
            wait_for(lambda ns=ns: b.status(ns).get("phase") == "Healthy", timeout=120, what=f"{ns} Healthy")
        wait_for(b.spread, timeout=90, interval=0.2, what="one shard per replica")
        leases, reconciles = [], []
        for i in range(args.rounds):
            shard = i % SHARDS
            lease, reconcile = b.round(shard, by_shard[shard], f"v{i + 1}")
            print(f"round {i + 1}: shard {shard}: lease taken over after {lease:.2f}s, first reconcile after {reconcile:.2f}s")
            leases.append(lease)
            reconciles.append(reconcile)
        print(
            f"timing: lease duration {args.lease_duration}s, renew deadline {args.renew_deadline}s, retry period {args.retry_period}s"
        )
        print(summary("kill -> Lease re-acquired by another replica", leases))
        print(summary("kill -> first reconcile by the new holder", reconciles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
