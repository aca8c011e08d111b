"""A real, local Kubernetes control plane made of plain processes.

``LocalCluster`` starts, each in its own process group and bound to 127.0.0.1
on free ports:

* etcd (data on ``/dev/shm`` when available),
* kube-apiserver (TLS with a CA made by ``openssl``, static admin token,
  RBAC, service-account signing keys so the TokenRequest API works),
* kube-controller-manager and kube-scheduler (no leader election),
* kwok, which plays the kubelet for fake Nodes (created here) so pods get
  scheduled, get IPs and turn Ready within a second or so.

Usage::

    from teal_devenv.cluster import LocalCluster

    with LocalCluster() as c:          # start() on enter, stop() on exit
        print(c.kubeconfig, c.server)
        api = c.api_client()           # kubernetes.client.ApiClient (admin)

The kwok Stages (``teal_devenv/kwok/*.yaml``, see :func:`kwok_stages`) also understand the pod
annotation ``teal.dev/fake-not-ready: "true"``: such a pod runs and gets an
IP but stays not Ready until the annotation is removed.

CLI: ``python -m teal_devenv.cluster up --dir DIR`` (foreground, Ctrl-C stops).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import importlib.resources
import json
import os
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from teal_devenv.binaries import Binaries, find_binaries
from teal_devenv.procs import (
    Component,
    ComponentExited,
    aliased_binary,
    free_port,
    main_thread,
    processes_mentioning,
    rss_kib,
    sweep_stale_dirs,
    wait_while_alive,
)
from teal_devenv.wait import WaitTimeout

NOT_READY_ANNOTATION = "teal.dev/fake-not-ready"
NODE_LABEL = ("type", "kwok")
NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


# The CA's and the apiserver certificate's openssl config (the apiserver answers on 127.0.0.1 and
# as the in-cluster "kubernetes" Service).
OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = teal-local
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = @alt
[alt]
DNS.1 = localhost
DNS.2 = kubernetes
DNS.3 = kubernetes.default
DNS.4 = kubernetes.default.svc
DNS.5 = kubernetes.default.svc.cluster.local
IP.1 = 127.0.0.1
IP.2 = {service_ip}
"""


# Every request at Metadata level (who, verb, object, user agent; no bodies), one entry when the
# response is complete (and one when a watch's response starts): LocalCluster(audit_policy=...).
METADATA_AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


class ClusterError(RuntimeError):
    """The local cluster failed to start (the message holds the log tail)."""


# kwok ships no default Stages inside its binary (kwokctl writes them into a
# config file); ours are the YAML files of teal_devenv/kwok/, written for what Teal's tests need.
KWOK_STAGES_DIR = "kwok"  # package data of teal_devenv


def kwok_stages() -> str:
    """The kwok Stages (teal_devenv/kwok/*.yaml, package data) as one multi-document YAML text."""
    folder = importlib.resources.files("teal_devenv") / KWOK_STAGES_DIR
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
    if not files:
        raise ClusterError(f"no kwok Stage files in teal_devenv/{KWOK_STAGES_DIR}/")
    return "---\n".join(f.read_text() for f in files)


_LIVE: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for c in list(_LIVE):
        try:
            c.stop()
        except Exception:  # pragma: no cover - best effort at exit
            pass


# ----------------------------------------------------------------- cluster


