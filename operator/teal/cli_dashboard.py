"""`kubectl teal dashboard`: a local web page of the cluster's Rollouts, updated live.

One process, no build step and nothing fetched from elsewhere: the page is the static bundle in
teal/dashboard/ (index.html, app.js, app.css, hand-written), served by aiohttp. Three threads keep
a watch each (teal.client.Client.watch, with bookmarks; a new list on Gone) of the Rollouts, of
their Deployments (label teal.dev/rollout) and of the Events about Rollouts, all namespaces or
one, into a `Model`. The page reads the model through Server-Sent Events: a JSON snapshot of
every Rollout on connect, then a fresh view of each Rollout that changed.

The JSON model (`summary`, `rollout_view`, ...) is made of pure functions of the objects, so it is
unit-tested without a cluster. Endpoints:

    GET  /                                  the page
    GET  /api/rollouts                      {"rollouts": [summary...], "errors": [...], "synced": bool}
    GET  /api/rollouts/{ns}/{name}          the full view of one Rollout (404 when unknown)
    GET  /api/events                        Server-Sent Events: snapshot, rollout, deleted, status
    POST /api/rollouts/{ns}/{name}/promote  with --allow-actions only (else 403), and the page's token
    POST /api/rollouts/{ns}/{name}/abort    in the X-Teal-Token header (a same-origin guard)

Read-only by default. With `allow_actions`, promote and abort make the same status writes as
`kubectl teal promote` / `abort`: teal.cli hands its commands in (`actions`; this module does not
import teal.cli, which imports it), and they run on a Cluster of the Rollout's namespace.
On a loopback address, requests for any other Host are refused (DNS rebinding).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import ipaddress
import json
import logging
import secrets
import sys
import threading
import time
import webbrowser
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from . import client as kube
from .api import ANNOTATION_REVISION, COLORS, KIND, LABEL_ROLLOUT
from .cli_cluster import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_REFUSED, ROLLOUTS, CliError, Cluster, in_release

log = logging.getLogger("teal.dashboard")

STATIC = Path(__file__).with_name("dashboard")
EVENTS_KEPT = 20  # per Rollout, newest last
WEIGHT_POINTS = 500  # per Rollout: the weights over time since the dashboard started
WATCH_SECONDS = 60  # each watch request; the stream then starts again from the last resourceVersion
KEEPALIVE_S = 15.0
TOKEN_HEADER = "X-Teal-Token"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

JSON = dict[str, Any]
Key = tuple[str, str]  # (namespace, name) of a Rollout
STATUS_KEY: Key = ("", "")  # a change of the dashboard's own state (errors, synced)


# ---------------------------------------------------------------- the JSON model (pure)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = _meta(obj)
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _blue_green(ro: Mapping[str, Any]) -> Mapping[str, Any]:
    return ((ro.get("spec") or {}).get("strategy") or {}).get("blueGreen") or {}


def weights_of(status: Mapping[str, Any]) -> dict[str, int]:
    """The share of traffic per colour: status.weights (weighted routing), else all of it on the
    active colour (a selector switch is all or nothing); {} before anything is active."""
    weights = status.get("weights")
    if isinstance(weights, Mapping) and weights:
        return {c: int(weights[c]) for c in COLORS if isinstance(weights.get(c), int | float)}
    active = status.get("activeColor")
    return {c: (100 if c == active else 0) for c in COLORS} if active in COLORS else {}


def images_of(dep: Mapping[str, Any] | None) -> list[str]:
    spec = (((dep or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    return [str(c.get("image") or "?") for c in spec.get("containers") or [] if isinstance(c, Mapping)]


def colour_view(status: Mapping[str, Any], colour: str, dep: Mapping[str, Any] | None) -> JSON:
    """One colour: its Deployment's revision, images, ready/desired, and its roles."""
    roles = [
        role
        for role, field in (("active", "activeColor"), ("preview", "previewColor"), ("stable", "stableColor"))
        if status.get(field) == colour
    ]
    scale_down = status.get("scaleDown") or {}
    dep_status = (dep or {}).get("status") or {}
    return {
        "color": colour,
        "exists": dep is not None,
        "revision": ((_meta(dep or {}).get("annotations") or {}).get(ANNOTATION_REVISION)),
        "images": images_of(dep),
        "desired": int(((dep or {}).get("spec") or {}).get("replicas") or 0),
        "ready": int(dep_status.get("readyReplicas") or 0),
        "updated": int(dep_status.get("updatedReplicas") or 0),
        "roles": roles,
        "scaleDownAt": scale_down.get("at") if scale_down.get("color") == colour else None,
        "weight": weights_of(status).get(colour),
    }


