"""Teal at scale on the local control plane: N Rollouts, measured against the cluster's own pace.

    python bench/bench_scale.py [--rollouts 100] [--idle 120] [--releases 20] [--operator-src PATH] [--json]

One run, in this order, on a fresh LocalCluster (kwok fake nodes) with the apiserver's audit log on:

1. baseline: N plain Deployments (the same pod template, 1-2 replicas) created at once, each
   beside the same Service the Rollouts get (made before the clock starts; --bare-baseline:
   none), so the control plane keeps the same endpoints up to date; the time until all are
   available is the control plane's own pace for that workload. They are then deleted.
2. N selector blue/green Rollouts (each with its active Service, made first) created at once
   across --namespaces namespaces: time until every Rollout is Healthy, and its ratio to (1).
3. after --settle seconds, an idle window of --idle seconds: the operator's API requests per
   minute, its CPU seconds per minute (and the apiserver's).
4. --releases Rollouts get a new image at the same moment: time until all switched, the switch
   latency (new colour's Deployment available -> active Service's selector names it, both seen
   on this process's watches) and the operator's API requests per release.

The operator runs as a subprocess, `python -m teal.main run -A`, with --operator-src (a tree's
`operator/` folder; default this checkout's) first on PYTHONPATH, so the same bench measures
another tree (`git worktree add /tmp/teal-before <commit>`). It authenticates as its own
ServiceAccount (cluster-admin), so the audit log names its requests: by user agent ("teal" =
teal.client, "kopf/..." = kopf's own) and by kind (watch requests, Leases and Events apart).
Watch bookmarks travel inside a watch's response, so they are no requests. CPU is utime+stime
of /proc/PID/stat, RSS the process's VmHWM (peak). The machine is shared: read the ratios.

With --kubeconfig-free use from a test: ``run(cluster, Options(...))`` on an already running
LocalCluster (no audit log: request counts are then None).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import http.client
import json
import math
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "devenv"))  # teal_devenv, when not installed

from stats import pct  # noqa: E402

from teal_devenv.cluster import LocalCluster  # noqa: E402
from teal_devenv.crds import crd_documents, install_crds  # noqa: E402

OP_NS = "teal-bench-op"
OP_SA = "teal"
OP_USER = f"system:serviceaccount:{OP_NS}:{OP_SA}"
ROLLOUTS = "/apis/teal.dev/v1alpha1"
# Only the operator's requests are audited: the log stays small and costs the apiserver little.
AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": [OP_USER]}, {"level": "None"}],
}


@dataclasses.dataclass
class Options:
    rollouts: int = 100
    namespaces: int = 10
    idle: float = 120.0
    settle: float = 20.0
    releases: int = 20
    operator_src: Path = REPO / "operator"
    operator_args: tuple[str, ...] = ()
    # watch only the bench's namespaces (-n each) instead of all (-A): for a shared cluster
    namespaced: bool = False
    # wait until the baseline's namespaces are gone before the Rollouts (their pods' deletion
    # would otherwise load the control plane while the Rollouts are measured)
    wait_baseline_gone: bool = True
    # the baseline's Deployments get the same Services as the Rollouts (made before the clock
    # starts, selecting the pods): the control plane's work for the same workload, endpoints included
    baseline_services: bool = True
    timeout: float = 1800.0
    prefix: str = "sb"
    workers: int = 4


# ------------------------------------------------------------------ API access


class Api:
    """A small JSON client over keep-alive HTTPS connections (one per thread)."""

    def __init__(self, server: str, token: str, ca_file: str) -> None:
        u = urllib.parse.urlsplit(server)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 443
        self.token = token
        self.ssl = ssl.create_default_context(cafile=ca_file)
        self.local = threading.local()

    def connect(self, timeout: float | None = 30) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=timeout)

    def headers(self, content_type: str = "application/json") -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "Content-Type": content_type,
            "User-Agent": "teal-bench-scale",
        }

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(3):
            conn = getattr(self.local, "conn", None) or self.connect()
            self.local.conn = conn
            try:
                conn.request(method, path, body=data, headers=self.headers(content_type))
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
                continue
            if resp.status == 429 or resp.status >= 500:
                time.sleep(0.2 * (attempt + 1))
                continue
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path} -> {resp.status}: {raw[:300]!r}")
            return json.loads(raw) if raw else {}
        raise RuntimeError(f"{method} {path}: gave up after retries")

    def status(self, method: str, path: str) -> int:
        conn = self.connect()
        try:
            conn.request(method, path, headers=self.headers())
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()


class Watch(threading.Thread):
    """LIST then WATCH a cluster-wide collection, calling ``on_event(t, type, obj)`` for each
    object (the listing's as ADDED) in the given namespaces; re-lists when the watch breaks."""

    def __init__(self, api: Api, path: str, namespaces: set[str], on_event: Callable[[float, str, dict], None]):
        super().__init__(daemon=True)
        self.api, self.path, self.namespaces, self.on_event = api, path, namespaces, on_event
        self.stopping = threading.Event()
        self.synced = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._list_and_watch()
            except (OSError, http.client.HTTPException, ValueError, RuntimeError):
                time.sleep(0.2)

    def _deliver(self, t: float, typ: str, obj: dict) -> None:
        if obj.get("metadata", {}).get("namespace") in self.namespaces:
            self.on_event(t, typ, obj)

    def _list_and_watch(self) -> None:
        listing = self.api.call("GET", self.path)
        t = time.monotonic()
        for obj in listing.get("items", []):
            self._deliver(t, "ADDED", obj)
        self.synced.set()
        rv = listing["metadata"]["resourceVersion"]
        conn = self.api.connect(timeout=None)
        try:
            q = urllib.parse.urlencode(
                {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": 300}
            )
            conn.request("GET", f"{self.path}?{q}", headers=self.api.headers())
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"watch {self.path}: {resp.status}")
            while not self.stopping.is_set():
                line = resp.readline()
                if not line:
                    return
                ev = json.loads(line)
                if ev["type"] == "ERROR":
                    return
                if ev["type"] != "BOOKMARK":
                    self._deliver(time.monotonic(), ev["type"], ev["object"])
        finally:
            conn.close()


class Tracker:
    """Per object key: the last value of ``state(obj)`` and when ``done(value)`` first held."""

    def __init__(self, state: Callable[[dict], Any], done: Callable[[str, Any], bool]) -> None:
        self.state, self.done = state, done
        self.values: dict[str, Any] = {}
        self.done_at: dict[str, float] = {}
        self.cond = threading.Condition()

    def __call__(self, t: float, typ: str, obj: dict) -> None:
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        with self.cond:
            if typ == "DELETED":
                self.values.pop(key, None)
                self.done_at.pop(key, None)
            else:
                v = self.state(obj)
                self.values[key] = v
                if self.done(key, v):
                    self.done_at.setdefault(key, t)
                else:
                    self.done_at.pop(key, None)
            self.cond.notify_all()

    def reset(self, keys: Iterable[str]) -> None:
        with self.cond:
            for k in keys:
                self.done_at.pop(k, None)

    def wait_all(self, keys: Iterable[str], timeout: float, what: str) -> float:
        """Wait until ``done`` holds for every key; the latest time it came true."""
        keys = list(keys)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                missing = [k for k in keys if k not in self.done_at]
                if not missing:
                    return max(self.done_at[k] for k in keys) if keys else time.monotonic()
                left = deadline - time.monotonic()
                if left <= 0:
                    sample = {k: self.values.get(k) for k in missing[:3]}
                    raise TimeoutError(f"{what}: {len(missing)} of {len(keys)} not there after {timeout:.0f}s; e.g. {sample}")
                self.cond.wait(min(left, 1.0))


# ------------------------------------------------------------------ objects


def pod_template(app: str, version: str) -> dict[str, Any]:
    """A pod template like a real service's: labels, annotations, env, probes, resources, a sidecar."""
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3}
    return {
        "metadata": {
            "labels": {"app": app, "team": "shop", "tier": "backend"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9102"},
        },
        "spec": {
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
            "containers": [
                {
                    "name": "app",
                    "image": f"registry.example.com/shop/{app}:{version}",
                    "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9102}],
                    "env": [
                        {"name": "LOG_LEVEL", "value": "info"},
                        {"name": "DB_HOST", "value": "postgres.shop.svc"},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    ],
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                    "readinessProbe": probe,
                    "livenessProbe": {**probe, "initialDelaySeconds": 10},
                    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True},
                },
                {
                    "name": "proxy",
                    "image": "registry.example.com/infra/proxy:2.7.1",
                    "args": ["--listen=:8443", "--upstream=http://127.0.0.1:8080"],
                    "ports": [{"name": "https", "containerPort": 8443}],
                    "resources": {"requests": {"cpu": "5m", "memory": "16Mi"}},
                },
            ],
        },
    }


