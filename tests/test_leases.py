"""Leader election and namespace shards on Leases (teal.leases).

Unit tests (no cluster): the hash, the fair share, and the Lease protocol of several gates
sharing one in-memory Lease store under a fake clock (a holder that cannot renew stops
acting before anyone else may take its shard). On the real control plane: three replicas
as real `teal run` processes with --shards 3 and one with a single shard (leader election):
every status write of a Rollout comes from the replica that held its namespace's shard at
that moment, and a killed replica's shards are taken over within 15 s.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import itertools
import re
import signal
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from operator_helpers import Env, OperatorProcess, rollout
from teal import leases
from teal.client import Conflict, Transient
from teal_devenv.wait import wait_for

# ------------------------------------------------------------------ unit: arithmetic


def test_stable_hash_is_the_same_in_every_process():
    # SHA-256 based (the first 8 bytes), unlike Python's hash(), which is salted per process
    assert leases.stable_hash("shop") == int(hashlib.sha256(b"shop").hexdigest()[:16], 16)
    assert leases.shard_of("shop", 1) == 0 and leases.shard_of("", 7) == 0  # cluster-scoped: shard 0
    spread = [leases.shard_of(f"ns-{i}", 4) for i in range(400)]
    assert all(60 < spread.count(s) < 140 for s in range(4)), [spread.count(s) for s in range(4)]


def test_fair_share_and_plan():
    assert [leases.fair_share(3, m) for m in (0, 1, 2, 3, 4)] == [3, 3, 2, 1, 1]
    assert leases.fair_share(10, 3) == 4
    # below the share: take the free shards this replica prefers most
    take, give = leases.plan_shards(6, "a", held=[], acquirable=range(6), members=3)
    assert len(take) == 2 and not give
    assert take == sorted(range(6), key=lambda s: -leases.preference("a", s))[:2]
    # above it (a replica joined): hand back the least preferred
    take, give = leases.plan_shards(3, "a", held=[0, 1, 2], acquirable=[], members=2)
    assert not take and give == [min([0, 1, 2], key=lambda s: leases.preference("a", s))]
    # at the share: nothing to do, even with free shards
    assert leases.plan_shards(3, "a", held=[1], acquirable=[0, 2], members=3) == ([], [])
    # replicas rank shards differently, so starting together they mostly want different ones
    firsts = {leases.plan_shards(12, ident, [], range(12), 12)[0][0] for ident in (f"pod-{i}" for i in range(12))}
    assert len(firsts) > 4


def test_timing_is_checked():
    with pytest.raises(ValueError):
        leases.Timing(lease_duration=5, renew_deadline=5, retry_period=1)
    with pytest.raises(ValueError):
        leases.Timing(lease_duration=8, renew_deadline=2, retry_period=3)


# ------------------------------------------------------------------ unit: the protocol, fake clock


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Store:
    """Leases of one namespace with resourceVersion guards, as the apiserver keeps them."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = itertools.count(1)

    def _stamp(self, body: Mapping[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(dict(body))
        out["metadata"]["resourceVersion"] = str(next(self.rv))
        return out


class FakeApi:
    """One replica's view of the Store; `broken` makes every call fail (a partition)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.broken = False

    def _check(self) -> None:
        if self.broken:
            raise Transient(0, "ConnectionError", "partitioned")

    def items(self, res: Any, namespace: str | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        self._check()
        key, _, value = (kwargs.get("label_selector") or "=").partition("=")
        return [
            copy.deepcopy(o)
            for o in self.store.objects.values()
            if not key or (o["metadata"].get("labels") or {}).get(key) == value
        ]

    def create(self, res: Any, namespace: str | None, body: Mapping[str, Any], **query: Any) -> dict[str, Any]:
        self._check()
        name = body["metadata"]["name"]
        if name in self.store.objects:
            raise Conflict(409, "AlreadyExists", f"{name} exists")
        obj = self.store._stamp(body)
        obj["metadata"]["uid"] = uuid.uuid4().hex
        self.store.objects[name] = obj
        return copy.deepcopy(obj)

    def replace(self, res: Any, namespace: str | None, name: str, body: Mapping[str, Any], **query: Any) -> dict[str, Any]:
        self._check()
        cur = self.store.objects.get(name)
        if cur is None or cur["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
            raise Conflict(409, "Conflict", "the object has been modified")
        self.store.objects[name] = self.store._stamp(body)
        return copy.deepcopy(self.store.objects[name])

    def delete(self, res: Any, namespace: str | None, name: str, *, uid: str | None = None) -> dict[str, Any] | None:
        self._check()
        cur = self.store.objects.get(name)
        if cur is None or (uid and cur["metadata"].get("uid") != uid):
            return None
        return self.store.objects.pop(name)


TIMING = leases.Timing(lease_duration=8, renew_deadline=5, retry_period=1)


def gates(n: int, shards: int, clock: Clock, store: Store | None = None) -> list[leases.LeaseGate]:
    store = store or Store()
    return [
        leases.LeaseGate(FakeApi(store), leases.Config("teal", "ops", f"op-{i}", shards, TIMING), clock=clock) for i in range(n)
    ]


def run(gs: list[leases.LeaseGate], clock: Clock, seconds: float) -> None:
    """Every gate steps once per retry period, for `seconds` of fake time."""
    for _ in range(int(seconds / TIMING.retry_period)):
        for g in gs:
            g.step()
        clock.t += TIMING.retry_period


def owned(g: leases.LeaseGate) -> set[int]:
    return {s for s in g.holding if g.valid(s)}


def assert_exclusive(gs: list[leases.LeaseGate]) -> None:
    for a, b in itertools.combinations(gs, 2):
        assert not owned(a) & owned(b), (a.config.identity, owned(a), b.config.identity, owned(b))


def test_one_shard_is_leader_election():
    clock = Clock()
    a, b = gates(2, 1, clock)
    run([a, b], clock, 3)
    assert owned(a) == {0} and owned(b) == set()  # a came first
    holder = a.api.store.objects["teal-0"]["spec"]  # type: ignore[attr-defined]
    assert holder["holderIdentity"] == "op-0" and holder["leaseDurationSeconds"] == 8
    assert "teal-member" not in "".join(a.api.store.objects)  # type: ignore[attr-defined]  # no membership with one shard


def test_shares_converge_and_stay_exclusive():
    clock = Clock()
    gs = gates(3, 6, clock)
    run(gs[:1], clock, 2)
    assert owned(gs[0]) == set(range(6))  # alone: all of them
    for _ in range(10):
        run(gs, clock, 1)
        assert_exclusive(gs)
    assert sorted(len(owned(g)) for g in gs) == [2, 2, 2]
    assert set().union(*(owned(g) for g in gs)) == set(range(6))


def test_a_partitioned_holder_stops_before_another_takes_over():
    """client-go's guarantee: the holder's renew deadline ends before the others' lease duration."""
    clock = Clock()
    a, b = gates(2, 1, clock)
    run([a, b], clock, 3)
    assert owned(a) == {0}
    a.api.broken = True  # type: ignore[attr-defined]
    cut = clock.t
    stopped = took = None
    while took is None and clock.t < cut + 30:
        for g in (a, b):
            g.step()
        if stopped is None and not a.valid(0):
            stopped = clock.t
        if 0 in owned(b):
            took = clock.t
        assert_exclusive([a, b])
        clock.t += 0.25
    assert stopped is not None and took is not None
    # a stops at its renew deadline (its last renew was sent at most one retry period before the cut)
    assert stopped <= cut + TIMING.renew_deadline
    # b waits the lease duration from when it saw a's last renew, and takes over within a step of it
    assert cut + TIMING.lease_duration - TIMING.retry_period <= took <= cut + TIMING.lease_duration + 2 * TIMING.retry_period
    assert took > stopped
    record = b.api.store.objects["teal-0"]["spec"]  # type: ignore[attr-defined]
    assert record["holderIdentity"] == "op-1" and record["leaseTransitions"] == 1
    # the partition heals: a sees b's Lease and does not take it back
    a.api.broken = False  # type: ignore[attr-defined]
    run([a, b], clock, 5)
    assert owned(a) == set() and owned(b) == {0}


def test_a_dead_replica_shards_are_taken_and_a_new_one_gets_its_share():
    clock = Clock()
    store = Store()
    gs = gates(3, 3, clock, store)
    run(gs, clock, 12)
    assert sorted(len(owned(g)) for g in gs) == [1, 1, 1]
    dead, alive = gs[0], gs[1:]
    lost = owned(dead)
    killed = clock.t
    run(alive, clock, TIMING.lease_duration + 2 * TIMING.retry_period + 1)
    assert lost <= owned(alive[0]) | owned(alive[1]), "the dead replica's shard was not taken over"
    assert sorted(len(owned(g)) for g in alive) == [1, 2]
    assert clock.t - killed <= 15
    # a new replica (a restarted pod: new identity) gets one back, handed over gracefully
    new = leases.LeaseGate(FakeApi(store), leases.Config("teal", "ops", "op-new", 3, TIMING), clock=clock)
    for _ in range(int(leases.STALE_MEMBER_FACTOR * TIMING.lease_duration)):  # the dead member is deleted
        run([*alive, new], clock, 1)
        assert_exclusive([*alive, new])
    assert sorted(len(owned(g)) for g in [*alive, new]) == [1, 1, 1]
    assert all(o["spec"]["holderIdentity"] != "op-0" for o in store.objects.values())


def test_graceful_stop_hands_back_at_once():
    clock = Clock()
    a, b = gates(2, 1, clock)
    run([a, b], clock, 3)
    a.releasing.update({s: h.body for s, h in a.holding.items()})
    a.holding.clear()
    a._leave()  # what stop() does after the loops stopped
    run([b], clock, 1)
    assert owned(b) == {0}  # no lease duration to wait: the Lease was written free


# ------------------------------------------------------------------ the real control plane

LEASE_LINE = re.compile(r"^(\S+ \S+) \w+ teal\.leases: shard (\d+): (acquired|lost)\b")
WRITE_LINE = re.compile(r"^(\S+ \S+) DEBUG teal\.writes: ([^/\s]+)/(\S+): status write by (\S+)$")


def _ts(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


class Replica:
    def __init__(self, cluster, tmp_path: Path, ident: str, args: list[str]) -> None:
        self.ident = ident
        self.killed_at: float | None = None
        self.op = OperatorProcess(
            cluster.kubeconfig,
            tmp_path / f"{ident}.log",
            ["-A", "--routers", "none", *args],
            env={"POD_ID": ident, "TEAL_DEBUG_LOGGERS": "teal.writes"},
        ).start()

    def kill(self) -> None:
        self.killed_at = time.time()
        self.op.kill(signal.SIGKILL)

    def lines(self) -> list[str]:
        try:
            return self.op.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def intervals(self) -> dict[int, list[tuple[float, float]]]:
        """When this replica held each shard, by its own log (a kill ends what it held)."""
        out: dict[int, list[tuple[float, float]]] = {}
        since: dict[int, float] = {}
        for line in self.lines():
            m = LEASE_LINE.match(line)
            if not m:
                continue
            t, shard = _ts(m[1]), int(m[2])
            if m[3] == "acquired":
                since[shard] = t
            elif shard in since:
                out.setdefault(shard, []).append((since.pop(shard), t))
        end = self.killed_at if self.killed_at is not None else float("inf")
        for shard, t in since.items():
            out.setdefault(shard, []).append((t, end))
        return out

    def writes(self) -> list[tuple[float, str]]:
        found = []
        for line in self.lines():
            m = WRITE_LINE.match(line)
            if m:
                assert m[4] == self.ident, line
                found.append((_ts(m[1]), m[2]))
        return found


def check_one_writer(replicas: list[Replica], shards: int, namespaces: list[str]) -> None:
    """Every status write happened while its writer held the namespace's shard, and no two
    replicas held a shard at the same time."""
    held = {r.ident: r.intervals() for r in replicas}
    for shard in range(shards):
        spans = sorted((a, b, ident) for ident, by in held.items() for a, b in by.get(shard, []))
        for (_a1, b1, i1), (a2, _b2, i2) in itertools.pairwise(spans):
            assert b1 <= a2, f"shard {shard} held by {i1} until {b1} and by {i2} from {a2}"
    writers: dict[str, set[str]] = {}
    for r in replicas:
        for t, ns in r.writes():
            if ns not in namespaces:
                continue  # a Rollout of another test, still being deleted
            shard = leases.shard_of(ns, shards)
            spans = held[r.ident].get(shard, [])
            assert any(a <= t <= b for a, b in spans), f"{r.ident} wrote {ns} (shard {shard}) at {t} holding it {spans}"
            writers.setdefault(ns, set()).add(r.ident)
    assert set(writers) == set(namespaces), f"no status write seen for {set(namespaces) - set(writers)}"


def holder(coord, namespace: str, name: str) -> str:
    try:
        return coord.read_namespaced_lease(name, namespace).spec.holder_identity or ""
    except kubernetes.client.ApiException as e:
        if e.status == 404:
            return ""
        raise


def app_namespaces(core, shards: int, per_shard: int) -> list[str]:
    stem = f"lease-{uuid.uuid4().hex[:5]}"
    by_shard: dict[int, list[str]] = {s: [] for s in range(shards)}
    for i in itertools.count():
        name = f"{stem}-{i}"
        bucket = by_shard[leases.shard_of(name, shards)]
        if len(bucket) < per_shard:
            bucket.append(name)
        if all(len(b) == per_shard for b in by_shard.values()):
            break
    names = sorted(n for b in by_shard.values() for n in b)
    for name in names:
        core.create_namespace({"metadata": {"name": name, "labels": {"teal.dev/test": "true"}}})
    return names


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_three_replicas_share_three_shards_and_take_over_a_killed_one(cluster, k8s, namespace, teal_crds, no_operator, tmp_path):
    core, coord = kubernetes.client.CoreV1Api(k8s), kubernetes.client.CoordinationV1Api(k8s)
    lease = f"teal-{uuid.uuid4().hex[:5]}"
    args = ["--shards", "3", "--lease-name", lease, "--lease-namespace", namespace]
    names = app_namespaces(core, 3, 2)
    replicas: list[Replica] = []
    try:
        replicas = [Replica(cluster, tmp_path, f"op-{c}", args) for c in "abc"]
        envs = {ns: Env(k8s, ns) for ns in names}
        for e in envs.values():
            e.create_service("app")
            e.create_service("app-preview")
            e.create_rollout(rollout())
        for e in envs.values():
            e.wait_phase("Healthy", stableRevision="1", timeout=90)

        def spread() -> bool:  # each replica holds its fair share: one shard
            return sorted(holder(coord, namespace, f"{lease}-{s}") for s in range(3)) == ["op-a", "op-b", "op-c"]

        wait_for(spread, timeout=60, what="one shard per replica")
        for e in envs.values():
            e.set_image("v2")
        for e in envs.values():
            e.wait_phase("Healthy", stableRevision="2", timeout=90)

        # kill -9 the holder of the first namespace's shard: another replica takes it over
        shard = leases.shard_of(names[0], 3)
        victim = next(r for r in replicas if r.ident == holder(coord, namespace, f"{lease}-{shard}"))
        victim.kill()
        wait_for(
            lambda: holder(coord, namespace, f"{lease}-{shard}") not in ("", victim.ident),
            timeout=20,
            interval=0.1,
            what=f"shard {shard} taken over",
        )
        took = time.time() - victim.killed_at
        assert took <= 15, f"shard {shard} taken over {took:.1f}s after the kill"
        orphans = [ns for ns in names if leases.shard_of(ns, 3) == shard]
        for ns in orphans:
            envs[ns].set_image("v3")
        for ns in orphans:
            envs[ns].wait_phase("Healthy", stableRevision="3", timeout=90)
        check_one_writer(replicas, 3, names)
        assert len({w for r in replicas for _, w in r.writes() if w in names}) == len(names)
        assert sum(1 for r in replicas if any(ns in names for _, ns in r.writes())) == 3  # all three did work
    finally:
        for r in replicas:
            r.op.stop()
        for ns in names:
            core.delete_namespace(ns, propagation_policy="Background")


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_one_shard_is_leader_election_and_a_stopped_leader_hands_over(cluster, k8s, namespace, teal_crds, no_operator, tmp_path):
    coord = kubernetes.client.CoordinationV1Api(k8s)
    lease = f"teal-{uuid.uuid4().hex[:5]}"
    args = ["--leader-elect", "--lease-name", lease, "--lease-namespace", namespace]
    a = Replica(cluster, tmp_path, "leader-a", args)
    b = None
    try:
        wait_for(lambda: holder(coord, namespace, f"{lease}-0") == "leader-a", timeout=30, what="leader-a leads")
        b = Replica(cluster, tmp_path, "leader-b", args)
        wait_for(lambda: any("competes for 1 shard" in x for x in b.lines()), timeout=30, what="leader-b standing by")
        e = Env(k8s, namespace)
        e.create_service("app")
        e.create_service("app-preview")
        e.create_rollout(rollout())
        e.wait_phase("Healthy", stableRevision="1", timeout=90)
        assert a.writes() and not b.writes()
        a.op.stop()  # SIGTERM: the Lease is handed back, b need not wait for it to expire
        wait_for(lambda: holder(coord, namespace, f"{lease}-0") == "leader-b", timeout=15, what="leader-b leads")
        e.set_image("v2")
        e.wait_phase("Healthy", stableRevision="2", timeout=90)
        check_one_writer([a, b], 1, [namespace])
        assert b.writes()
        assert "handed back" in "\n".join(a.lines())
    finally:
        for r in (a, b):
            if r:
                r.op.stop()


def test_flags(monkeypatch):
    from teal.main import lease_config, parser

    def config(*argv: str) -> leases.Config | None:
        return lease_config(parser().parse_args(["run", *argv]), [])

    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert config() is None  # one operator on a workstation: no Leases, acts everywhere
    one = config("--leader-elect", "--identity", "me")
    assert one is not None and (one.name, one.namespace, one.shards, one.identity) == ("teal", "default", 1, "me")
    monkeypatch.setenv("POD_NAMESPACE", "teal-system")
    three = config("--shards", "3", "--lease-duration", "12", "--renew-deadline", "9", "--retry-period", "2")
    assert three is not None and three.shards == 3 and three.namespace == "teal-system"  # --shards > 1 implies Leases
    assert three.timing == leases.Timing(12, 9, 2)
    legacy = config("--peering", "old", "--priority", "5")  # deprecated: leader election on the Lease old-0
    assert legacy is not None and legacy.name == "old" and legacy.shards == 1
    with pytest.raises(SystemExit):
        config("--shards", "0")
