"""Helpers for the analysis tests: fake colours under load, a header-recording proxy in
front of Prometheus (optionally TLS), and a server that accepts connections but never answers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from teal.analysis.engine import rollout_variables
from teal_devenv.fakeapp import FakeApp, LoadGenerator, pod_names
from teal_devenv.prometheus import LocalPrometheus, pod_job

NS = "analysis"
DOC = Path(__file__).resolve().parents[1] / "docs" / "analysis-queries.md"
WINDOW = "5s"  # rate() window: short, so changes show within seconds (scrapes every 1 s)


def error_rate_query(ns: str = NS, window: str = WINDOW) -> str:
    """The error ratio of the colour's pods, selected by the labels Prometheus gives any pod."""
    sel = f'namespace="{ns}",pod=~"{{{{podRegex}}}}"'
    return f'sum(rate(http_requests_total{{{sel},code=~"5.."}}[{window}])) / sum(rate(http_requests_total{{{sel}}}[{window}]))'


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


ROLLOUT = "checkout"
VARIABLES = rollout_variables(
    namespace=NS,
    name=ROLLOUT,
    color="green",
    stable_color="blue",
    revision=2,
    stable_revision=1,
    active_services=["checkout"],
    preview_service="checkout-preview",
)


def colour_job(app: FakeApp, replicas: int = 2) -> dict[str, Any]:
    """A scrape job where `app` plays `replicas` pods named as Kubernetes names the pods of
    Deployment checkout-<colour> (no cluster here: the names are made, in the real format)."""
    return pod_job(f"{NS}-{app.color}", app.pod_targets(pod_names(f"{ROLLOUT}-{app.color}", replicas)))


@dataclass
class Colors:
    blue: FakeApp
    green: FakeApp
    idle: FakeApp  # scraped but gets no requests: its error rate is 0/0 = NaN
    load: LoadGenerator
    prometheus: LocalPrometheus

    def set(self, blue: float | None = None, green: float | None = None) -> None:
        if blue is not None:
            self.blue.set(error_rate=blue)
        if green is not None:
            self.green.set(error_rate=green)


@pytest.fixture(scope="module")
def colors(prometheus: LocalPrometheus) -> Iterator[Colors]:
    """Blue and green fake apps, scraped every second as pods (labels namespace, pod,
    container), under a steady bounded load."""
    with FakeApp("blue", NS) as blue, FakeApp("green", NS) as green, FakeApp("idle", NS) as idle:
        prometheus.set_targets([colour_job(blue), colour_job(green), colour_job(idle, 1)], wait_up=True)
        load = LoadGenerator({blue.url: 1, green.url: 1}, rps=40, duration=900, concurrency=4)
        with load:
            yield Colors(blue, green, idle, load, prometheus)


# ---------------------------------------------------------------- docs/analysis-queries.md

_YAML_FENCE = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)


def doc_yaml() -> list[Any]:
    """Every YAML block of docs/analysis-queries.md, parsed."""
    return [yaml.safe_load(b) for b in _YAML_FENCE.findall(DOC.read_text())]


def doc_block(pred) -> dict:
    found = [b for b in doc_yaml() if isinstance(b, dict) and pred(b)]
    assert len(found) == 1, f"expected one such block in {DOC.name}, found {len(found)}"
    return found[0]


def doc_template() -> dict:
    """The doc's AnalysisTemplate."""
    return doc_block(lambda b: b.get("kind") == "AnalysisTemplate")


def doc_sd_job() -> dict:
    """The doc's kubernetes_sd scrape config."""
    return doc_block(lambda b: "scrape_configs" in b)["scrape_configs"][0]


PROMETHEUS_OPERATOR_VERSION = "v0.85.0"  # the PodMonitor CRD the doc's PodMonitor is checked against


def podmonitor_crd() -> Path:
    """prometheus-operator's PodMonitor CRD, from its Go module (pinned) via the Go module proxy."""
    mod = f"github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}"
    done = subprocess.run(
        ["go", "mod", "download", "-json", mod],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "GO111MODULE": "on"},
    )
    assert done.returncode == 0, f"go mod download {mod}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return Path(json.loads(done.stdout)["Dir"]) / "example" / "prometheus-operator-crd" / "monitoring.coreos.com_podmonitors.yaml"


# ---------------------------------------------------------------- a recording proxy


@dataclass
class Proxy:
    url: str
    seen: list[dict[str, str]] = field(default_factory=list)  # request headers, in order
    server: ThreadingHTTPServer | None = None

    def last(self) -> dict[str, str]:
        assert self.seen, "the proxy saw no request"
        return self.seen[-1]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = ""
    record: list[dict[str, str]] = []

    def log_message(self, *a: Any) -> None:
        pass

    def _forward(self, body: bytes | None) -> None:
        self.record.append({k.lower(): v for k, v in self.headers.items()})
        req = urllib.request.Request(self.upstream + self.path, data=body, method=self.command)
        ctype = self.headers.get("Content-Type")
        if ctype:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                code, data, rtype = r.status, r.read(), r.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as e:
            code, data, rtype = e.code, e.read(), e.headers.get("Content-Type", "application/json")
        self.send_response(code)
        self.send_header("Content-Type", rtype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._forward(None)

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length") or 0)
        self._forward(self.rfile.read(n))


def start_proxy(upstream: str, tls: tuple[str, str] | None = None) -> Proxy:
    """A forwarding proxy on 127.0.0.1 recording each request's headers; tls=(cert, key)."""
    seen: list[dict[str, str]] = []
    handler = type("Handler", (_ProxyHandler,), {"upstream": upstream.rstrip("/"), "record": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    scheme = "http"
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return Proxy(url=f"{scheme}://127.0.0.1:{server.server_address[1]}", seen=seen, server=server)


def stop_proxy(p: Proxy) -> None:
    if p.server is not None:
        p.server.shutdown()
        p.server.server_close()


def self_signed(tmp: Path) -> tuple[str, str, str]:
    """(cert, key, ca-pem-text) for 127.0.0.1, made with openssl."""
    cert, key = tmp / "tls.crt", tmp / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(cert), str(key), cert.read_text()


# ---------------------------------------------------------------- a server that never answers


class Silent:
    """Accepts TCP connections and reads, but never writes a byte back."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        for c in self.conns:
            c.close()
        self.sock.close()

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