def deployment(app: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app, "labels": {"app": app}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}}, "template": pod_template(app, "1.0.0")},
    }


def service(app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": app, "labels": {"app": app}},
        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


def rollout(app: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "teal.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": app, "labels": {"app": app}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": pod_template(app, "1.0.0"),
            # the old colour scales down 5 s after a switch, inside the release window below
            "strategy": {"blueGreen": {"activeServices": [app], "scaleDownDelaySeconds": 5}},
        },
    }


def available(d: dict) -> bool:
    s, want = d.get("status") or {}, d["spec"].get("replicas", 1)
    return (
        s.get("observedGeneration", 0) >= d["metadata"].get("generation", 1)
        and s.get("availableReplicas", 0) == want
        and s.get("updatedReplicas", 0) == want
        and s.get("replicas", 0) == want
    )


def rollout_state(r: dict) -> tuple[str | None, bool, str | None, str | None]:
    s = r.get("status") or {}
    fresh = s.get("observedGeneration", 0) >= r["metadata"].get("generation", 1)
    return s.get("phase"), fresh, s.get("activeColor"), s.get("stableRevision")


def app_name(i: int) -> str:
    return f"svc-{i:04d}"


# ------------------------------------------------------------------ process figures


def cpu_seconds(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def peak_rss_mib(pid: int | None) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, TypeError):
        return None
    return None