def thresholds(spec: Mapping[str, Any]) -> dict[str, JSON]:
    """Per inline metric of spec.analysis: how a value is judged (min/max, or maxRatio/floor of a
    baseline). Metrics from an AnalysisTemplate are judged by the template: not known here."""
    out: dict[str, JSON] = {}
    for m in (spec.get("analysis") or {}).get("metrics") or []:
        if not isinstance(m, Mapping) or not m.get("name") or m.get("templateRef"):
            continue
        rng = m.get("thresholdRange") or {}
        judged: JSON = {"min": rng.get("min"), "max": rng.get("max")}
        if m.get("baseline") is not None:
            judged.update(maxRatio=m.get("maxRatio", 1), floor=m.get("floor", 0))
        for cond in ("successCondition", "failureCondition"):
            if m.get(cond):
                judged[cond] = m[cond]
        if m.get("dryRun"):
            judged["dryRun"] = True
        out[str(m["name"])] = judged
    return out


def _limit(m: Mapping[str, Any], judged: Mapping[str, Any]) -> float | None:
    """The largest passing value of one baseline measurement (baseline * maxRatio + floor)."""
    base = m.get("baseline")
    if not isinstance(base, int | float) or "maxRatio" not in judged:
        return None
    return float(base) * float(judged.get("maxRatio") or 1) + float(judged.get("floor") or 0)


def analysis_view(spec: Mapping[str, Any], status: Mapping[str, Any]) -> list[JSON]:
    """Per metric: its thresholds, its measurements (status.analysis, oldest first) and, when the
    running analysis measures it, its progress there (status.analysisRun.metrics)."""
    judged = thresholds(spec)
    run = status.get("analysisRun") or {}
    running = run.get("metrics") or {}
    names: list[str] = []
    points: dict[str, list[JSON]] = {}
    for m in status.get("analysis") or []:
        if not isinstance(m, Mapping) or not m.get("metric"):
            continue
        name = str(m["metric"])
        if name not in points:
            names.append(name)
            points[name] = []
        point = {k: m.get(k) for k in ("at", "value", "baseline", "verdict", "color", "run", "message")}
        point["limit"] = _limit(m, judged.get(name) or {})
        points[name].append(point)
    names += [n for n in running if n not in points]
    out = []
    for name in names:
        state = running.get(name) if isinstance(running.get(name), Mapping) else None
        out.append(
            {
                "metric": name,
                "thresholds": judged.get(name),
                "points": points.get(name, []),
                "run": {"key": run.get("key"), "verdict": run.get("verdict"), "phase": state.get("phase")} if state else None,
            }
        )
    return out


def event_view(ev: Mapping[str, Any]) -> JSON:
    meta = _meta(ev)
    at = ev.get("lastTimestamp") or ev.get("eventTime") or ev.get("firstTimestamp") or meta.get("creationTimestamp")
    return {
        "uid": meta.get("uid"),
        "at": at,
        "type": ev.get("type"),
        "reason": ev.get("reason"),
        "message": ev.get("message"),
        "count": ev.get("count") or 1,
    }


def _event_sort_key(ev: Mapping[str, Any]) -> tuple[str, str]:
    return (str(ev.get("at") or ""), str(ev.get("uid") or ""))


def summary(ro: Mapping[str, Any]) -> JSON:
    """A Rollout's line in the list."""
    meta, st = _meta(ro), ro.get("status") or {}
    steps = _blue_green(ro).get("steps") or []
    return {
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "phase": st.get("phase") or "Unknown",
        "reason": st.get("reason"),
        "message": st.get("message"),
        "activeColor": st.get("activeColor"),
        "previewColor": st.get("previewColor"),
        "stableColor": st.get("stableColor"),
        "currentRevision": st.get("currentRevision"),
        "stableRevision": st.get("stableRevision"),
        "weights": weights_of(st),
        "step": st.get("currentStep"),
        "steps": len(steps),
        "inRelease": in_release(ro),
        "paused": bool((ro.get("spec") or {}).get("paused")),
        "created": meta.get("creationTimestamp"),
    }


def history_view(status: Mapping[str, Any]) -> JSON:
    """The release history (status.history, newest first, when the operator records it) and the
    counters that never reset (status.stats)."""
    history = status.get("history")
    return {
        "history": [dict(h) for h in history if isinstance(h, Mapping)] if isinstance(history, list) else None,
        "stats": dict(status.get("stats") or {}),
    }


