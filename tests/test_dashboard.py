"""`kubectl teal dashboard` (teal.cli_dashboard): the JSON model as pure functions, the server's
endpoints and guards in-process, and one release on the local control plane with the real
operator, a real Prometheus and the page in a real headless Chromium (Debian's package, driven
by playwright: hack/build-binaries.sh installs /usr/bin/chromium; playwright never downloads a
browser here).

The e2e saves its screenshots in a temporary folder (printed); with TEAL_UPDATE_DOCS_IMAGES=1 it
also writes docs/images/dashboard.png, the picture docs/kubectl-teal.md shows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from teal import cli_dashboard as dash

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# ---------------------------------------------------------------- objects as the cluster has them


def rollout_obj(ns: str = "shop", name: str = "checkout", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "teal.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "resourceVersion": "10"},
        "spec": {
            "replicas": 4,
            "template": {"spec": {"containers": [{"name": "app", "image": "registry.example.com/checkout:1.5.0"}]}},
            "strategy": {
                "blueGreen": {
                    "activeServices": [name],
                    "previewService": f"{name}-preview",
                    "autoPromote": False,
                    "trafficRouting": {"gatewayAPI": {"httpRoute": name}},
                    "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}],
                }
            },
            "analysis": {
                "metrics": [
                    {"name": "error-rate", "query": "q", "thresholdRange": {"max": 0.01}},
                    {"name": "errors-vs-live", "query": "q", "baseline": "b", "maxRatio": 1.2, "floor": 0.001},
                    {"name": "latency", "templateRef": {"name": "latency-p99"}},
                ]
            },
        },
        "status": status,
    }


def deployment(ns: str, rollout: str, colour: str, revision: str, image: str, ready: int, replicas: int = 4) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{rollout}-{colour}",
            "namespace": ns,
            "labels": {"teal.dev/rollout": rollout, "teal.dev/color": colour},
            "annotations": {"teal.dev/revision": revision},
            "resourceVersion": "5",
        },
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
        "status": {"readyReplicas": ready, "updatedReplicas": ready},
    }


def event(ns: str, rollout: str, uid: str, at: str, reason: str, kind: str = "Rollout", type_: str = "Normal") -> dict[str, Any]:
    return {
        "metadata": {"name": f"{rollout}.{uid}", "namespace": ns, "uid": uid},
        "involvedObject": {"kind": kind, "name": rollout, "namespace": ns},
        "reason": reason,
        "message": f"{reason} happened",
        "type": type_,
        "lastTimestamp": at,
        "count": 1,
    }


def measurement(at: str, metric: str, value: float | None, verdict: str, baseline: float | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"metric": metric, "run": "7:steps:0", "color": "green", "value": value, "verdict": verdict, "at": at}
    if baseline is not None:
        m["baseline"] = baseline
    return m


WEIGHTED_STATUS: dict[str, Any] = {
    "phase": "Paused",
    "reason": "PausedAtStep",
    "message": "revision 7 on green paused at step 2 (10% of traffic): kubectl teal promote",
    "activeColor": "blue",
    "previewColor": "green",
    "stableColor": "blue",
    "stableRevision": "6",
    "currentRevision": "7",
    "currentStep": 2,
    "weights": {"blue": 90, "green": 10},
    "release": {"revision": "7", "color": "green", "stage": "Step2", "startedAt": "2026-12-01T10:00:00Z", "weight": 10},
    "scaleDown": {"color": "green", "at": "2026-12-01T11:00:00Z"},
    "analysis": [
        measurement("2026-12-01T10:01:00Z", "error-rate", 0.002, "Successful"),
        measurement("2026-12-01T10:01:00Z", "errors-vs-live", 0.004, "Successful", baseline=0.003),
        measurement("2026-12-01T10:02:00Z", "error-rate", 0.02, "Failed"),
        measurement("2026-12-01T10:03:00Z", "error-rate", None, "Inconclusive"),
    ],
    "analysisRun": {
        "key": "7:steps:0",
        "verdict": "Running",
        "message": "error-rate 0.02 > max 0.01 (1/3 passed, 1 failed, limit 1)",
        "metrics": {"error-rate": {"phase": "Running", "measured": 3}, "latency": {"phase": "Running", "measured": 0}},
    },
    "stats": {"releases": 7, "promoted": 5, "aborted": 1, "rollbacks": 0, "lastReleaseSeconds": 42.5},
}


# ---------------------------------------------------------------- the JSON model


def test_a_weighted_release_paused_at_a_step_is_one_view_with_colours_weights_analysis_and_events():
    ro = rollout_obj(**WEIGHTED_STATUS)
    deps = {
        "blue": deployment("shop", "checkout", "blue", "6", "registry.example.com/checkout:1.4.2", 4),
        "green": deployment("shop", "checkout", "green", "7", "registry.example.com/checkout:1.5.0", 3),
    }
    events = [event("shop", "checkout", f"u{i:02}", f"2026-12-01T10:{i:02}:00Z", f"Reason{i}") for i in range(30)]
    view = dash.rollout_view(ro, deps, events, [{"at": "t", "weights": {"blue": 90, "green": 10}}])

    assert (view["namespace"], view["name"], view["phase"], view["reason"]) == ("shop", "checkout", "Paused", "PausedAtStep")
    assert (view["step"], view["steps"], view["inRelease"]) == (2, 3, True)
    assert view["weights"] == {"blue": 90, "green": 10}
    blue, green = view["colors"]
    assert blue == {
        "color": "blue",
        "exists": True,
        "revision": "6",
        "images": ["registry.example.com/checkout:1.4.2"],
        "desired": 4,
        "ready": 4,
        "updated": 4,
        "roles": ["active", "stable"],
        "scaleDownAt": None,
        "weight": 90,
    }
    assert (green["roles"], green["ready"], green["revision"], green["weight"]) == (["preview"], 3, "7", 10)
    assert green["scaleDownAt"] == "2026-12-01T11:00:00Z"
    assert view["strategy"] == {
        "router": "gatewayAPI",
        "autoPromote": False,
        "activeServices": ["checkout"],
        "previewService": "checkout-preview",
    }
    assert view["release"]["stage"] == "Step2"
    # analysis: per metric, oldest first, judged against the spec's thresholds
    by_metric = {m["metric"]: m for m in view["analysis"]}
    assert list(by_metric) == ["error-rate", "errors-vs-live", "latency"]
    err = by_metric["error-rate"]
    assert err["thresholds"] == {"min": None, "max": 0.01}
    assert [(p["value"], p["verdict"]) for p in err["points"]] == [
        (0.002, "Successful"),
        (0.02, "Failed"),
        (None, "Inconclusive"),
    ]
    assert err["run"] == {"key": "7:steps:0", "verdict": "Running", "phase": "Running"}
    ratio = by_metric["errors-vs-live"]
    assert ratio["thresholds"] == {"min": None, "max": None, "maxRatio": 1.2, "floor": 0.001}
    assert ratio["points"][0]["limit"] == pytest.approx(0.003 * 1.2 + 0.001)
    assert ratio["run"] is None  # not measured by the running analysis
    assert by_metric["latency"]["thresholds"] is None and by_metric["latency"]["points"] == []  # from a template
    assert view["analysisMessage"].startswith("error-rate 0.02 > max 0.01")
    # the last 20 events, oldest first
    assert [e["reason"] for e in view["events"]] == [f"Reason{i}" for i in range(10, 30)]
    # no status.history yet: the counters only
    assert view["history"] is None and view["stats"]["promoted"] == 5
    json.dumps(view)  # what the page gets


def test_weights_are_the_routers_or_all_on_the_active_colour():
    assert dash.weights_of({"weights": {"blue": 70, "green": 30}, "activeColor": "blue"}) == {"blue": 70, "green": 30}
    assert dash.weights_of({"activeColor": "green"}) == {"blue": 0, "green": 100}
    assert dash.weights_of({}) == {}


def test_history_is_shown_when_the_operator_records_it_newest_first():
    entries = [
        {"revision": "7", "outcome": "Reverted", "startedAt": "2026-12-01T10:00:00Z", "images": ["a:2"], "restoreSeconds": 3},
        {"revision": "6", "outcome": "Promoted", "startedAt": "2026-11-30T10:00:00Z", "images": ["a:1"]},
    ]
    view = dash.rollout_view(rollout_obj(phase="Healthy", activeColor="blue", history=entries), {})
    assert [h["outcome"] for h in view["history"]] == ["Reverted", "Promoted"]
    assert view["history"][0]["restoreSeconds"] == 3  # keys the dashboard does not know pass through
    assert view["colors"][0]["exists"] is False and view["colors"][0]["ready"] == 0


def test_the_model_follows_listings_and_watch_events_and_records_weights_on_change():
    changes: list[set[dash.Key]] = []
    model = dash.Model(on_change=changes.append)
    key = ("shop", "checkout")
    model.replace("rollouts", [rollout_obj(phase="Healthy", activeColor="blue", stableRevision="6", currentRevision="6")])
    assert key in changes[-1] and dash.STATUS_KEY in changes[-1] and model.state() == {"errors": [], "synced": True}
    model.replace("deployments", [deployment("shop", "checkout", "blue", "6", "a:1", 4)])
    model.apply("deployments", "ADDED", {"metadata": {"name": "unrelated", "namespace": "shop"}})  # not Teal's
    model.replace("events", [])
    model.apply("events", "ADDED", event("shop", "checkout", "e1", "2026-12-01T10:00:00Z", "Promoted"))
    model.apply("events", "ADDED", event("shop", "web", "e2", "2026-12-01T10:00:00Z", "ScalingReplicaSet", kind="Deployment"))
    view = model.view(key)
    assert view is not None
    assert view["colors"][0]["ready"] == 4 and [e["reason"] for e in view["events"]] == ["Promoted"]

    # a release: the same weights twice are one point of the weight history
    paused = rollout_obj(**WEIGHTED_STATUS)
    model.apply("rollouts", "MODIFIED", paused)
    model.apply("rollouts", "MODIFIED", paused)
    model.apply("rollouts", "MODIFIED", rollout_obj(**{**WEIGHTED_STATUS, "weights": {"blue": 50, "green": 50}}))
    history = model.view(key)["weightHistory"]  # type: ignore[index]
    assert [p["weights"] for p in history] == [{"blue": 100, "green": 0}, {"blue": 90, "green": 10}, {"blue": 50, "green": 50}]
    assert [p["phase"] for p in history] == ["Healthy", "Paused", "Paused"]

    for i in range(25):  # events stay bounded per Rollout
        model.apply("events", "ADDED", event("shop", "checkout", f"x{i:02}", f"2026-12-01T11:{i:02}:00Z", "Step"))
    assert len(model.events[key]) == dash.EVENTS_KEPT

    model.set_error("events", "not allowed to list and watch events")
    assert model.state()["errors"] == ["events: not allowed to list and watch events"]
    model.apply("rollouts", "DELETED", paused)
    assert model.view(key) is None and changes[-1] == {key}
    model.replace("rollouts", [rollout_obj(name="other", phase="Healthy")])  # a new listing: what it lacks is gone
    assert model.keys() == [("shop", "other")] and key not in model.weights


class ScriptedApi:
    """teal.client.Client's list/watch, answering from a script (a real apiserver does not
    answer 410 Gone or lack the CRD on cue)."""

    def __init__(self, lists: list[Any], watches: list[list[Any]], stop: Any):
        self.lists, self.watches, self.stop = lists, watches, stop
        self.watched_from: list[str | None] = []

    def list(self, res: Any, namespace: Any, **selectors: Any) -> dict[str, Any]:
        answer = self.lists.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def watch(self, res: Any, namespace: Any, resource_version: str | None = None, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.watched_from.append(resource_version)
        if not self.watches:
            self.stop.set()
            return
        for item in self.watches.pop(0):
            if isinstance(item, Exception):
                raise item
            yield item


def test_a_watch_lists_then_watches_from_the_lists_version_and_lists_again_on_gone():
    import threading

    from teal import client as kube

    stop = threading.Event()
    errors: list[list[str]] = []
    model = dash.Model()
    model.on_change = lambda keys: errors.append(model.state()["errors"]) if dash.STATUS_KEY in keys else None
    missing = kube.NotFound(404, "NotFound", "the server could not find the requested resource", {"kind": "Status"})
    first, second = rollout_obj(name="first", phase="Healthy"), rollout_obj(name="second", phase="Healthy")
    moved = {**first, "metadata": {**first["metadata"], "resourceVersion": "8"}, "status": {"phase": "Paused"}}
    api = ScriptedApi(
        lists=[
            missing,  # the CRD is not installed yet: said on the page, tried again
            {"metadata": {"resourceVersion": "5"}, "items": [first]},
            {"metadata": {"resourceVersion": "20"}, "items": [second]},
        ],
        watches=[
            [
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "7"}}},
                {"type": "MODIFIED", "object": moved},
                kube.Gone(410, "Expired", "too old resource version"),
            ],
        ],
        stop=stop,
    )
    watch = dash.Watch(api, "rollouts", dash.ROLLOUTS, None, model, stop)  # type: ignore[arg-type]
    watch.start()
    watch.join(timeout=20)
    assert not watch.is_alive()
    assert errors[0] == ["rollouts: the Rollout API (rollouts.teal.dev) is not installed in this cluster"]
    assert errors[-1] == [] and model.state()["synced"] is True
    assert api.watched_from == ["5", "20"]  # from each listing; Gone -> a new listing
    assert model.keys() == [("shop", "second")]  # what the new listing lacks is gone from the page


# ---------------------------------------------------------------- the server, in-process


@contextlib.asynccontextmanager
async def served(dashboard: dash.Dashboard):
    dashboard.loop = asyncio.get_running_loop()
    server = TestServer(dashboard.app(), host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    dashboard.allowed_hosts = {f"127.0.0.1:{server.port}", f"localhost:{server.port}"}
    try:
        yield client
    finally:
        dashboard.close()
        await client.close()


def filled_model() -> dash.Model:
    model = dash.Model()
    model.replace("rollouts", [rollout_obj(**WEIGHTED_STATUS)])
    return model


async def test_read_only_serves_the_bundle_and_json_and_refuses_actions():
    dashboard = dash.Dashboard(None, filled_model())  # type: ignore[arg-type]  # no action reaches the cluster
    async with served(dashboard) as http:
        page = await http.get("/")
        html = await page.text()
        assert page.status == 200 and "Teal releases" in html and 'src="app.js"' in html
        assert "teal-token" not in html.replace("<!--teal-token-->", "")  # no token: the page shows no buttons
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        for name, ctype in (("app.js", "text/javascript"), ("app.css", "text/css")):
            resp = await http.get(f"/{name}")
            assert resp.status == 200 and resp.content_type == ctype
        listed = await (await http.get("/api/rollouts")).json()
        assert [(r["name"], r["phase"]) for r in listed["rollouts"]] == [("checkout", "Paused")] and listed["synced"] is True
        one = await http.get("/api/rollouts/shop/checkout")
        assert one.status == 200 and (await one.json())["colors"][1]["roles"] == ["preview"]
        assert (await http.get("/api/rollouts/shop/nope")).status == 404
        refused = await http.post("/api/rollouts/shop/checkout/promote", headers={dash.TOKEN_HEADER: dashboard.token})
        assert refused.status == 403 and "--allow-actions" in (await refused.json())["error"]
        rebinding = await http.get("/api/rollouts", headers={"Host": "attacker.example:80"})
        assert rebinding.status == 421


async def test_actions_need_the_pages_token_and_its_origin_then_run_the_plugins_command():
    ran: list[tuple[str, str, str]] = []

    def promote(cluster: Any, args: Any) -> int:  # what teal.cli hands in: cmd_promote(cluster, args)
        ran.append((cluster.namespace, args.name, "promote"))
        print(f"rollout {args.name} revision 7 promoted past step 2")
        return 0

    def abort(cluster: Any, args: Any) -> int:
        raise dash.CliError(f"rollout {args.name} has no release in progress to abort", dash.EXIT_REFUSED)

    api = types.SimpleNamespace(timeout=types.SimpleNamespace(read=5.0))  # the commands here reach no cluster
    dashboard = dash.Dashboard(api, filled_model(), allow_actions=True, actions={"promote": promote, "abort": abort})  # type: ignore[arg-type]
    async with served(dashboard) as http:
        html = await (await http.get("/")).text()
        token = re.search(r'<meta name="teal-token" content="([^"]+)">', html)
        assert token and token.group(1) == dashboard.token
        url = "/api/rollouts/shop/checkout/promote"
        assert (await http.post(url)).status == 403  # no token: a form or another site's script
        assert (await http.post(url, headers={dash.TOKEN_HEADER: "guess"})).status == 403
        other_origin = {dash.TOKEN_HEADER: dashboard.token, "Origin": "http://evil.example"}
        assert (await http.post(url, headers=other_origin)).status == 403
        assert ran == []
        own = {dash.TOKEN_HEADER: dashboard.token, "Origin": f"http://127.0.0.1:{http.port}"}
        done = await http.post(url, headers=own)
        assert done.status == 200 and await done.json() == {
            "ok": True,
            "message": "rollout checkout revision 7 promoted past step 2",
        }
        assert ran == [("shop", "checkout", "promote")]
        refused = await http.post("/api/rollouts/shop/checkout/abort", headers=own)
        assert refused.status == 409 and "no release in progress" in (await refused.json())["message"]
        assert (await http.post("/api/rollouts/shop/checkout/delete", headers=own)).status == 404


async def test_server_sent_events_start_with_a_snapshot_then_send_each_change():
    model = filled_model()
    dashboard = dash.Dashboard(None, model)  # type: ignore[arg-type]
    model.on_change = dashboard.changed
    async with served(dashboard) as http:
        resp = await http.get("/api/events")
        assert resp.content_type == "text/event-stream"

        async def next_event() -> tuple[str, Any]:
            name, data = "", None
            while True:
                line = (await asyncio.wait_for(resp.content.readline(), 10)).decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif line == "" and name:
                    return name, data

        name, snap = await next_event()
        assert name == "snapshot" and [v["name"] for v in snap["rollouts"]] == ["checkout"]
        await asyncio.sleep(0)  # the handler is waiting for news now
        promoted = {**WEIGHTED_STATUS, "phase": "Healthy", "activeColor": "green", "weights": {"blue": 0, "green": 100}}
        await asyncio.to_thread(model.apply, "rollouts", "MODIFIED", rollout_obj(**promoted))  # from a watch thread
        name, view = await next_event()
        assert name == "rollout" and (view["phase"], view["activeColor"]) == ("Healthy", "green")
        await asyncio.to_thread(model.apply, "rollouts", "DELETED", rollout_obj())
        assert await next_event() == ("deleted", {"namespace": "shop", "name": "checkout"})
        resp.close()


def test_the_bundle_is_self_contained():
    """No CDN, no font or script from elsewhere: every URL in the bundle is relative (the SVG
    namespace is a name, not a request)."""
    bundle = {p.name: p.read_text() for p in dash.STATIC.iterdir() if p.suffix in (".html", ".js", ".css")}
    assert sorted(bundle) == ["app.css", "app.js", "index.html"]
    for name, text in bundle.items():
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)) - {"http://www.w3.org/2000/svg"}
        assert urls == set(), name
        assert "@import" not in text and "url(" not in text, name


# ---------------------------------------------------------------- e2e: a release in headless Chromium


class DashboardProcess:
    """`kubectl teal dashboard --port 0` (any free port) in a process of its own."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        code = "import sys; from teal.cli import main; sys.exit(main())"  # the kubectl-teal entry point
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", code, "dashboard", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # serve() prints the URL once it listens
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert found, f"no URL from the dashboard: {line!r}\n{log.read_text()}"
        self.url = found.group(0)
        self.banner = line

    def stop(self) -> int:
        """Ctrl-C: the exit code (0 expected)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return int(self.proc.returncode)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium (Debian's) through playwright: a persistent context on a temporary profile."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (hack/build-binaries.sh installs Debian's chromium package)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    profile = tempfile.mkdtemp(prefix="teal-chromium-")
    try:
        with sync_api.sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000}
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """A page of the dashboard that records console errors, failed loads and every URL it asks for."""

    def __init__(self, context: Any, url: str):
        self.url = url
        self.page = context.new_page()
        self.problems: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url}") if "/api/events" not in r.url else None)
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, fragment: str = "") -> Page:
        self.page.goto(self.url + fragment)
        return self

    def text(self, selector: str, timeout: float = 60) -> str:
        return str(self.page.locator(selector).first.inner_text(timeout=timeout * 1000))

    def wait(self, selector: str, timeout: float = 90) -> None:
        self.page.locator(selector).first.wait_for(state="visible", timeout=timeout * 1000)

    def close(self) -> None:
        self.page.close()
        foreign = [u for u in self.requests if not u.startswith(self.url) and not u.startswith("data:")]
        assert foreign == [], foreign
        assert self.problems == [], self.problems


ERROR_RATE = (
    'sum(rate(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}",code=~"5.."}[5s]))'
    ' / sum(rate(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}"}[5s]))'
)


@pytest.fixture
def world(k8s, namespace, prometheus, teal_operator):
    """Services app/app-preview, two colour processes Prometheus scrapes as the Rollout's pods,
    and traffic through the Services (as tests/test_e2e_analysis.py sets it up)."""
    from operator_helpers import Env
    from teal_devenv.fakeapp import run_fakeapp
    from teal_devenv.traffic import ClusterTraffic

    env = Env(k8s, namespace)
    env.create_service("app")
    env.create_service("app-preview")
    with contextlib.ExitStack() as stack:
        apps = {c: stack.enter_context(run_fakeapp(c, namespace)) for c in ("blue", "green")}
        stack.enter_context(
            prometheus.scrape_pods(namespace, k8s, namespace, {c: a.target for c, a in apps.items()}, rollout="app")
        )
        stack.enter_context(ClusterTraffic(k8s, namespace, apps, "app", "app-preview", rps=50, duration=600, preview_share=0.3))
        yield env, prometheus


@pytest.mark.cluster
@pytest.mark.prometheus
@pytest.mark.timeout(300)
def test_a_release_live_in_chromium_read_only_then_promoted_from_the_page(world, chromium, tmp_path):
    from operator_helpers import rollout

    env, prometheus = world
    body = rollout(autoPromote=False, scaleDownDelaySeconds=300)
    body["spec"]["analysis"] = {
        "prometheus": {"address": prometheus.url, "timeout": "3s"},
        "interval": "1s",
        "count": 3,
        "initialDelay": "8s",  # the new colour's pods scraped twice (tests/test_e2e_analysis.py)
        "prePromotion": ["error-rate"],
        "metrics": [{"name": "error-rate", "query": ERROR_RATE, "thresholdRange": {"max": 0.05}}],
    }
    env.create_rollout(body)
    env.wait_phase("Healthy", activeColor="blue", stableRevision="1", timeout=60)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"screenshots: {shots}")
    key = f"{env.ns}/app"
    row = f'tr[data-rollout="{key}"]'
    read_only = DashboardProcess([], tmp_path / "read-only.log")  # all namespaces
    actions = DashboardProcess(["-n", env.ns, "--allow-actions"], tmp_path / "actions.log")
    assert "all namespaces (read-only)" in read_only.banner, read_only.banner
    assert f"namespace {env.ns} (promote/abort allowed)" in actions.banner, actions.banner
    try:
        # 1. read-only, all namespaces: the Rollout live on blue, and no buttons
        page = Page(chromium, read_only.url).open(f"#{key}")
        page.wait(f'{row} [data-phase="Healthy"]')
        assert page.text(f"{row} td.active") == "blue"
        assert page.text(f"{row} td.revision") == "1"
        page.wait(f'[data-detail="{key}"] [data-color="blue"]')
        assert page.text('[data-color="blue"] .roles') == "active · stable"
        assert page.text('[data-color="blue"] .ready') == "2/2"
        assert page.text('[data-color="blue"] .image') == "example.com/app:v1"
        assert page.page.locator("button[data-action]").count() == 0
        page.page.screenshot(path=str(shots / "1-healthy.png"), full_page=True)

        # 2. a release, followed live (no reload): Progressing, the analysis measured, Paused
        env.set_image("v2")
        page.wait(f'{row} [data-phase="Progressing"]', timeout=30)
        page.wait(f'{row} [data-phase="Paused"]', timeout=90)
        assert env.status()["reason"] == "AwaitingPromotion"
        assert page.text(f"{row} td.revision") == "1 → 2"
        assert page.text('[data-color="green"] .roles') == "preview"
        assert page.text('[data-color="green"] .rev') == "2"
        assert page.text('[data-color="green"] .image') == "example.com/app:v2"
        metric = '[data-metric="error-rate"]'
        page.wait(f"{metric} svg.metric-chart")
        assert page.page.locator(f"{metric} circle.dot.v-successful").count() >= 3  # count: 3, all passed
        assert page.page.locator(f"{metric} line.threshold").count() == 1 and "max 0.05" in page.text(f"{metric} .metric-head")
        assert page.page.locator('[data-card="Events"] tr[data-reason]').count() >= 1
        page.page.screenshot(path=str(shots / "2-awaiting-promotion.png"), full_page=True)
        # the read-only server refuses a promote, whatever the request carries
        forged = urllib.request.Request(
            f"{read_only.url}api/rollouts/{env.ns}/app/promote", data=b"{}", method="POST", headers={"X-Teal-Token": "x"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(forged, timeout=10)
        assert refused.value.code == 403 and env.status()["phase"] == "Paused"

        # 3. --allow-actions: promote from the page; the switch shows live on both pages
        act = Page(chromium, actions.url).open(f"#{key}")
        act.wait(f'{row} [data-phase="Paused"]')
        act.page.locator('button[data-action="promote"]').click()
        act.wait('[data-notice="ok"]', timeout=30)
        assert "promoted" in act.text('[data-notice="ok"]')
        env.wait_phase("Healthy", activeColor="green", stableRevision="2", timeout=90)
        for p in (act, page):
            p.wait(f'{row} [data-phase="Healthy"]', timeout=30)
            assert p.text(f"{row} td.active") == "green"
        act.wait('[data-color="green"] .ready')
        assert page.text('[data-color="green"] .roles') == "active · stable"
        assert page.page.locator(".weights-chart rect.fill-green").count() >= 1  # the switch in the weights chart
        history = '[data-card="Release history"] tr[data-revision="2"]'  # status.history, newest first
        page.wait(history, timeout=30)
        assert page.text(f"{history} .outcome") == "Promoted" and "example.com/app:v2" in page.text(history)
        act.page.locator('button[data-action="abort"]').wait_for(state="attached")
        assert act.page.locator('button[data-action="abort"]').is_disabled()  # nothing to abort any more
        page.page.screenshot(path=str(shots / "3-promoted.png"), full_page=True)
        act.page.screenshot(path=str(shots / "4-promoted-actions.png"), full_page=True)
        if os.environ.get("TEAL_UPDATE_DOCS_IMAGES"):
            shutil.copy(shots / "2-awaiting-promotion.png", ROOT / "docs" / "images" / "dashboard.png")
        # 4. a deleted Rollout leaves both pages
        env.custom.delete_namespaced_custom_object("teal.dev", "v1alpha1", env.ns, "rollouts", "app")
        for p in (act, page):
            p.page.locator(row).wait_for(state="detached", timeout=30_000)
        act.close()
        page.close()
    finally:
        codes = (read_only.stop(), actions.stop())
    assert codes == (0, 0), (tmp_path / "read-only.log").read_text() + (tmp_path / "actions.log").read_text()