# ------------------------------------------------------------------ audit log


@dataclasses.dataclass
class AuditEntry:
    t: float  # wall time the request was received
    verb: str
    resource: str
    namespace: str
    name: str
    agent: str


def read_audit(path: Path | None, user: str = OP_USER) -> list[AuditEntry] | None:
    """One entry per request of ``user`` (a watch logs two stages; counted once)."""
    if path is None or not path.exists():
        return None
    seen: set[str] = set()
    out = []
    with open(path) as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("user", {}).get("username") != user or e.get("auditID") in seen:
                continue
            seen.add(e.get("auditID"))
            ref = e.get("objectRef") or {}
            sub = ref.get("subresource")
            out.append(
                AuditEntry(
                    t=datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp(),
                    verb=e.get("verb", ""),
                    resource=ref.get("resource", "") + (f"/{sub}" if sub else ""),
                    namespace=ref.get("namespace", ""),
                    name=ref.get("name", ""),
                    agent=e.get("userAgent", ""),
                )
            )
    return out


def agent_of(e: AuditEntry) -> str:
    return "teal" if e.agent.startswith("teal") else "kopf" if e.agent.startswith("kopf") else "other"


def kind_of(e: AuditEntry) -> str:
    if e.verb == "watch":
        return "watch"
    if e.resource.startswith("leases"):
        return "lease"
    if e.resource.startswith("events"):
        return "event"
    return "read" if e.verb in ("get", "list") else "write"


def audit_window(entries: list[AuditEntry] | None, t0: float, t1: float) -> dict[str, Any] | None:
    """Requests in [t0, t1): total (watch requests and Leases apart), by agent and by kind."""
    if entries is None:
        return None
    sel = [e for e in entries if t0 <= e.t < t1]
    plain = [e for e in sel if kind_of(e) not in ("watch", "lease")]
    minutes = max(t1 - t0, 1e-9) / 60
    return {
        "seconds": round(t1 - t0, 1),
        "requests": len(plain),
        "requests_per_minute": round(len(plain) / minutes, 1),
        "watch_requests": sum(kind_of(e) == "watch" for e in sel),
        "lease_requests": sum(kind_of(e) == "lease" for e in sel),
        "by_agent": dict(Counter(agent_of(e) for e in plain)),
        "by_agent_per_minute": {k: round(v / minutes, 1) for k, v in Counter(agent_of(e) for e in plain).items()},
        "by_kind": dict(Counter(kind_of(e) for e in sel)),
        "top": dict(Counter(f"{e.verb} {e.resource}" for e in sel).most_common(8)),
    }


# ------------------------------------------------------------------ the run