def rollout_view(
    ro: Mapping[str, Any],
    deployments: Mapping[str, Mapping[str, Any] | None],
    events: Iterable[Mapping[str, Any]] = (),
    weight_history: Iterable[Mapping[str, Any]] = (),
) -> JSON:
    """Everything the page shows of one Rollout (`deployments` by colour, `events` raw)."""
    spec, st = ro.get("spec") or {}, ro.get("status") or {}
    bg = _blue_green(ro)
    router = next((k for k in ("gatewayAPI", "nginx", "istio") if (bg.get("trafficRouting") or {}).get(k)), None)
    release = st.get("release") or {}
    view = summary(ro)
    view.update(
        colors=[colour_view(st, c, deployments.get(c)) for c in COLORS],
        weightHistory=list(weight_history),
        analysis=analysis_view(spec, st),
        analysisMessage=(st.get("analysisRun") or {}).get("message"),
        release={k: release.get(k) for k in ("revision", "color", "stage", "startedAt", "switchedAt", "weight")}
        if release
        else None,
        strategy={
            "router": router,
            "autoPromote": bool(bg.get("autoPromote", True)),
            "activeServices": list(bg.get("activeServices") or []),
            "previewService": bg.get("previewService"),
        },
        conditions=[
            {k: c.get(k) for k in ("type", "status", "reason", "message")}
            for c in st.get("conditions") or []
            if isinstance(c, Mapping)
        ],
        events=sorted((event_view(e) for e in events), key=_event_sort_key)[-EVENTS_KEPT:],
        **history_view(st),
    )
    return view


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


# ---------------------------------------------------------------- the model the watches keep


