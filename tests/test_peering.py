"""Several replicas: only the leading one reconciles, and a leader that sees a peer of
higher priority stops its reconcile loops too (not only kopf's watches)."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import kubernetes
import pytest

from operator_helpers import Env, OperatorProcess, rollout
from teal.peering import leads
from teal_devenv.crds import crd_documents, install_crds
from teal_devenv.wait import wait_for

REPO = Path(__file__).resolve().parent.parent
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def peer(priority: int, seconds_ago: float = 1, lifetime: int = 60) -> dict:
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - dt.timedelta(seconds=seconds_ago)).isoformat()}


def test_leads_follows_kopfs_rule():
    assert leads({}, "me", 10, NOW)
    assert leads({"me": peer(10), "low": peer(5)}, "me", 10, NOW)
    assert not leads({"me": peer(10), "high": peer(20)}, "me", 10, NOW)
    assert not leads({"me": peer(10), "same": peer(10)}, "me", 10, NOW)  # equal priorities all pause
    assert leads({"me": peer(10), "high": peer(20, seconds_ago=120)}, "me", 10, NOW)  # a dead peer
    assert leads({"me": peer(10), "odd": {"priority": "x"}}, "me", 10, NOW)


def acted(op: OperatorProcess, namespace: str, text: str) -> bool:
    return any(f"{namespace}/app:" in line and text in line for line in op.log_tail(2000).splitlines())


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_only_the_leader_reconciles_and_a_superseded_leader_stops(cluster, k8s, namespace, teal_crds, teal_operator, tmp_path):
    install_crds(k8s, crd_documents((REPO / "charts/teal/charts/kopf-peering/crds").glob("*.yaml")))
    name = f"teal-{uuid.uuid4().hex[:6]}"
    custom = kubernetes.client.CustomObjectsApi(k8s)
    custom.create_cluster_custom_object(
        "kopf.dev",
        "v1",
        "clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}},
    )

    def replica(ident: str, priority: int) -> OperatorProcess:
        return OperatorProcess(
            cluster.kubeconfig,
            tmp_path / f"{ident}.log",
            ["-A", "--peering", name, "--priority", str(priority)],
            env={"POD_ID": ident, "TEAL_PEERING_LIFETIME": "10"},
        ).start()

    teal_operator.kill()
    a = b = c = None
    try:
        a, b = replica("op-a", 20), replica("op-b", 10)
        wait_for(lambda: "stands by" in b.log_tail(200), timeout=30, what="op-b standing by")
        env = Env(k8s, namespace)
        env.create_service("app")
        env.create_service("app-preview")
        env.create_rollout(rollout())
        env.wait_phase("Healthy", stableRevision="1", timeout=60)
        env.set_image("v2")
        env.wait_phase("Healthy", stableRevision="2", timeout=60)
        assert acted(a, namespace, "Switched") and not acted(b, namespace, "revision")

        c = replica("op-c", 30)  # e.g. the new pod of a rolling update
        wait_for(lambda: "stands by" in a.log_tail(400), timeout=30, what="op-a standing by")
        env.set_image("v3")
        env.wait_phase("Healthy", stableRevision="3", timeout=60)
        assert acted(c, namespace, "revision 3")
        assert not acted(a, namespace, "revision 3") and not acted(b, namespace, "revision")
    finally:
        for op in (a, b, c):
            if op:
                op.stop()
        custom.delete_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", name)
        teal_operator.start()
