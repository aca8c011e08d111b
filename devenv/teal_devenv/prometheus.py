"""A real Prometheus server on a free loopback port, for tests.

Usage::

    from teal_devenv.prometheus import LocalPrometheus

    with LocalPrometheus() as prom:                     # start()/stop()
        prom.set_targets({"fakeapp": ["127.0.0.1:8081"]})
        prom.wait_for('sum(up{job="fakeapp"})', lambda v: v == 1, timeout=20)
        print(prom.url)                                  # e.g. http://127.0.0.1:40123

The scrape and evaluation intervals are 1 s; ``--web.enable-lifecycle`` lets
:meth:`LocalPrometheus.set_targets` swap the scrape configs at run time.

Targets carry the labels Prometheus gives a real pod, never labels an app invents.
:meth:`LocalPrometheus.scrape_pods` discovers a namespace's pods from the local cluster
(with kubernetes_sd's meta labels, teal_devenv.podsd) and labels them as a PodMonitor does
(``namespace``, ``pod``, ``container``; ``honor_labels: false``), the local process
playing each colour answering for its pods; without a cluster, ``pod_target``/``pod_job``
label a process as made-up pods::

    with prom.scrape_pods("shop", api_client, "shop", {"blue": blue.target, "green": green.target}):
        ...
    prom.set_targets([pod_job("shop", pod_target(app.target, namespace="shop", pod="checkout-blue-5d8f9c7b6-x2mzq"))])
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from teal_devenv.procs import (
    Component,
    ComponentExited,
    aliased_binary,
    free_port,
    main_thread,
    processes_mentioning,
    sweep_stale_dirs,
    tail,
    wait_while_alive,
)
from teal_devenv.wait import WaitTimeout

if TYPE_CHECKING:
    from teal_devenv.podsd import PodDiscovery

DEFAULT_BINARY = "/usr/bin/prometheus"


def pod_target(address: str, *, namespace: str, pod: str, container: str = "app") -> dict[str, Any]:
    """A target group: scrape ``address`` as pod ``pod``, labelled as a PodMonitor would.

    ``__param_pod`` makes Prometheus ask ``/metrics?pod=<pod>``, so one local process can
    serve each pod it plays (teal_devenv.fakeapp) as a target of its own.
    """
    return {"targets": [address], "labels": {"namespace": namespace, "pod": pod, "container": container, "__param_pod": pod}}


def pod_job(job: str, groups: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> dict[str, Any]:
    """A scrape config of pod targets (``pod_target`` groups); the app's own labels never
    override the target's (``honor_labels: false``, as for a PodMonitor)."""
    groups = [groups] if isinstance(groups, Mapping) else list(groups)
    return {"job_name": job, "honor_labels": False, "static_configs": [dict(g) for g in groups]}


def _meta(label: str) -> str:
    """The kubernetes_sd meta label of pod label ``label`` (teal.dev/color -> ..._teal_dev_color)."""
    return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in label)


def pod_sd_job(job: str, sd_file: str | os.PathLike, apps: Mapping[str, str], *, rollout: str | None = None) -> dict[str, Any]:
    """The scrape config of ``LocalPrometheus.scrape_pods``: the pods that teal_devenv.podsd
    discovers as kubernetes_sd would, relabelled as a PodMonitor's are (prometheus-operator:
    running pods, target labels namespace, container, pod), plus the address of the process
    playing each pod's colour."""
    from teal.api import LABEL_COLOR, LABEL_ROLLOUT

    relabel: list[dict[str, Any]] = [
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Failed|Succeeded"},
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_container_init"], "regex": "true"},
        {"action": "keep", "source_labels": [_meta(LABEL_COLOR)], "regex": "|".join(sorted(apps))},
    ]
    if rollout:
        relabel.append({"action": "keep", "source_labels": [_meta(LABEL_ROLLOUT)], "regex": rollout})
    relabel += [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        # kwok pods run nothing: the colour's local process answers, for this pod
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "__param_pod"},
    ]
    relabel += [
        {"source_labels": [_meta(LABEL_COLOR)], "regex": color, "target_label": "__address__", "replacement": address}
        for color, address in sorted(apps.items())
    ]
    return {
        "job_name": job,
        "honor_labels": False,
        "file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": "1s"}],
        "relabel_configs": relabel,
    }


class PrometheusError(RuntimeError):
    """Prometheus failed to start, reload or answer."""