class Model:
    """The watched objects, thread-safe. `on_change(keys)` is called (from a watch thread, outside
    the lock) with the Rollouts whose view changed; STATUS_KEY for errors and sync state."""

    def __init__(self, on_change: Callable[[set[Key]], None] | None = None) -> None:
        self.lock = threading.Lock()
        self.rollouts: dict[Key, JSON] = {}
        self.deployments: dict[Key, JSON] = {}  # by (namespace, deployment name)
        self.events: dict[Key, dict[str, JSON]] = {}  # by Rollout, then event uid
        self.weights: dict[Key, list[JSON]] = {}
        self.errors: dict[str, str] = {}  # by watched kind
        self.synced: set[str] = set()
        self.on_change = on_change

    # -- what each kind of object belongs to
    @staticmethod
    def _owner(kind: str, obj: Mapping[str, Any]) -> Key | None:
        if kind == "rollouts":
            return key_of(obj)
        if kind == "deployments":
            label = (_meta(obj).get("labels") or {}).get(LABEL_ROLLOUT)
            return (key_of(obj)[0], str(label)) if label else None
        involved = obj.get("involvedObject") or {}
        if involved.get("kind") != KIND or not involved.get("name"):
            return None
        return (str(involved.get("namespace") or key_of(obj)[0]), str(involved["name"]))

    def _notify(self, keys: set[Key]) -> None:
        if keys and self.on_change is not None:
            self.on_change(keys)

    def replace(self, kind: str, items: Iterable[Mapping[str, Any]]) -> None:
        """A new listing of `kind`: what it lacks was deleted meanwhile."""
        with self.lock:
            changed = {k for k in (self._keys_of(kind)) if k is not None}
            self._clear(kind)
            for obj in items:
                changed |= self._put(kind, "ADDED", obj)
            if kind == "rollouts":
                for gone in set(self.weights) - set(self.rollouts):
                    del self.weights[gone]
            self.synced.add(kind)
            self.errors.pop(kind, None)
        self._notify(changed | {STATUS_KEY})

    def apply(self, kind: str, type_: str, obj: Mapping[str, Any]) -> None:
        with self.lock:
            changed = self._put(kind, type_, obj)
        self._notify(changed)

    def set_error(self, kind: str, message: str | None) -> None:
        with self.lock:
            if self.errors.get(kind) == message or (message is None and kind not in self.errors):
                return
            if message is None:
                self.errors.pop(kind, None)
            else:
                self.errors[kind] = message
        self._notify({STATUS_KEY})

    def _keys_of(self, kind: str) -> set[Key]:
        if kind == "rollouts":
            return set(self.rollouts)
        if kind == "deployments":
            return {self._owner(kind, d) or STATUS_KEY for d in self.deployments.values()}
        return set(self.events)

    def _clear(self, kind: str) -> None:
        {"rollouts": self.rollouts, "deployments": self.deployments, "events": self.events}[kind].clear()

    def _put(self, kind: str, type_: str, obj: Mapping[str, Any]) -> set[Key]:
        owner = self._owner(kind, obj)
        if owner is None:
            return set()
        deleted = type_ == "DELETED"
        if kind == "rollouts":
            if deleted:
                self.rollouts.pop(owner, None)
                self.weights.pop(owner, None)
            else:
                self.rollouts[owner] = dict(obj)
                self._record_weights(owner, obj)
        elif kind == "deployments":
            dep_key = key_of(obj)
            if deleted:
                self.deployments.pop(dep_key, None)
            else:
                self.deployments[dep_key] = dict(obj)
        else:
            uid = str(_meta(obj).get("uid") or _meta(obj).get("name"))
            per = self.events.setdefault(owner, {})
            if deleted:
                per.pop(uid, None)
            else:
                per[uid] = dict(obj)
                for old in sorted(per.values(), key=lambda e: _event_sort_key(event_view(e)))[:-EVENTS_KEPT]:
                    per.pop(str(_meta(old).get("uid") or _meta(old).get("name")), None)
        return {owner}

    def _record_weights(self, key: Key, ro: Mapping[str, Any]) -> None:
        st = ro.get("status") or {}
        weights = weights_of(st)
        points = self.weights.setdefault(key, [])
        phase = st.get("phase")
        if points and points[-1]["weights"] == weights and points[-1]["phase"] == phase:
            return
        points.append({"at": now_iso(), "weights": weights, "phase": phase, "revision": st.get("currentRevision")})
        del points[:-WEIGHT_POINTS]

    # -- reading
    def view(self, key: Key) -> JSON | None:
        with self.lock:
            ro = self.rollouts.get(key)
            if ro is None:
                return None
            ns, name = key
            deps = {c: self.deployments.get((ns, f"{name}-{c}")) for c in COLORS}
            return rollout_view(ro, deps, list((self.events.get(key) or {}).values()), list(self.weights.get(key) or []))

    def keys(self) -> list[Key]:
        with self.lock:
            return sorted(self.rollouts)

    def state(self) -> JSON:
        with self.lock:
            return {
                "errors": [f"{kind}: {msg}" for kind, msg in sorted(self.errors.items())],
                "synced": "rollouts" in self.synced,
            }

    def snapshot(self) -> JSON:
        views = [v for v in (self.view(k) for k in self.keys()) if v is not None]
        return {"rollouts": views, **self.state(), "at": now_iso()}

    def summaries(self) -> JSON:
        with self.lock:
            items = [summary(self.rollouts[k]) for k in sorted(self.rollouts)]
        return {"rollouts": items, **self.state()}


# ---------------------------------------------------------------- the watches