class Bench:
    def __init__(self, cluster: LocalCluster, opts: Options, workdir: Path) -> None:
        self.cluster, self.opts, self.workdir = cluster, opts, workdir
        assert cluster.server and cluster.admin_token and cluster.ca_file
        self.api = Api(cluster.server, cluster.admin_token, cluster.ca_file)
        run = uuid.uuid4().hex[:4]
        self.base_ns = [f"{opts.prefix}-{run}-base-{i}" for i in range(opts.namespaces)]
        self.ro_ns = [f"{opts.prefix}-{run}-ro-{i}" for i in range(opts.namespaces)]
        self.apps = [(self.ro_ns[i % opts.namespaces], app_name(i), 1 + i % 2) for i in range(opts.rollouts)]
        self.operator: subprocess.Popen | None = None
        self.watches: list[Watch] = []
        self.pool = concurrent.futures.ThreadPoolExecutor(opts.workers)
        self.result: dict[str, Any] = {"rollouts": opts.rollouts, "namespaces": opts.namespaces}
        self.marks: dict[str, float] = {}  # wall-clock marks for the audit windows
        self.released: set[str] = set()
        self.available_at: dict[str, float] = {}

    # helpers
    def parallel(self, fn: Callable[..., Any], items: Iterable[tuple]) -> None:
        for f in [self.pool.submit(fn, *it) for it in items]:
            f.result()

    def watch(self, path: str, namespaces: Iterable[str], tracker: Callable[[float, str, dict], None]) -> Watch:
        w = Watch(self.api, path, set(namespaces), tracker)
        w.start()
        self.watches.append(w)
        if not w.synced.wait(60):
            raise TimeoutError(f"no listing of {path}")
        return w

    def mark(self, name: str) -> float:
        self.marks[name] = time.time()
        return time.monotonic()

    def create_namespaces(self, names: Iterable[str]) -> None:
        self.parallel(lambda n: self.api.call("POST", "/api/v1/namespaces", {"metadata": {"name": n}}), [(n,) for n in names])

    def delete_namespaces(self, names: list[str], wait: bool) -> float:
        t = time.monotonic()
        for n in names:
            try:
                self.api.call("DELETE", f"/api/v1/namespaces/{n}")
            except RuntimeError:
                pass
        deadline = time.monotonic() + self.opts.timeout
        while wait and any(self.api.status("GET", f"/api/v1/namespaces/{n}") != 404 for n in names):
            if time.monotonic() > deadline:
                raise TimeoutError("baseline namespaces not gone")
            time.sleep(1)
        return time.monotonic() - t

    # phases
    def baseline(self) -> None:
        """The control plane's own time to make N Deployments available."""
        self.create_namespaces(self.base_ns)
        deps = Tracker(available, lambda _k, v: bool(v))
        w = self.watch("/apis/apps/v1/deployments", self.base_ns, deps)
        items = [(self.base_ns[i % self.opts.namespaces], app_name(i), 1 + i % 2) for i in range(self.opts.rollouts)]
        if self.opts.baseline_services:  # as create_rollouts() does before its clock starts
            self.parallel(lambda ns, app, n: self.api.call("POST", f"/api/v1/namespaces/{ns}/services", service(app)), items)
        self.result["baseline_services"] = self.opts.baseline_services
        t0 = time.monotonic()
        self.parallel(
            lambda ns, app, n: self.api.call("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", deployment(app, n)), items
        )
        created = time.monotonic()
        t_all = deps.wait_all([f"{ns}/{app}" for ns, app, _ in items], self.opts.timeout, "baseline Deployments available")
        w.stopping.set()  # its thread ends at its next event: no work for this process later on
        self.result["baseline_create_seconds"] = round(created - t0, 2)
        self.result["baseline_all_available_seconds"] = round(t_all - t0, 2)
        gone = self.delete_namespaces(self.base_ns, wait=self.opts.wait_baseline_gone)
        self.result["baseline_delete_seconds"] = round(gone, 1) if self.opts.wait_baseline_gone else None

    def start_operator(self) -> None:
        """A ServiceAccount of its own (cluster-admin) so the audit log names its requests; then the operator."""
        a = self.api
        if a.status("GET", f"/api/v1/namespaces/{OP_NS}") == 404:
            a.call("POST", "/api/v1/namespaces", {"metadata": {"name": OP_NS}})
        if a.status("GET", f"/api/v1/namespaces/{OP_NS}/serviceaccounts/{OP_SA}") == 404:
            a.call("POST", f"/api/v1/namespaces/{OP_NS}/serviceaccounts", {"metadata": {"name": OP_SA}})
        crb = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
        if a.status("GET", f"{crb}/teal-bench-operator") == 404:
            a.call(
                "POST",
                crb,
                {
                    "metadata": {"name": "teal-bench-operator"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                    "subjects": [{"kind": "ServiceAccount", "name": OP_SA, "namespace": OP_NS}],
                },
            )
        token = self.cluster.create_token(OP_NS, OP_SA, expiration_seconds=24 * 3600)
        kubeconfig = self.cluster.write_kubeconfig(self.workdir / "operator.kubeconfig", token, OP_SA)
        src = Path(self.opts.operator_src).resolve()
        env = dict(os.environ, KUBECONFIG=kubeconfig, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
        which = subprocess.run(
            [sys.executable, "-c", "import teal; print(teal.__file__)"], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        if not which.startswith(str(src)):
            raise RuntimeError(f"--operator-src {src}: the operator would import {which}")
        self.result["operator_src"] = str(src)
        args = ["--liveness-port", "0", "--metrics-port", "0", "--log-level", "warning", "--routers", "none"]
        scope = [a for ns in [*self.ro_ns, OP_NS] for a in ("-n", ns)] if self.opts.namespaced else ["-A"]
        args += [*scope, *self.opts.operator_args]
        self.log = open(self.workdir / "operator.log", "ab")  # noqa: SIM115 - closed in stop()
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "teal.main", "run", *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def warm_up(self) -> None:
        """One Rollout in the operator's namespace, Healthy: the operator runs and watches."""
        a, t = self.api, time.monotonic()
        a.call("POST", f"/api/v1/namespaces/{OP_NS}/services", service("warmup"))
        a.call("POST", f"{ROLLOUTS}/namespaces/{OP_NS}/rollouts", rollout("warmup", 1))
        deadline = t + 120
        while (a.call("GET", f"{ROLLOUTS}/namespaces/{OP_NS}/rollouts/warmup").get("status") or {}).get("phase") != "Healthy":
            if self.operator is None or self.operator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not make the warm-up Rollout Healthy; see {self.workdir / 'operator.log'}")
            time.sleep(0.2)
        self.result["operator_ready_seconds"] = round(time.monotonic() - t, 1)

    def create_rollouts(self) -> Tracker:
        o, pid = self.opts, self.operator.pid if self.operator else None
        self.create_namespaces(self.ro_ns)
        self.parallel(lambda ns, app, n: self.api.call("POST", f"/api/v1/namespaces/{ns}/services", service(app)), self.apps)
        ros = Tracker(rollout_state, lambda _k, v: v[0] == "Healthy" and v[1])
        self.watch(f"{ROLLOUTS}/rollouts", self.ro_ns, ros)
        cpu0, api0 = cpu_seconds(pid), cpu_seconds(self.cluster.pids().get("kube-apiserver"))
        t0 = self.mark("create")
        self.parallel(
            lambda ns, app, n: self.api.call("POST", f"{ROLLOUTS}/namespaces/{ns}/rollouts", rollout(app, n)), self.apps
        )
        t_all = ros.wait_all([f"{ns}/{app}" for ns, app, _ in self.apps], o.timeout, "Rollouts Healthy")
        self.marks["healthy"] = self.marks["create"] + (t_all - t0)
        cpu = cpu_seconds(pid) - cpu0
        r = self.result
        r["create_to_all_healthy_seconds"] = round(t_all - t0, 2)
        base = r.get("baseline_all_available_seconds")
        r["healthy_vs_baseline_ratio"] = round((t_all - t0) / base, 2) if base else None
        r["settling_operator_cpu_seconds"] = round(cpu, 2)
        r["settling_operator_cpu_seconds_per_minute"] = round(cpu / max(t_all - t0, 1e-9) * 60, 2)
        r["settling_apiserver_cpu_seconds"] = round(cpu_seconds(self.cluster.pids().get("kube-apiserver")) - api0, 2)
        return ros

    def idle(self) -> None:
        pid = self.operator.pid if self.operator else None
        apiserver = self.cluster.pids().get("kube-apiserver")
        time.sleep(self.opts.settle)  # the measurement window is the point here, not a wait on a condition
        cpu0, api0 = cpu_seconds(pid), cpu_seconds(apiserver)
        t0 = self.mark("idle_start")
        time.sleep(self.opts.idle)
        t1 = self.mark("idle_end")
        minutes = (t1 - t0) / 60
        self.result["idle_seconds"] = round(t1 - t0, 1)
        self.result["idle_operator_cpu_seconds_per_minute"] = round((cpu_seconds(pid) - cpu0) / minutes, 3)
        self.result["idle_apiserver_cpu_seconds_per_minute"] = round((cpu_seconds(apiserver) - api0) / minutes, 3)

    def releases(self, ros: Tracker) -> None:
        """Some Rollouts, spread over the namespaces, get a new image at the same moment."""
        chosen = self.apps[:: max(1, len(self.apps) // max(1, self.opts.releases))][: self.opts.releases]
        keys = [f"{ns}/{app}" for ns, app, _ in chosen]
        with ros.cond:
            stable = {k: ros.values[k][2] for k in keys}
            revision = {k: ros.values[k][3] for k in keys}
        new = {k: "green" if c == "blue" else "blue" for k, c in stable.items()}
        avail: dict[str, float] = {}
        switched: dict[str, float] = {}
        scaled_down: dict[str, float] = {}
        lock = threading.Lock()
        nss = {ns for ns, _, _ in chosen}

        def on_deployment(t: float, typ: str, d: dict) -> None:
            ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
            app, _, colour = name.rpartition("-")
            k = f"{ns}/{app}"
            if k not in new or typ == "DELETED":
                return
            image = d["spec"]["template"]["spec"]["containers"][0]["image"]
            with lock:
                if colour == new[k] and image.endswith(":2.0.0") and available(d):
                    avail.setdefault(k, t)
                if colour == stable[k] and k in switched and d["spec"].get("replicas") == 0:
                    scaled_down.setdefault(k, t)

        def on_service(t: float, typ: str, s: dict) -> None:
            k = f"{s['metadata']['namespace']}/{s['metadata']['name']}"
            if k in new and (s["spec"].get("selector") or {}).get("teal.dev/color") == new[k]:
                with lock:
                    switched.setdefault(k, t)

        self.watch("/apis/apps/v1/deployments", nss, on_deployment)
        self.watch("/api/v1/services", nss, on_service)
        # done again once Healthy on the new revision (the patch makes the status stale first)
        ros.done = lambda k, v: v[0] == "Healthy" and v[1] and (k not in revision or v[3] != revision[k])
        ros.reset(keys)
        pid = self.operator.pid if self.operator else None
        cpu0 = cpu_seconds(pid)
        barrier = threading.Barrier(len(chosen))
        sent: dict[str, float] = {}

        def release(ns: str, app: str, _n: int) -> None:
            image = f"registry.example.com/shop/{app}:2.0.0"
            body = [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": image}]
            barrier.wait()
            sent[f"{ns}/{app}"] = time.monotonic()
            self.api.call("PATCH", f"{ROLLOUTS}/namespaces/{ns}/rollouts/{app}", body, "application/json-patch+json")

        pool = concurrent.futures.ThreadPoolExecutor(len(chosen))
        self.mark("release_start")
        t0 = time.monotonic()
        for f in [pool.submit(release, *c) for c in chosen]:
            f.result()
        pool.shutdown()
        deadline = t0 + self.opts.timeout
        while True:
            with lock:
                done = len(switched) == len(keys) and len(scaled_down) == len(keys)
            if done:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"releases: {len(switched)} switched, {len(scaled_down)} scaled down of {len(keys)}")
            time.sleep(0.1)
        t_healthy = ros.wait_all(keys, self.opts.timeout, "released Rollouts Healthy")
        with ros.cond:
            moved = sum(ros.values[k][3] != revision[k] for k in keys)
        t_end = max(max(scaled_down.values()), t_healthy)
        self.marks["release_end"] = self.marks["release_start"] + (t_end - t0)
        latencies = [switched[k] - avail[k] for k in keys if k in avail]
        r = self.result
        r["releases"] = len(keys)
        r["releases_new_stable_revision"] = moved
        r["releases_all_switched_seconds"] = round(max(switched.values()) - t0, 2)
        r["releases_end_to_end_p50_ms"] = round(pct([switched[k] - sent[k] for k in keys], 50) * 1000)
        r["releases_done_seconds"] = round(t_end - t0, 2)
        r["switch_latency_ms"] = {p: round(pct(latencies, q) * 1000, 1) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))}
        r["switch_latency_ms"]["max"] = round(max(latencies) * 1000, 1)
        r["switch_latency_ms"]["n"] = len(latencies)
        r["releases_operator_cpu_seconds"] = round(cpu_seconds(pid) - cpu0, 2)
        self.released = {app for _, app, _ in chosen}
        # wall-clock time each new colour was seen available, for the audit log's Service PATCHes
        wall = self.marks["release_start"] - t0
        self.available_at = {k.split("/", 1)[1]: t + wall for k, t in avail.items()}

    def audit(self) -> None:
        entries = read_audit(self.cluster.audit_log)
        m, r = self.marks, self.result
        r["audit"] = (
            "apiserver audit log (Metadata level), requests of the operator's ServiceAccount" if entries is not None else None
        )
        r["requests_until_healthy"] = audit_window(entries, m["create"], m["healthy"])
        r["requests_idle"] = audit_window(entries, m["idle_start"], m["idle_end"])
        win = audit_window(entries, m["release_start"], m["release_end"])
        r["requests_releases"] = win
        if entries is None or win is None:
            return
        n = max(1, r["releases"])
        idle = r["requests_idle"]["requests_per_minute"] if r["requests_idle"] else 0
        named = [
            e
            for e in entries
            if m["release_start"] <= e.t < m["release_end"]
            and kind_of(e) not in ("watch", "lease")
            and (e.name in self.released or e.name.rpartition("-")[0] in self.released or e.name.split(".")[0] in self.released)
        ]
        r["requests_per_release"] = round(win["requests"] / n, 1)
        r["requests_per_release_net_of_idle"] = round((win["requests"] - idle * win["seconds"] / 60) / n, 1)
        r["requests_per_release_naming_its_objects"] = round(len(named) / n, 1)
        r["requests_per_release_naming_its_objects_by_verb"] = dict(Counter(f"{e.verb} {e.resource}" for e in named))
        # the operator's share of the switch: available (this process's watch) -> its Service PATCH received
        # (the only Service write of a release; below 0 would mean this process's watch lagged)
        patched: dict[str, float] = {}
        for e in named:
            if e.verb == "patch" and e.resource == "services" and e.name in self.available_at:
                patched.setdefault(e.name, e.t)
        lat = [patched[a] - self.available_at[a] for a in patched]
        if lat:
            r["switch_available_to_service_patch_ms"] = {
                **{p: round(pct(lat, q) * 1000, 1) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))},
                "max": round(max(lat) * 1000, 1),
                "n": len(lat),
            }

    def run(self) -> dict[str, Any]:
        r = self.result
        r["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
        try:
            self.baseline()
            self.start_operator()
            self.warm_up()
            ros = self.create_rollouts()
            self.idle()
            if self.opts.releases:
                self.releases(ros)
            else:
                self.marks["release_start"] = self.marks["release_end"] = time.time()
            pid = self.operator.pid if self.operator else None
            r["operator_peak_rss_mib"] = round(peak_rss_mib(pid) or 0, 1)
            r["apiserver_rss_mib"] = round((peak_rss_mib(self.cluster.pids().get("kube-apiserver")) or 0), 1)
            self.audit()
        finally:
            r["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
            self.stop()
        return r

    def stop(self) -> None:
        for w in self.watches:
            w.stopping.set()
        if self.operator is not None and self.operator.poll() is None:
            os.killpg(self.operator.pid, 15)
            try:
                self.operator.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.operator.pid, 9)
                self.operator.wait(5)
            self.log.close()
        self.pool.shutdown(wait=False)


def run(cluster: LocalCluster, opts: Options, workdir: Path) -> dict[str, Any]:
    """The bench on a running cluster (its CRDs installed); cleans up its namespaces afterwards."""
    b = Bench(cluster, opts, workdir)
    try:
        return b.run()
    finally:
        b.delete_namespaces(b.ro_ns + b.base_ns + [OP_NS], wait=False)
        try:
            b.api.call("DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/teal-bench-operator")
        except RuntimeError:
            pass


# ------------------------------------------------------------------ output


def net_of_idle(r: dict[str, Any]) -> str:
    """Below 0 when the operator was saturated: the idle loops then yield to the releases."""
    v = r.get("requests_per_release_net_of_idle")
    return "n/a (saturated)" if v is None or v < 0 else str(v)


def patch_latency(r: dict[str, Any]) -> str:
    w = r.get("switch_available_to_service_patch_ms")
    return f"{w['p50']} / {w['p99']} ms (audit log, n={w['n']})" if w else "n/a (no audit log)"


def table(r: dict[str, Any]) -> str:
    def req(w: dict | None, per_minute: bool = False) -> str:
        if not w:
            return "n/a (no audit log)"
        by = w["by_agent_per_minute" if per_minute else "by_agent"]
        agents = ", ".join(f"{k} {v}" for k, v in sorted(by.items())) or "none"
        extra = f"{w['watch_requests']} watch, {w['lease_requests']} lease requests in {w['seconds']} s"
        return f"{w['requests_per_minute' if per_minute else 'requests']} ({agents}; besides: {extra})"

    sw = r.get("switch_latency_ms") or {}
    rows = [
        ("Rollouts / namespaces", f"{r['rollouts']} / {r['namespaces']}"),
        ("operator tree", r.get("operator_src")),
        (
            "baseline: N Deployments "
            + ("and Services" if r.get("baseline_services") else "(no Services)")
            + " -> all available",
            f"{r['baseline_all_available_seconds']} s",
        ),
        ("create -> all Rollouts Healthy", f"{r['create_to_all_healthy_seconds']} s"),
        ("  ratio to baseline (target <= 1.1)", r.get("healthy_vs_baseline_ratio")),
        ("operator API requests until all Healthy", req(r.get("requests_until_healthy"))),
        (
            "operator CPU while settling",
            f"{r['settling_operator_cpu_seconds']} s ({r['settling_operator_cpu_seconds_per_minute']} s/min)",
        ),
        (f"idle ({r['idle_seconds']} s): operator API requests/min", req(r.get("requests_idle"), per_minute=True)),
        ("idle: operator CPU s/min", r["idle_operator_cpu_seconds_per_minute"]),
        ("idle: kube-apiserver CPU s/min", r["idle_apiserver_cpu_seconds_per_minute"]),
        ("operator RSS, peak", f"{r.get('operator_peak_rss_mib')} MiB"),
    ]
    if r.get("releases"):
        rows += [
            (
                f"{r['releases']} releases at once: all switched",
                f"{r['releases_all_switched_seconds']} s (done incl. scale-down {r['releases_done_seconds']} s)",
            ),
            ("  switch latency p50/p90/p99/max", f"{sw.get('p50')} / {sw.get('p90')} / {sw.get('p99')} / {sw.get('max')} ms"),
            ("  of which: available -> operator's Service PATCH p50/p99", patch_latency(r)),
            ("  end to end (patch -> switched) p50", f"{r['releases_end_to_end_p50_ms']} ms"),
            (
                "  API requests per release",
                f"{r.get('requests_per_release')} (net of idle {net_of_idle(r)}; naming its objects {r.get('requests_per_release_naming_its_objects')})",
            ),
        ]
    rows.append(("load average start / end", f"{r['load_average_start']} / {r['load_average_end']}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rollouts", type=int, default=100)
    ap.add_argument("--namespaces", type=int, default=10)
    ap.add_argument("--idle", type=float, default=120.0, help="idle window in seconds (default 120)")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds after all Healthy before the idle window")
    ap.add_argument("--releases", type=int, default=20)
    ap.add_argument("--operator-src", type=Path, default=REPO / "operator", help="the tree's operator/ folder to run")
    ap.add_argument("--operator-arg", action="append", default=[], help="extra argument for `teal run` (repeat)")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument(
        "--bare-baseline", action="store_true", help="baseline Deployments without their Services (no endpoints to keep)"
    )
    ap.add_argument("--keep", type=Path, help="keep the cluster's logs, the audit log and the operator log here")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON after the table")
    args = ap.parse_args()
    opts = Options(
        rollouts=args.rollouts,
        namespaces=max(1, min(args.namespaces, args.rollouts)),
        idle=args.idle,
        settle=args.settle,
        releases=min(args.releases, args.rollouts),
        operator_src=args.operator_src,
        operator_args=tuple(args.operator_arg),
        timeout=args.timeout,
        baseline_services=not args.bare_baseline,
    )
    work = args.keep or Path(tempfile.mkdtemp(prefix="teal-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    # kwok fakes every pod: room for the Rollouts' two colours during releases and then some
    nodes = max(3, math.ceil(opts.rollouts * 2 / 1000) + 1)
    with LocalCluster(
        work / "cluster", nodes=nodes, node_pods=1000, keep_logs=args.keep is not None, audit_policy=AUDIT_POLICY
    ) as cluster:
        api = cluster.api_client()
        install_crds(api, crd_documents(sorted((REPO / "crds").glob("*.yaml"))))
        result = run(cluster, opts, work)
    print(table(result))
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