class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok.

    Attributes set by :meth:`start`: ``server`` (https URL), ``kubeconfig``
    (admin kubeconfig path), ``admin_token``, ``ca_file``, ``etcd_url``,
    ``node_names``, ``timings`` (seconds per phase) and ``components``.
    """

    SERVICE_CIDR = "10.96.0.0/16"
    SERVICE_IP = "10.96.0.1"
    SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

    def __init__(
        self,
        workdir: str | os.PathLike | None = None,
        *,
        nodes: int = 3,
        node_cpu: str = "32",
        node_memory: str = "256Gi",
        node_pods: int = 250,
        keep_logs: bool = False,
        binaries: Binaries | None = None,
        start_timeout: float = 120.0,
        stop_timeout: float = 10.0,
        etcd_quota_bytes: int = 512 * 1024 * 1024,
        name: str = "teal-local",
        verbosity: int = 0,
        audit_policy: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        # Opt-in apiserver audit log: with a policy (an audit.k8s.io/v1 Policy as a dict,
        # e.g. METADATA_AUDIT_POLICY), the apiserver writes JSON lines to ``audit_log``.
        self.audit_policy = audit_policy
        self.audit_log: Path | None = None
        self.nodes = nodes
        self.node_cpu = node_cpu
        self.node_memory = node_memory
        self.node_pods = node_pods
        self.keep_logs = keep_logs
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.etcd_quota_bytes = etcd_quota_bytes
        self.verbosity = verbosity
        self._binaries = binaries
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self.logs_dir: Path | None = None
        self.pki_dir: Path | None = None
        self.etcd_dir: Path | None = None
        self.kubeconfig: str | None = None
        self.server: str | None = None
        self.admin_token: str | None = None
        self.ca_file: str | None = None
        self.ca_key_file: str | None = None
        self.etcd_url: str | None = None
        self.apiserver_port: int | None = None
        self.node_names: list[str] = [f"kwok-node-{i}" for i in range(nodes)]
        self.components: dict[str, Component] = {}
        self.timings: dict[str, float] = {}
        self._tokens: dict[str, str] = {}
        self._lock = threading.RLock()
        self._started = False
        self._stopped = False
        self._ssl: ssl.SSLContext | None = None

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Start everything and wait until the cluster is usable (or raise)."""
        with self._lock:
            if self._started:
                return self
            if self._stopped:
                raise ClusterError("a stopped LocalCluster cannot be started again; make a new one")
            self._started = True
            _LIVE.add(self)
        t0 = time.monotonic()
        try:
            self._start(t0)
        except BaseException as exc:
            failed = self._describe_failure()
            self.stop()
            if isinstance(exc, ClusterError):
                raise
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise ClusterError(f"local cluster failed to start: {exc!r}{failed}") from exc
        self.timings["total"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Kill every process (SIGTERM, then SIGKILL) and remove temp dirs. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        t0 = time.monotonic()
        comps = list(self.components.values())
        # Everything at once, control plane clients first; etcd last.
        for c in reversed(comps):
            if c.name != "etcd":
                c.signal_group(signal.SIGTERM)
        self._reap([c for c in comps if c.name != "etcd"], self.stop_timeout)
        for c in comps:
            if c.name == "etcd":
                c.signal_group(signal.SIGTERM)
        self._reap([c for c in comps if c.name == "etcd"], self.stop_timeout)
        for c in comps:
            c.signal_group(signal.SIGKILL)  # stragglers in the group, if any
            c.close_log()
        self._cleanup_dirs()
        self.timings["stop"] = time.monotonic() - t0
        _LIVE.discard(self)

    def _reap(self, comps: list[Component], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for c in comps:
            if c.proc is None:
                continue
            try:
                c.proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.signal_group(signal.SIGKILL)
                try:
                    c.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
                    pass

    def _cleanup_dirs(self) -> None:
        if self.etcd_dir is not None:
            shutil.rmtree(self.etcd_dir, ignore_errors=True)
        if self.workdir is None or not self.workdir.exists():
            return
        if self.keep_logs:
            for child in self.workdir.iterdir():
                if child.name in ("logs", "kubeconfig"):
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        elif self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            for name in ("pki", "bin", "kwok-home", "kubeconfigs", "logs", "kubeconfig", "kwok.yaml"):
                p = self.workdir / name
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists():
                    p.unlink(missing_ok=True)

    # ------------------------------------------------------------ start steps

    def _start(self, t0: float) -> None:
        b = self._binaries or find_binaries()
        self._binaries = b
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="teal-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = self.workdir.resolve()
        self.logs_dir = self.workdir / "logs"
        self.logs_dir.mkdir(exist_ok=True)
        self.pki_dir = self.workdir / "pki"
        self.pki_dir.mkdir(exist_ok=True)
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        if base is not None:
            sweep_stale_dirs(base, "teal-etcd-")  # RAM left behind by SIGKILLed runs
        self.etcd_dir = Path(tempfile.mkdtemp(prefix="teal-etcd-", dir=base))

        self._make_pki()
        self.timings["pki"] = time.monotonic() - t0

        self._start_with_port_retry("etcd", self._launch_etcd, self._etcd_ready, 30)
        self.timings["etcd"] = time.monotonic() - t0

        self._start_with_port_retry("kube-apiserver", self._launch_apiserver, self._apiserver_ready, 60)
        self.timings["apiserver"] = time.monotonic() - t0
        self._write_kubeconfigs()

        self._launch_kcm()
        self._launch_scheduler()
        self._launch_kwok()
        self._create_nodes()
        self._wait(self._nodes_ready, self._remaining(t0), "3 fake nodes to be Ready")
        self.timings["nodes"] = time.monotonic() - t0
        self._wait(self._default_sa_exists, self._remaining(t0), "the default ServiceAccount in 'default'")
        self.timings["default_sa"] = time.monotonic() - t0

    def _remaining(self, t0: float) -> float:
        return max(1.0, self.start_timeout - (time.monotonic() - t0))

    def _env(self, home: Path | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
        # kwok v0.8 is built with client-go v0.36, whose informers ask for
        # "watch-list" streams by default. The API server refuses those when
        # etcd cannot report watch progress (etcd 3.4 < 3.4.31), and the
        # informers then fall back to re-listing every few seconds, so kwok
        # would see new pods seconds late. Plain LIST+WATCH avoids that.
        env.setdefault("KUBE_FEATURE_WatchListClient", "false")
        if home is not None:
            home.mkdir(parents=True, exist_ok=True)
            env["HOME"] = str(home)
        return env

    def _spawn(self, name: str, args: list[str], home: Path | None = None) -> Component:
        assert self.logs_dir is not None
        comp = Component(name, args, self.logs_dir / f"{name}.log", self._env(home))
        self.components[name] = comp
        comp.start(pdeathsig=main_thread())
        return comp

    def _start_with_port_retry(
        self, name: str, launch: Callable[[], Component], ready: Callable[[], bool], timeout: float
    ) -> None:
        for _attempt in range(3):
            comp = launch()
            try:
                self._wait(ready, timeout, f"{name} to be ready")
                return
            except ClusterError:
                if comp.alive() or "address already in use" not in comp.tail(200):
                    raise
                comp.close_log()  # port was taken between allocation and bind: retry
        raise ClusterError(f"{name} could not bind a free port after 3 attempts{self._describe_failure()}")

    def _openssl(self, command: str) -> None:
        """Run ``openssl COMMAND`` (split as a shell would) in the PKI folder."""
        proc = subprocess.run(
            ["openssl", *shlex.split(command)], cwd=self.pki_dir, stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise ClusterError(f"openssl {command} failed: {proc.stderr.strip()}")

    def _make_pki(self) -> None:
        """A CA, the apiserver's serving certificate (openssl), the service-account key pair and the static tokens."""
        pki = self.pki_dir
        assert pki is not None
        (pki / "openssl.cnf").write_text(OPENSSL_CNF.format(service_ip=self.SERVICE_IP))
        ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        ca_subject = shlex.quote(f"/CN={self.name}-ca")
        self._openssl(
            f"req -x509 -config openssl.cnf -extensions v3_ca {ec} -keyout ca.key -out ca.crt -days 3650 -subj {ca_subject}"
        )
        self._openssl(f"req -new -config openssl.cnf {ec} -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver")
        serial = int.from_bytes(secrets.token_bytes(8), "big")
        self._openssl(
            f"x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -set_serial {serial} -out apiserver.crt -days 3650"
            " -extfile openssl.cnf -extensions v3_server"
        )
        self._openssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key")
        self._openssl("pkey -in sa.key -pubout -out sa.pub")
        for f in pki.iterdir():
            if f.suffix == ".key":
                f.chmod(0o600)
        self.ca_file = str(pki / "ca.crt")
        self.ca_key_file = str(pki / "ca.key")
        self._ssl = ssl.create_default_context(cafile=self.ca_file)
        self._make_tokens(pki)

    def _make_tokens(self, pki: Path) -> None:
        """Static tokens: one per component, all cluster admins (system:masters)."""
        users = {
            "admin": "teal-admin",
            "kube-controller-manager": "system:kube-controller-manager",
            "kube-scheduler": "system:kube-scheduler",
            "kwok": "kwok-controller",
        }
        self._tokens = {component: secrets.token_hex(24) for component in users}
        self.admin_token = self._tokens["admin"]
        lines = [f'{tok},{users[k]},{users[k]},"system:masters"' for k, tok in self._tokens.items()]
        tokens = pki / "tokens.csv"
        tokens.write_text("\n".join(lines) + "\n")
        tokens.chmod(0o600)

    # etcd
    def _launch_etcd(self) -> Component:
        assert self.etcd_dir is not None
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        data = self.etcd_dir / "data"
        shutil.rmtree(data, ignore_errors=True)
        b = self._binaries
        assert b is not None
        assert self.workdir is not None
        etcd = aliased_binary(b.etcd, "teal-etcd", self.workdir / "bin")  # survives `pkill -x etcd`
        return self._spawn(
            "etcd",
            [
                etcd,
                f"--name={self.name}",
                f"--data-dir={data}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster={self.name}=http://127.0.0.1:{peer}",
                "--initial-cluster-state=new",
                f"--initial-cluster-token={self.name}-{secrets.token_hex(4)}",
                f"--quota-backend-bytes={self.etcd_quota_bytes}",
                "--snapshot-count=10000",
                "--auto-compaction-mode=periodic",
                "--auto-compaction-retention=5m",
                "--heartbeat-interval=100",
                "--election-timeout=500",
                "--logger=zap",
                "--log-outputs=stderr",
                "--log-level=warn",
            ],
        )

    def _etcd_ready(self) -> bool:
        with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as r:
            return json.loads(r.read()).get("health") in ("true", True)

    # kube-apiserver
    def _launch_apiserver(self) -> Component:
        pki = self.pki_dir
        b = self._binaries
        assert pki is not None and b is not None
        self.apiserver_port = free_port()
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        return self._spawn(
            "kube-apiserver",
            [
                b.kube_apiserver,
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={self.SA_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={self.SERVICE_CIDR}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                # etcd 3.4.23 cannot report watch progress (RequestWatchProgress
                # needs >= 3.4.31), and with WatchList on, the API server turns
                # every plain watch from resourceVersion ""/"0" into a watch-list
                # stream that then fails ("a watch stream was requested by the
                # client but the required storage feature RequestWatchProgress is
                # disabled"). Plain LIST+WATCH semantics work with etcd 3.4.
                "--feature-gates=WatchList=false",
                "--profiling=false",
                "--event-ttl=30m",
                # Endpoints may not be loopback addresses, and nothing in a kwok
                # cluster dials the in-cluster "kubernetes" Service anyway.
                "--endpoint-reconciler-type=none",
                "--shutdown-delay-duration=0s",
                f"--v={self.verbosity}",
                *self._audit_args(),
            ],
        )

    def _audit_args(self) -> list[str]:
        """The apiserver's audit flags when an audit policy was given (off by default)."""
        if self.audit_policy is None:
            return []
        assert self.workdir is not None and self.logs_dir is not None
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(self.audit_policy, sort_keys=False))
        self.audit_log = self.logs_dir / "audit.log"
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=0",  # one file, never rotated: a reader sees every entry
        ]

    def _apiserver_ready(self) -> bool:
        status, body = self._raw("GET", "/readyz")
        return status == 200 and body.strip() == b"ok"

    def restart_apiserver(self, timeout: float = 60) -> None:
        """SIGKILL kube-apiserver and start it again on the same port, etcd untouched
        (for chaos tests: every client's connections and watches break at once)."""
        old = self.components["kube-apiserver"]
        old.signal_group(signal.SIGKILL)
        self._reap([old], 10)
        old.close_log()
        self._spawn("kube-apiserver", old.args)
        self._wait(self._apiserver_ready, timeout, "kube-apiserver to be ready again")

    # kubeconfigs
    def kubeconfig_dict(self, token: str, user: str = "admin") -> dict[str, Any]:
        """A kubeconfig (as a dict) for this cluster authenticating with ``token``."""
        assert self.ca_file is not None and self.server is not None
        ca = base64.b64encode(Path(self.ca_file).read_bytes()).decode()
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": self.name, "cluster": {"server": self.server, "certificate-authority-data": ca}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": f"{user}@{self.name}", "context": {"cluster": self.name, "user": user}}],
            "current-context": f"{user}@{self.name}",
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | os.PathLike, token: str | None = None, user: str = "admin") -> str:
        """Write a kubeconfig for ``token`` (default: admin) to ``path``; return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.kubeconfig_dict(token or self.admin_token or "", user), sort_keys=False))
        path.chmod(0o600)
        return str(path)

    def _write_kubeconfigs(self) -> None:
        assert self.workdir is not None
        self.kubeconfig = self.write_kubeconfig(self.workdir / "kubeconfig")
        for comp in ("kube-controller-manager", "kube-scheduler", "kwok"):
            self.write_kubeconfig(self.workdir / "kubeconfigs" / f"{comp}.yaml", self._tokens[comp], comp)

    # kube-controller-manager
    def _launch_kcm(self) -> None:
        pki, b, wd = self.pki_dir, self._binaries, self.workdir
        assert pki is not None and b is not None and wd is not None
        self._spawn(
            "kube-controller-manager",
            [
                b.kube_controller_manager,
                f"--kubeconfig={wd / 'kubeconfigs' / 'kube-controller-manager.yaml'}",
                "--leader-elect=false",
                "--secure-port=0",
                "--controllers=*",
                "--use-service-account-credentials=false",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={self.SERVICE_CIDR}",
                f"--cluster-name={self.name}",
                "--profiling=false",
                f"--v={self.verbosity}",
            ],
        )

    # kube-scheduler
    def _launch_scheduler(self) -> None:
        b, wd = self._binaries, self.workdir
        assert b is not None and wd is not None
        self._spawn(
            "kube-scheduler",
            [
                b.kube_scheduler,
                f"--kubeconfig={wd / 'kubeconfigs' / 'kube-scheduler.yaml'}",
                "--leader-elect=false",
                "--secure-port=0",
                "--profiling=false",
                f"--v={self.verbosity}",
            ],
        )

    # kwok
    def _launch_kwok(self) -> None:
        b, wd = self._binaries, self.workdir
        assert b is not None and wd is not None
        config = wd / "kwok.yaml"
        config.write_text(kwok_stages())
        self._spawn(
            "kwok",
            [
                b.kwok,
                f"--kubeconfig={wd / 'kubeconfigs' / 'kwok.yaml'}",
                f"--config={config}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION[0]}={NODE_ANNOTATION[1]}",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.0/16",
            ],
            home=wd / "kwok-home",  # kwok also reads ~/.kwok/kwok.yaml: keep the user's out
        )

    def node_manifest(self, index: int) -> dict[str, Any]:
        name = self.node_names[index]
        capacity = {"cpu": self.node_cpu, "memory": self.node_memory, "pods": str(self.node_pods)}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    NODE_LABEL[0]: NODE_LABEL[1],
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node-role.kubernetes.io/agent": "",
                },
                "annotations": {NODE_ANNOTATION[0]: NODE_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {"podCIDR": f"10.244.{index}.0/24", "podCIDRs": [f"10.244.{index}.0/24"]},
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "addresses": [
                    {"type": "InternalIP", "address": f"10.240.0.{index + 10}"},
                    {"type": "Hostname", "address": name},
                ],
            },
        }

    def _create_nodes(self) -> None:
        for i in range(self.nodes):
            status, body = self._raw("POST", "/api/v1/nodes", self.node_manifest(i))
            if status not in (200, 201, 409):
                raise ClusterError(f"creating node {self.node_names[i]} failed: {status} {body[:500]!r}")

    def _nodes_ready(self) -> bool:
        nodes = self.api("GET", f"/api/v1/nodes?labelSelector={NODE_LABEL[0]}%3D{NODE_LABEL[1]}")["items"]
        ready = 0
        for n in nodes:
            conds = {c["type"]: c["status"] for c in n.get("status", {}).get("conditions", [])}
            taints = {t["key"] for t in n.get("spec", {}).get("taints", []) or []}
            if conds.get("Ready") == "True" and not any(t.startswith("node.kubernetes.io/") for t in taints):
                ready += 1
        return ready >= self.nodes

    def _default_sa_exists(self) -> bool:
        status, _ = self._raw("GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200

    # ------------------------------------------------------------ waiting

    def _wait(self, fn: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait for ``fn`` (errors of a server not up yet count as "not yet"); a ClusterError when a
        component exits meanwhile or the time is up, with the components' log tails."""
        try:
            wait_while_alive(
                self.components.values(),
                fn,
                timeout,
                what,
                interval=0.1,
                ignore=(OSError, ValueError, KeyError, urllib.error.URLError, ssl.SSLError),
            )
        except ComponentExited as exc:
            raise ClusterError(str(exc)) from None
        except WaitTimeout as exc:
            raise ClusterError(f"{exc}{self._describe_failure()}") from None

    def _describe_failure(self) -> str:
        parts = []
        for comp in self.components.values():
            state = "running" if comp.alive() else f"exited {comp.proc.returncode if comp.proc else '?'}"
            parts.append(f"\n--- {comp.name} ({state}), last lines of {comp.log_path}:\n{comp.tail(15)}")
        return "".join(parts)

    # ------------------------------------------------------------ API access

    def _raw(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> tuple[int, bytes]:
        assert self.server is not None
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def api(
        self, method: str, path: str, body: Any = None, token: str | None = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        """Call the API server (admin by default) and return the JSON answer.

        Raises ``ClusterError`` for an HTTP status >= 400.
        """
        status, raw = self._raw(method, path, body, token, content_type)
        if status >= 400:
            raise ClusterError(f"{method} {path} -> {status}: {raw[:1000].decode('utf-8', 'replace')}")
        return json.loads(raw) if raw else {}

    def create_token(
        self, namespace: str, service_account: str, expiration_seconds: int = 3600, audiences: list[str] | None = None
    ) -> str:
        """Mint a token for a ServiceAccount with the TokenRequest API."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = audiences
        answer = self.api(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return answer["status"]["token"]

    def client_configuration(self, token: str | None = None):
        """A ``kubernetes.client.Configuration`` for this cluster (admin by default)."""
        import kubernetes.client

        cfg = kubernetes.client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = self.ca_file
        cfg.verify_ssl = True
        cfg.api_key = {"authorization": token or self.admin_token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return cfg

    def api_client(self, token: str | None = None):
        """A new ``kubernetes.client.ApiClient`` (admin unless ``token`` is given)."""
        import kubernetes.client

        return kubernetes.client.ApiClient(self.client_configuration(token))

    # ------------------------------------------------------------ inspection

    @property
    def running(self) -> bool:
        return self._started and not self._stopped

    def healthy(self) -> bool:
        """True when every component runs and the API server's /readyz is ok."""
        if not self.running or not all(c.alive() for c in self.components.values()):
            return False
        try:
            return self._apiserver_ready()
        except (OSError, ssl.SSLError):
            return False

    def pids(self) -> dict[str, int]:
        """PID of every component process that is still alive."""
        return {name: c.pid for name, c in self.components.items() if c.alive() and c.pid}  # type: ignore[misc]

    def memory_kib(self) -> dict[str, int]:
        """VmRSS (KiB) of each live component process."""
        out = {}
        for name, pid in self.pids().items():
            # Through setpriv the PID is the program itself (setpriv execs it).
            v = rss_kib(pid)
            if v is not None:
                out[name] = v
        return out

    def leftover_processes(self) -> list[int]:
        """PIDs of live processes started for this cluster (should be [] after stop())."""
        left = [c.pid for c in self.components.values() if c.alive() and c.pid]
        for marker in (self.workdir, self.etcd_dir):
            if marker is not None:
                left += processes_mentioning(str(marker).rstrip("/") + "/")
        return sorted(set(p for p in left if p))

    def log_tail(self, component: str, lines: int = 40) -> str:
        return self.components[component].tail(lines)

    def __repr__(self) -> str:
        state = "running" if self.running else ("stopped" if self._stopped else "new")
        return f"<LocalCluster {self.name} {state} server={self.server} workdir={self.workdir}>"


# ----------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m teal_devenv.cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a local cluster and stay in the foreground until Ctrl-C/SIGTERM")
    up.add_argument("--dir", required=True, help="working folder (kubeconfig, logs)")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--verbosity", type=int, default=0)
    args = parser.parse_args(argv)

    stop_event = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    workdir = Path(args.dir).resolve()
    cluster = LocalCluster(workdir, nodes=args.nodes, keep_logs=True, verbosity=args.verbosity)
    print(f"starting a local cluster in {workdir} ...", file=sys.stderr, flush=True)
    try:
        cluster.start()
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"cluster ready in {cluster.timings['total']:.1f}s: {cluster.server} (logs in {cluster.logs_dir}); Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
    try:
        while not stop_event.is_set():
            dead = [c.name for c in cluster.components.values() if not c.alive()]
            if dead:
                print(f"error: {', '.join(dead)} exited; see {cluster.logs_dir}", file=sys.stderr)
                return 1
            stop_event.wait(1.0)
    finally:
        print("stopping ...", file=sys.stderr, flush=True)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