class Watch(threading.Thread):
    """List, then watch from the list's resourceVersion (bookmarks keep it fresh); list again on
    Gone, and after an error once a short backoff has passed."""

    def __init__(
        self,
        api: kube.Client,
        kind: str,
        res: kube.Resource,
        namespace: str | None,
        model: Model,
        stop: threading.Event,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> None:
        super().__init__(name=f"teal-dashboard-{kind}", daemon=True)
        self.api, self.kind, self.res, self.namespace = api, kind, res, namespace
        self.model, self.stop = model, stop
        self.label_selector, self.field_selector = label_selector, field_selector

    def run(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                self._list_and_watch()
                backoff = 1.0
            except kube.ApiError as exc:
                self.model.set_error(self.kind, _explain(self.kind, exc))
                log.debug("watch of %s: %s", self.kind, exc)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception as exc:  # a bug must not end the dashboard's view silently
                log.exception("watch of %s failed", self.kind)
                self.model.set_error(self.kind, f"{type(exc).__name__}: {exc}")
                self.stop.wait(5.0)

    def _list_and_watch(self) -> None:
        listed = self.api.list(self.res, self.namespace, label_selector=self.label_selector, field_selector=self.field_selector)
        self.model.replace(self.kind, listed.get("items") or [])
        rv = str((listed.get("metadata") or {}).get("resourceVersion") or "")
        while not self.stop.is_set():
            try:
                for event in self.api.watch(
                    self.res,
                    self.namespace,
                    resource_version=rv,
                    timeout_seconds=WATCH_SECONDS,
                    label_selector=self.label_selector,
                    field_selector=self.field_selector,
                ):
                    if self.stop.is_set():
                        return
                    obj = event.get("object") or {}
                    rv = str(_meta(obj).get("resourceVersion") or rv)
                    if event.get("type") != "BOOKMARK":
                        self.model.apply(self.kind, str(event.get("type")), obj)
            except kube.Gone:
                return  # list again


def _explain(kind: str, exc: kube.ApiError) -> str:
    if isinstance(exc, kube.NotFound) and exc.kind_missing and kind == "rollouts":
        return "the Rollout API (rollouts.teal.dev) is not installed in this cluster"
    if isinstance(exc, kube.Forbidden):
        return f"not allowed to list and watch {kind}: {exc.quoted(200)}"
    return exc.quoted(300)


def start_watches(api: kube.Client, namespace: str | None, model: Model, stop: threading.Event) -> list[Watch]:
    watches = [
        Watch(api, "rollouts", ROLLOUTS, namespace, model, stop),
        Watch(api, "deployments", kube.DEPLOYMENTS, namespace, model, stop, label_selector=LABEL_ROLLOUT),
        Watch(api, "events", kube.EVENTS, namespace, model, stop, field_selector=f"involvedObject.kind={KIND}"),
    ]
    for w in watches:
        w.start()
    return watches


# ---------------------------------------------------------------- actions


_STDOUT = threading.Lock()
Command = Callable[[Cluster, argparse.Namespace], int]  # a kubectl-teal command: teal.cli.cmd_promote, cmd_abort


def run_action(api: kube.Client, command: Command, namespace: str, name: str) -> tuple[int, str]:
    """`kubectl teal promote|abort NAME -n NAMESPACE` (the command teal.cli runs): its exit code
    and what it said."""
    args = argparse.Namespace(name=name, namespace=namespace, full=False, message="from the dashboard")
    said = io.StringIO()
    with _STDOUT, contextlib.redirect_stdout(said):
        try:
            code = command(Cluster(api, namespace), args)
        except CliError as exc:
            return exc.code, exc.message
    return code, said.getvalue().strip()


# ---------------------------------------------------------------- the server


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Subscriber:
    def __init__(self) -> None:
        self.keys: set[Key] = set()
        self.wake = asyncio.Event()


class Dashboard:
    """The aiohttp application over a Model."""

    def __init__(
        self,
        api: kube.Client,
        model: Model,
        allow_actions: bool = False,
        token: str | None = None,
        actions: Mapping[str, Command] | None = None,
    ) -> None:
        self.api, self.model, self.allow_actions = api, model, allow_actions
        self.actions = dict(actions or {})
        self.token = token or secrets.token_urlsafe(32)
        self.subscribers: set[Subscriber] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.allowed_hosts: set[str] | None = None  # None: any Host (not on a loopback address)
        self.closing = False

    # -- from the watch threads
    def changed(self, keys: set[Key]) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake, keys)

    def _wake(self, keys: set[Key]) -> None:
        for sub in self.subscribers:
            sub.keys |= keys
            sub.wake.set()

    def close(self) -> None:
        self.closing = True
        for sub in self.subscribers:
            sub.wake.set()

    # -- the application
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self.index)
        app.router.add_get("/app.js", self.static("app.js", "text/javascript"))
        app.router.add_get("/app.css", self.static("app.css", "text/css"))
        app.router.add_get("/api/rollouts", self.list_rollouts)
        app.router.add_get("/api/rollouts/{ns}/{name}", self.get_rollout)
        app.router.add_get("/api/events", self.events)
        app.router.add_post("/api/rollouts/{ns}/{name}/{action}", self.action)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if self.allowed_hosts is not None and request.host not in self.allowed_hosts:
            return web.json_response({"error": f"unexpected Host {request.host!r}"}, status=421)
        resp: web.StreamResponse = await handler(request)
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    async def index(self, request: web.Request) -> web.Response:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        meta = f'<meta name="teal-token" content="{self.token}">' if self.allow_actions else ""
        return web.Response(text=html.replace("<!--teal-token-->", meta), content_type="text/html")

    def static(self, name: str, content_type: str) -> Callable[[web.Request], Any]:
        async def serve_file(request: web.Request) -> web.Response:
            return web.Response(body=(STATIC / name).read_bytes(), content_type=content_type, charset="utf-8")

        return serve_file

    async def list_rollouts(self, request: web.Request) -> web.Response:
        return web.json_response(self.model.summaries())

    async def get_rollout(self, request: web.Request) -> web.Response:
        view = self.model.view((request.match_info["ns"], request.match_info["name"]))
        if view is None:
            return web.json_response({"error": "no such Rollout"}, status=404)
        return web.json_response(view)

    async def events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        sub = Subscriber()
        self.subscribers.add(sub)
        try:
            await resp.write(b"retry: 2000\n\n" + _sse("snapshot", self.model.snapshot()))
            while not self.closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.wake.wait(), KEEPALIVE_S)
                sub.wake.clear()
                keys, sub.keys = sub.keys, set()
                await resp.write(self._updates(keys) if keys else b": keepalive\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.subscribers.discard(sub)
        return resp

    def _updates(self, keys: set[Key]) -> bytes:
        out = b""
        for key in sorted(keys):
            if key == STATUS_KEY:
                out += _sse("status", self.model.state())
                continue
            view = self.model.view(key)
            out += _sse("rollout", view) if view else _sse("deleted", {"namespace": key[0], "name": key[1]})
        return out

    async def action(self, request: web.Request) -> web.Response:
        if not self.allow_actions:
            return web.json_response({"error": "read-only dashboard: start it with --allow-actions"}, status=403)
        given = request.headers.get(TOKEN_HEADER, "")
        origin = request.headers.get("Origin")
        if not secrets.compare_digest(given, self.token) or (origin and origin != f"{request.scheme}://{request.host}"):
            return web.json_response({"error": "refused: not from the dashboard's own page"}, status=403)
        ns, name, action = request.match_info["ns"], request.match_info["name"], request.match_info["action"]
        command = self.actions.get(action)
        if command is None:
            return web.json_response({"error": f"unknown action {action!r}"}, status=404)
        code, said = await asyncio.get_running_loop().run_in_executor(None, run_action, self.api, command, ns, name)
        status = {EXIT_OK: 200, EXIT_NOT_FOUND: 404, EXIT_REFUSED: 409}.get(code, 502)
        log.info("%s %s/%s from the dashboard: %s", action, ns, name, said)
        return web.json_response({"ok": code == EXIT_OK, "message": said}, status=status)


def _url(address: str, port: int) -> str:
    host = "127.0.0.1" if address in ("", "0.0.0.0") else address
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def _run(dashboard: Dashboard, address: str, port: int, opened: Callable[[str], None]) -> None:
    dashboard.loop = asyncio.get_running_loop()
    runner = web.AppRunner(dashboard.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, address, port, shutdown_timeout=1.0)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    if _is_loopback(address):
        names = {address, "localhost", "127.0.0.1", "[::1]"}
        dashboard.allowed_hosts = {f"{n}:{bound}" for n in names}
    try:
        opened(_url(address, bound))
        await asyncio.Event().wait()  # until Ctrl-C cancels it
    finally:
        dashboard.close()
        await runner.cleanup()


def serve(
    client: kube.Client,
    namespace: str | None,
    address: str = "127.0.0.1",
    port: int = 3100,
    allow_actions: bool = False,
    open_browser: bool = False,
    actions: Mapping[str, Command] | None = None,
) -> int:
    """Serve the dashboard until Ctrl-C (exit 0): all namespaces, or `namespace`'s Rollouts.
    `actions` are the commands behind the page's buttons ({"promote": ..., "abort": ...}: the
    plugin hands in its own, teal.cli.cmd_promote and cmd_abort); used with `allow_actions` only."""
    stop = threading.Event()
    if allow_actions and not actions:
        raise ValueError("allow_actions needs the promote and abort commands (actions=)")
    dashboard = Dashboard(client, Model(), allow_actions=allow_actions, actions=actions)
    dashboard.model.on_change = dashboard.changed
    start_watches(client, namespace, dashboard.model, stop)
    deadline = time.monotonic() + 5.0  # the first listing, so the page does not open empty
    while not dashboard.model.state()["synced"] and not dashboard.model.errors and time.monotonic() < deadline:
        time.sleep(0.05)

    def opened(url: str) -> None:
        scope = f"namespace {namespace}" if namespace else "all namespaces"
        mode = "promote/abort allowed" if allow_actions else "read-only"
        print(f"Teal dashboard of {scope} ({mode}): {url}  (Ctrl-C to stop)", flush=True)
        if open_browser:
            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()

    try:
        asyncio.run(_run(dashboard, address, port, opened))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, the address is not ours
        print(f"error: cannot serve on {address}:{port}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        stop.set()
    return EXIT_OK