_LIVE: weakref.WeakSet[LocalPrometheus] = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for p in list(_LIVE):
        try:
            p.stop()
        except Exception:  # pragma: no cover
            pass


def _binary() -> str:
    env = os.environ.get("TEAL_PROMETHEUS")
    if env:
        return env
    if os.access(DEFAULT_BINARY, os.X_OK):
        return DEFAULT_BINARY
    found = shutil.which("prometheus")
    if found:
        return found
    from teal_devenv.binaries import find_binaries

    return find_binaries().prometheus


class LocalPrometheus:
    """A Prometheus process with a temporary TSDB; see the module docstring.

    Attributes: ``url`` (``http://127.0.0.1:PORT``), ``port``, ``workdir``,
    ``config_file``, ``log_path``, ``pid`` and ``startup_seconds``.
    """

    def __init__(
        self,
        workdir: str | os.PathLike | None = None,
        *,
        binary: str | None = None,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        start_timeout: float = 30.0,
        keep_logs: bool = False,
        retention: str = "2h",
    ) -> None:
        self.binary = binary
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.start_timeout = start_timeout
        self.keep_logs = keep_logs
        self.retention = retention
        self._own_workdir = workdir is None
        self.workdir: Path | None = Path(workdir) if workdir is not None else None
        self.url: str | None = None
        self.port: int | None = None
        self.config_file: Path | None = None
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self.scrape_configs: list[dict[str, Any]] = []
        self._component: Component | None = None
        self._tsdb: Path | None = None
        self._lock = threading.RLock()
        self._started = False
        self._stopped = False

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._component.pid if self._component else None

    def start(self) -> LocalPrometheus:
        with self._lock:
            if self._started:
                return self
            if self._stopped:
                raise PrometheusError("a stopped LocalPrometheus cannot be started again")
            self._started = True
            _LIVE.add(self)
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException as exc:
            log = tail(self.log_path) if self.log_path else ""
            self.stop()
            if isinstance(exc, (PrometheusError, KeyboardInterrupt, SystemExit)):
                raise
            raise PrometheusError(f"Prometheus failed to start: {exc!r}\n{log}") from exc
        self.startup_seconds = time.monotonic() - t0
        return self

    def _start(self) -> None:
        binary = self.binary or _binary()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="teal-prometheus-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = self.workdir.resolve()
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        if base is not None:
            sweep_stale_dirs(base, "teal-prom-tsdb-")
        self._tsdb = Path(tempfile.mkdtemp(prefix="teal-prom-tsdb-", dir=base))
        self.config_file = self.workdir / "prometheus.yml"
        self.log_path = self.workdir / "logs" / "prometheus.log"
        self._write_config()
        # under another name it survives the `pkill -x prometheus` of hack/build-binaries.sh
        binary = aliased_binary(binary, "teal-prometheus", self.workdir / "bin")
        for _attempt in range(3):
            if self._launch(binary):
                return
        raise PrometheusError("Prometheus could not bind a free port after 3 attempts")

    def _launch(self, binary: str) -> bool:
        """Start Prometheus on a free port and wait until it is ready; False when the port was
        taken between choosing it and binding it (try again)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        assert self.log_path is not None
        comp = Component(
            "prometheus",
            [
                binary,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self._tsdb}",
                f"--storage.tsdb.retention.time={self.retention}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--web.external-url={self.url}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            self.log_path,
            dict(os.environ),
        )
        self._component = comp
        comp.start(pdeathsig=main_thread())

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200

        try:
            wait_while_alive([comp], ready, self.start_timeout, "Prometheus to be ready", interval=0.1)
        except WaitTimeout:
            raise PrometheusError(f"Prometheus not ready after {self.start_timeout}s:\n{comp.tail()}") from None
        except ComponentExited:
            if "address already in use" not in comp.tail(100):
                code = comp.proc.returncode if comp.proc else None
                raise PrometheusError(f"Prometheus exited with code {code}:\n{comp.tail()}") from None
            comp.close_log()
            return False
        return True

    def stop(self) -> None:
        """Stop Prometheus (SIGTERM, then SIGKILL) and remove its data. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        comp = self._component
        if comp is not None and comp.proc is not None:
            comp.signal_group(signal.SIGTERM)
            try:
                comp.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                comp.signal_group(signal.SIGKILL)
                try:
                    comp.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    pass
            comp.signal_group(signal.SIGKILL)
            comp.close_log()
        if self._tsdb is not None:
            shutil.rmtree(self._tsdb, ignore_errors=True)
        if self.workdir is not None and self.workdir.exists():
            if self.keep_logs:
                for child in self.workdir.iterdir():
                    if child.name != "logs":
                        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            elif self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                shutil.rmtree(self.workdir / "logs", ignore_errors=True)
                shutil.rmtree(self.workdir / "bin", ignore_errors=True)
                if self.config_file is not None:
                    self.config_file.unlink(missing_ok=True)
        _LIVE.discard(self)

    @property
    def running(self) -> bool:
        return self._started and not self._stopped and self._component is not None and self._component.alive()

    def leftover_processes(self) -> list[int]:
        left = [self.pid] if self._component is not None and self._component.alive() and self.pid else []
        for marker in (self._tsdb, self.workdir):
            if marker is not None:
                left += processes_mentioning(str(marker).rstrip("/") + "/")
                left += processes_mentioning(str(marker).rstrip("/") + " ")
        return sorted(set(left))

    # ------------------------------------------------------------ config

    def _write_config(self) -> None:
        assert self.config_file is not None
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "scrape_configs": self.scrape_configs,
        }
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.replace(self.config_file)

    @staticmethod
    def _normalise(jobs: Mapping[str, Sequence[str]] | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(jobs, Mapping):
            return [{"job_name": job, "static_configs": [{"targets": list(targets)}]} for job, targets in jobs.items()]
        return [dict(sc) for sc in jobs]

    def set_targets(
        self,
        jobs: Mapping[str, Sequence[str]] | Iterable[Mapping[str, Any]],
        *,
        timeout: float = 20.0,
        wait_up: bool = False,
    ) -> None:
        """Replace every scrape config, reload, and wait until Prometheus knows the targets.

        ``jobs`` is either ``{"job": ["127.0.0.1:8080", ...]}`` or a list of
        full ``scrape_config`` dicts. ``wait_up=True`` also waits for every
        target to be scraped successfully once (``health == "up"``).

        Prometheus 2.42 hands new targets to its scrapers at most every 5 s,
        so this takes up to ~5 s.
        """
        self.scrape_configs = self._normalise(jobs)
        self._write_config()
        self.reload()
        expected: dict[str, set[tuple[str, str | None]]] = {}
        for sc in self.scrape_configs:
            expected[sc["job_name"]] = {
                (t, (st.get("labels") or {}).get("pod")) for st in sc.get("static_configs", []) for t in st.get("targets", [])
            }
        self._wait(lambda: self._targets_known(expected, wait_up), timeout, f"Prometheus to know targets {expected}")

    def _targets_known(self, expected: Mapping[str, set[tuple[str, str | None]]], wait_up: bool) -> bool:
        """Prometheus lists exactly these jobs with at least these (instance, pod) targets,
        all scraped successfully once when ``wait_up``."""
        active = self.api("/api/v1/targets", {"state": "active"})["activeTargets"]
        seen: dict[str, dict[tuple[str, str | None], str]] = {}
        for t in active:
            key = (t["labels"].get("instance", ""), t["labels"].get("pod"))
            seen.setdefault(t["scrapePool"], {})[key] = t["health"]
        if set(seen) - set(expected):
            return False  # old jobs still listed: reload not applied yet
        for job, targets in expected.items():
            got = seen.get(job, {})
            if not targets <= set(got):
                return False
            if wait_up and any(got[t] != "up" for t in targets):
                return False
        return True

    def scrape_pods(
        self, job: str, api_client, namespace: str, apps: Mapping[str, str], *, rollout: str | None = None, timeout: float = 20.0
    ) -> PodDiscovery:
        """Replace every scrape config with one that scrapes the pods of ``namespace`` as a
        PodMonitor does; returns the running pod discovery (stop it, or use ``with``).

        The pods are discovered from the cluster (``api_client``) with the meta labels of
        kubernetes_sd (teal_devenv.podsd: Debian's Prometheus has no kubernetes_sd) and
        relabelled as prometheus-operator relabels a PodMonitor's: targets are labelled
        ``namespace``, ``pod`` and ``container``; the pods' own labels are not kept. Pods on
        kwok nodes run nothing, so one relabelling differs from a real cluster: the local
        process ``apps[colour]`` (``host:port``) answers for every pod of that colour
        (label ``teal.dev/color``; of Rollout ``rollout`` when given), asked for
        ``/metrics?pod=<name>``. Pods of other colours are not scraped.
        """
        from teal_devenv.podsd import PodDiscovery

        assert self.workdir is not None, "not started"
        discovery = PodDiscovery(api_client, namespace, self.workdir / "file_sd" / f"{job}.json").start()
        try:
            self.set_targets([pod_sd_job(job, discovery.path, apps, rollout=rollout)], timeout=timeout)
        except BaseException:
            discovery.stop()
            raise
        return discovery

    def active_targets(self, job: str) -> list[dict[str, Any]]:
        """The active targets of ``job`` (their ``labels``, ``health``, ...)."""
        return [t for t in self.api("/api/v1/targets", {"state": "active"})["activeTargets"] if t["scrapePool"] == job]

    def add_targets(
        self,
        jobs: Mapping[str, Sequence[str]] | Iterable[Mapping[str, Any]],
        *,
        timeout: float = 20.0,
        wait_up: bool = False,
    ) -> None:
        """Add (or replace, by job name) scrape configs, keeping the other jobs."""
        new = self._normalise(jobs)
        names = {sc["job_name"] for sc in new}
        kept = [sc for sc in self.scrape_configs if sc["job_name"] not in names]
        self.set_targets(kept + new, timeout=timeout, wait_up=wait_up)

    def remove_jobs(self, *job_names: str, timeout: float = 20.0) -> None:
        """Drop the scrape configs of these jobs, keeping the others."""
        kept = [sc for sc in self.scrape_configs if sc["job_name"] not in job_names]
        self.set_targets(kept, timeout=timeout)

    def reload(self) -> None:
        """POST ``/-/reload`` (config re-read); raises if Prometheus refuses it."""
        req = urllib.request.Request(f"{self.url}/-/reload", data=b"", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
        except urllib.error.HTTPError as e:
            raise PrometheusError(f"reload failed: {e.code} {e.read()[:500]!r}\n{tail(self.log_path or '')}") from e

    # ------------------------------------------------------------ queries

    def api(self, path: str, params: Mapping[str, Any] | None = None, timeout: float = 10.0) -> Any:
        """GET a Prometheus HTTP API path and return its ``data`` member."""
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise PrometheusError(f"GET {path} -> {e.code}: {e.read()[:500]!r}") from e
        if answer.get("status") != "success":
            raise PrometheusError(f"GET {path}: {answer}")
        return answer["data"]

    def query(self, promql: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Instant query; returns the ``result`` list (vector samples)."""
        data = self.api("/api/v1/query", {"query": promql}, timeout=timeout)
        return data["result"]

    def query_value(self, promql: str) -> float | None:
        """The value of a single-sample instant query (None when empty)."""
        result = self.query(promql)
        if not result:
            return None
        if isinstance(result, list) and result and "value" in result[0]:
            return float(result[0]["value"][1])
        raise PrometheusError(f"unexpected result for {promql!r}: {result!r}")

    def wait_for(
        self,
        query: str,
        predicate: Callable[[float], bool] | None = None,
        timeout: float = 30.0,
        interval: float = 0.5,
    ) -> float:
        """Evaluate ``query`` until its single value satisfies ``predicate``.

        Without a predicate, waits for any non-empty result. Returns the value.
        """
        holder: dict[str, float | None] = {}

        def ok() -> bool:
            value = self.query_value(query)
            holder["value"] = value
            if value is None:
                return False
            return True if predicate is None else bool(predicate(value))

        try:
            self._wait(ok, timeout, repr(query), interval)
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc} -- last value: {holder.get('value')!r}") from None
        value = holder["value"]
        assert value is not None
        return value

    def _wait(self, fn: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
        """Wait for ``fn`` (API errors count as "not yet"): WaitTimeout when the time is up, a
        PrometheusError at once when Prometheus exits meanwhile."""
        try:
            wait_while_alive(
                [self._component] if self._component is not None else [],
                fn,
                timeout,
                what,
                interval=interval,
                ignore=(OSError, PrometheusError, ValueError, KeyError),
            )
        except ComponentExited:
            tail_text = self._component.tail() if self._component is not None else ""
            raise PrometheusError(f"Prometheus exited while waiting for {what}:\n{tail_text}") from None

    def __repr__(self) -> str:
        return f"<LocalPrometheus url={self.url} running={self.running}>"
