"""A fake "colour" of a service, and a bounded load generator for it.

The app serves ``GET /`` and exports Prometheus metrics the way an instrumented service
does, with only the labels the app itself knows:

* ``http_requests_total{code}`` (counter)
* ``http_request_duration_seconds`` (histogram)

``namespace``, ``pod`` and ``container`` are not the app's business: Prometheus attaches
them as target labels, as a PodMonitor or kubernetes_sd does for a real pod. One process
plays all the pods of its colour: Prometheus scrapes it once per pod, as
``/metrics?pod=NAME`` (``LocalPrometheus.scrape_pods`` for a cluster's pods, ``pod_targets``
for made-up ones), each pod has its own counters, and each request counts for the next of
the pods scraped in the last ``POD_TTL`` seconds, as a Service spreads requests over its
endpoints. Plain ``/metrics`` serves the whole process.

It can be told at run time to fail a share of requests or to slow down::

    POST /control {"error_rate": 0.2, "latency": 0.3}   # 20 % of answers 500, +300 ms each
    GET  /control                                       # current settings

Failures are spread exactly (every 1/error_rate-th request fails, no
randomness), so the error ratio Prometheus sees is the configured one.

In-process (a thread)::

    app = FakeApp("green", namespace="ns").start()    # app.url, app.set(error_rate=0.5)
    prom.set_targets([pod_job("green", app.pod_targets(pod_names("checkout-green", 2)))])
    app.stop()

As a subprocess (``python -m teal_devenv.fakeapp --color green --port 0``)::

    with run_fakeapp("green", "ns") as app:          # FakeAppProcess
        with prom.scrape_pods("ns", api_client, "ns", {"green": app.target}), \
                LoadGenerator({app.url: 1}, rps=20, duration=10):
            ...

and without a cluster::

    with run_fakeapp("green", "ns") as app:
        prom.set_targets([pod_job("green", app.pod_targets(pod_names("checkout-green", 2)))])
        with LoadGenerator({app.url: 1}, rps=20, duration=10):
            ...

``LoadGenerator`` only ever sends to loopback addresses and stops by itself
after ``duration`` seconds or ``max_requests`` requests.
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from teal.analysis.model import POD_NAME_CHARS, pod_name
from teal_devenv.procs import (
    Component,
    ComponentExited,
    main_thread,
    tail,
    wait_while_alive,
)
from teal_devenv.prometheus import pod_target
from teal_devenv.wait import WaitTimeout

POD_TTL = 5.0  # s: a pod not scraped for this long (deleted, or no longer a target) gets no more requests
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


# --------------------------------------------------------------------- app


class _Address:
    """``url`` and ``target`` of something listening on ``host``:``port``."""

    host: str
    namespace: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"  # type: ignore[attr-defined]

    @property
    def target(self) -> str:
        """``host:port`` as a Prometheus static target."""
        return f"{self.host}:{self.port}"  # type: ignore[attr-defined]

    def pod_targets(self, pods: list[str], container: str = "app") -> list[dict[str, Any]]:
        """Static target groups: this app plays ``pods`` (in its namespace), labelled as a PodMonitor would."""
        return [pod_target(self.target, namespace=self.namespace, pod=p, container=container) for p in pods]


def pod_names(deployment: str, n: int = 1, seed: int = 0) -> list[str]:
    """``n`` pod names as Kubernetes would give them to the pods of ``deployment``, for
    tests with no cluster behind them (a cluster's tests use its real pods)."""
    rng = random.Random(f"{deployment}/{seed}")
    template_hash = zlib.crc32(f"{deployment}/{seed}".encode())
    return [pod_name(deployment, template_hash, "".join(rng.choices(POD_NAME_CHARS, k=5))) for _ in range(n)]


class _Metrics:
    """The request counter and latency histogram of one pod (or of the whole process)."""

    def __init__(self, codes: list[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("http_requests_total", "HTTP requests served, by status code.", ["code"], registry=self.registry)
        self.duration = Histogram(
            "http_request_duration_seconds", "Time to answer an HTTP request.", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        for code in codes:  # series exist (at 0) from the first scrape, so rate() sees every increment
            self.requests.labels(code)

    def observe(self, code: int, seconds: float) -> None:
        self.requests.labels(str(code)).inc()
        self.duration.observe(seconds)


class FakeApp(_Address):
    """The HTTP app, served from a background thread of this process."""

    def __init__(
        self,
        color: str,
        namespace: str = "default",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        error_rate: float = 0.0,
        latency: float = 0.0,
        error_code: int = 500,
    ) -> None:
        self.color = color
        self.namespace = namespace
        self.host = host
        self.error_code = error_code
        self._requested_port = port
        self._lock = threading.RLock()  # set() reports settings() under it
        self._error_rate = 0.0
        self._latency = 0.0
        self._error_acc = 0.0
        self._codes = sorted({"200", str(error_code)})
        self.total = _Metrics(self._codes)
        self._pod_metrics: dict[str, _Metrics] = {}  # every pod ever scraped
        self._scraped: dict[str, float] = {}  # pod -> time of its last scrape
        self._turn = 0
        self.set(error_rate=error_rate, latency=latency)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # settings
    def set(self, error_rate: float | None = None, latency: float | None = None) -> dict[str, Any]:
        """Change the share of failing requests (0..1) and/or the added latency (s)."""
        with self._lock:
            if error_rate is not None:
                if not 0.0 <= float(error_rate) <= 1.0:
                    raise ValueError(f"error_rate must be within [0, 1], not {error_rate!r}")
                self._error_rate = float(error_rate)
                self._error_acc = 0.0
            if latency is not None:
                if not 0.0 <= float(latency) <= 60.0:
                    raise ValueError(f"latency must be within [0, 60] seconds, not {latency!r}")
                self._latency = float(latency)
            return self.settings()

    def settings(self) -> dict[str, Any]:
        return {
            "color": self.color,
            "namespace": self.namespace,
            "error_rate": self._error_rate,
            "latency": self._latency,
            "pods": self.pods(),
        }

    def pods(self) -> list[str]:
        """The pods this app plays now: those Prometheus scraped in the last ``POD_TTL`` seconds."""
        with self._lock:
            return self._live_pods()

    def _live_pods(self) -> list[str]:
        since = time.monotonic() - POD_TTL
        return sorted(p for p, t in self._scraped.items() if t >= since)

    def _next_pod(self) -> _Metrics | None:
        with self._lock:
            live = self._live_pods()
            if not live:
                return None
            self._turn = (self._turn + 1) % len(live)
            return self._pod_metrics[live[self._turn]]

    def metrics(self, pod: str | None) -> bytes:
        """The exposition text of one pod (a pod seen for the first time starts at zero) or,
        without a pod, of the whole process."""
        if pod is None:
            return generate_latest(self.total.registry)
        with self._lock:
            m = self._pod_metrics.setdefault(pod, _Metrics(self._codes))
            self._scraped[pod] = time.monotonic()
        return generate_latest(m.registry)

    def _next_outcome(self) -> tuple[bool, float]:
        with self._lock:
            self._error_acc += self._error_rate
            fail = self._error_acc >= 1.0 - 1e-9
            if fail:
                self._error_acc -= 1.0
            return fail, self._latency

    # serving
    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    def start(self) -> FakeApp:
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                path = url.path
                if path == "/metrics":
                    pod = urllib.parse.parse_qs(url.query).get("pod", [None])[0]
                    self._send(200, app.metrics(pod), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/control":
                    self._send(200, json.dumps(app.settings()).encode(), "application/json")
                else:
                    app._serve(self)

            def do_POST(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                if path != "/control":
                    app._serve(self)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                    settings = app.set(error_rate=body.get("error_rate"), latency=body.get("latency"))
                except (ValueError, TypeError, AttributeError) as exc:
                    self._send(400, json.dumps({"error": str(exc)}).encode(), "application/json")
                    return
                self._send(200, json.dumps(settings).encode(), "application/json")

        server = ThreadingHTTPServer((self.host, self._requested_port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"fakeapp-{self.color}", daemon=True
        )
        self._thread.start()
        return self

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        start = time.perf_counter()
        fail, latency = self._next_outcome()
        if latency:
            time.sleep(latency)
        code = self.error_code if fail else 200
        body = f"{self.color} {'error' if fail else 'ok'}\n".encode()
        took = time.perf_counter() - start
        self.total.observe(code, took)
        pod = self._next_pod()
        if pod is not None:
            pod.observe(code, took)
        handler._send(code, body)  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------- subprocess


def control(url: str, error_rate: float | None = None, latency: float | None = None, timeout: float = 5.0) -> dict:
    """POST new settings to a fake app's ``/control`` (``url`` is its base URL)."""
    body = {k: v for k, v in (("error_rate", error_rate), ("latency", latency)) if v is not None}
    req = urllib.request.Request(
        url.rstrip("/") + "/control",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class FakeAppProcess(_Address):
    """Handle on a fake app running as ``python -m teal_devenv.fakeapp``."""

    def __init__(
        self, color: str, namespace: str, component: Component, port: int, workdir: Path, host: str = "127.0.0.1"
    ) -> None:
        self.color = color
        self.namespace = namespace
        self.port = port
        self.host = host
        self._component = component
        self._workdir = workdir
        self._stopped = False

    @property
    def pid(self) -> int | None:
        return self._component.pid

    def alive(self) -> bool:
        return self._component.alive()

    def set(self, error_rate: float | None = None, latency: float | None = None) -> dict:
        return control(self.url, error_rate, latency)

    def settings(self) -> dict:
        with urllib.request.urlopen(self.url + "/control", timeout=5) as r:
            return json.loads(r.read())

    def log(self) -> str:
        return self._component.tail()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        comp = self._component
        if comp.proc is not None:
            comp.signal_group(signal.SIGTERM)
            try:
                comp.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                comp.signal_group(signal.SIGKILL)
                comp.proc.wait(timeout=5)
            comp.signal_group(signal.SIGKILL)
        comp.close_log()
        import shutil

        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> FakeAppProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<FakeAppProcess {self.color} {self.url} pid={self.pid}>"


def run_fakeapp(
    color: str,
    namespace: str = "default",
    port: int = 0,
    *,
    error_rate: float = 0.0,
    latency: float = 0.0,
    timeout: float = 15.0,
) -> FakeAppProcess:
    """Start a fake app subprocess on 127.0.0.1 (``port=0``: any free port) and wait until it answers."""
    workdir = Path(tempfile.mkdtemp(prefix=f"teal-fakeapp-{color}-"))
    ready = workdir / "port"
    args = [
        sys.executable,
        "-m",
        "teal_devenv.fakeapp",
        "--color",
        color,
        "--namespace",
        namespace,
        "--port",
        str(port),
        "--error-rate",
        str(error_rate),
        "--latency",
        str(latency),
        "--ready-file",
        str(ready),
    ]
    comp = Component(f"fakeapp-{color}", args, workdir / "fakeapp.log", dict(os.environ))
    comp.start(pdeathsig=main_thread())
    handle: FakeAppProcess | None = None

    def answering() -> FakeAppProcess | None:
        nonlocal handle
        if handle is None and ready.exists():
            text = ready.read_text().strip()
            if text:
                handle = FakeAppProcess(color, namespace, comp, int(text), workdir)
        if handle is None:
            return None
        with urllib.request.urlopen(handle.url + "/healthz", timeout=2) as r:
            return handle if r.status == 200 else None

    try:
        return wait_while_alive([comp], answering, timeout, f"fakeapp {color} to answer", interval=0.05)
    except BaseException as exc:
        error: BaseException = exc  # the log is read before the cleanup removes it
        if isinstance(exc, ComponentExited):
            code = comp.proc.returncode if comp.proc else None
            error = RuntimeError(f"fakeapp {color} exited with code {code}:\n{comp.tail()}")
        elif isinstance(exc, WaitTimeout):
            error = RuntimeError(f"fakeapp {color} did not answer within {timeout}s:\n{tail(comp.log_path)}")
        if handle is not None:
            handle.stop()
        else:
            comp.signal_group(signal.SIGKILL)
            if comp.proc is not None:
                comp.proc.wait(timeout=5)
            comp.close_log()
        if error is exc:
            raise
        raise error from None


# --------------------------------------------------------------------- load


def _check_loopback(url: str) -> str:
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    ok = host == "localhost"
    if not ok:
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(f"LoadGenerator only targets loopback addresses, not {url!r}")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"unsupported scheme in {url!r}")
    if not parts.path:
        url = url + "/"
    return url


class LoadGenerator:
    """Send ``rps`` requests a second to weighted loopback targets, from a thread.

    ``targets_by_weight`` maps a URL (or ``host:port``) to a weight; targets are
    picked by smooth weighted round-robin, so the split is exact. The
    generator stops by itself after ``duration`` seconds or ``max_requests``
    requests (default ``rps * duration``), or on :meth:`stop`.

    ``stats`` maps each target URL to a ``Counter`` of outcomes (HTTP status as
    a string, or ``"error"`` for connection failures and timeouts).
    """

    MAX_RPS = 500.0
    MAX_DURATION = 1800.0

    def __init__(
        self,
        targets_by_weight: Mapping[str, float],
        rps: float = 20.0,
        duration: float = 30.0,
        *,
        max_requests: int | None = None,
        timeout: float = 2.0,
        concurrency: int = 4,
    ) -> None:
        if not 0 < rps <= self.MAX_RPS:
            raise ValueError(f"rps must be within (0, {self.MAX_RPS}]")
        if not 0 < duration <= self.MAX_DURATION:
            raise ValueError(f"duration must be within (0, {self.MAX_DURATION}] seconds")
        self.rps = float(rps)
        self.duration = float(duration)
        self.max_requests = max_requests if max_requests is not None else math.ceil(rps * duration)
        self.timeout = timeout
        self.concurrency = max(1, int(concurrency))
        self._lock = threading.Lock()
        self._weights: dict[str, float] = {}
        self._current: dict[str, float] = {}
        self.set_weights(targets_by_weight)
        self.stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None

    def set_weights(self, targets_by_weight: Mapping[str, float]) -> None:
        """Change the targets and their weights while running (e.g. a traffic switch)."""
        weights = {_check_loopback(u): float(w) for u, w in targets_by_weight.items() if float(w) > 0}
        if not weights:
            raise ValueError("LoadGenerator needs at least one target with a positive weight")
        with self._lock:
            self._weights = weights
            self._current = {u: self._current.get(u, 0.0) for u in weights}

    def _pick(self) -> str:
        with self._lock:
            total = sum(self._weights.values())
            for u, w in self._weights.items():
                self._current[u] += w
            best = max(self._current, key=lambda u: self._current[u])
            self._current[best] -= total
            return best

    def _one(self, url: str) -> None:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as r:
                r.read()
                outcome = str(r.status)
        except urllib.error.HTTPError as e:
            outcome = str(e.code)
        except (OSError, ValueError):
            outcome = "error"
        with self._lock:
            self.stats[url][outcome] += 1

    def _run(self) -> None:
        interval = 1.0 / self.rps
        started = time.monotonic()
        self.started_at = time.time()
        slots = threading.Semaphore(self.concurrency)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="loadgen") as pool:
            n = 0
            while n < self.max_requests and not self._stop.is_set():
                due = started + n * interval
                now = time.monotonic()
                if now - started >= self.duration:
                    break
                if due > now and self._stop.wait(due - now):
                    break
                if not slots.acquire(timeout=self.timeout + 1):
                    continue
                url = self._pick()
                fut = pool.submit(self._one, url)
                fut.add_done_callback(lambda _f: slots.release())
                n += 1
                with self._lock:
                    self.sent = n
        self.finished_at = time.time()

    def start(self) -> LoadGenerator:
        if self._thread is not None:
            raise RuntimeError("a LoadGenerator runs once")
        self._thread = threading.Thread(target=self._run, name="loadgen", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end (by its bound or stop()); True when finished."""
        if self._thread is None:
            return True
        self._thread.join(timeout if timeout is not None else self.duration + self.timeout + 10)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def totals(self) -> collections.Counter:
        """Outcomes over all targets."""
        with self._lock:
            total: collections.Counter = collections.Counter()
            for c in self.stats.values():
                total.update(c)
            return total

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m teal_devenv.fakeapp", description="Serve one colour of a fake app.")
    p.add_argument("--color", required=True)
    p.add_argument("--namespace", default="default")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--error-code", type=int, default=500)
    p.add_argument("--ready-file", help="write the bound port here once serving")
    args = p.parse_args(argv)

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: done.set())
    app = FakeApp(
        args.color,
        args.namespace,
        host=args.host,
        port=args.port,
        error_rate=args.error_rate,
        latency=args.latency,
        error_code=args.error_code,
    ).start()
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{app.port}\n")
        os.replace(tmp, args.ready_file)
    print(f"fakeapp {args.color} ({args.namespace}) serving on {app.url}", flush=True)
    try:
        while not done.wait(1.0):
            pass
    finally:
        app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
