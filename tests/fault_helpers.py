"""A fake Kubernetes API on kmock, for tests that inject API faults into Teal.

kmock's `KubernetesEmulator` keeps objects in memory and serves get/list/watch/patch, but it
assigns no resourceVersion, applies a write even when a test's scripted reaction answers it
with an error, creates nothing on a server-side apply, and turns every patch into a watch
event. `FakeApi` adds what Teal relies on from a real apiserver, so that an injected fault
means what it would mean on a cluster:

- every write stamps a new `metadata.resourceVersion` (and `uid`; `generation` for a
  Rollout's spec); a patch carrying a stale `metadata.resourceVersion` gets 409 Conflict
  and changes nothing (`conflicts` lists them);
- a patch that changes nothing is answered with the object as it is: no new
  resourceVersion, no watch event (as the apiserver does);
- a request answered by a test's scripted reaction (`api[...] << 500`) never reaches the
  stored state: a failed write is a write that did not happen;
- a server-side apply (`application/apply-patch+yaml`) of a missing object creates it;
- lists honour `labelSelector`s of the `k=v`, `k` and `!k` forms;
- `before(view, fn)` runs a hook when a request arrives, before it is served (another
  client writing in between, say); `arrived(request)` is when a request came in.

Faults are kmock reactions: `fail()` answers the first N matching requests with a
Kubernetes Status, `hang()` holds matching requests until `release()` (or the end of the
test), `drop()` cuts a watch stream off after some events. kmock itself does no label
selection and runs no controllers: the world a test seeds (Deployments with ready pods)
stays as it is unless the operator changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import itertools
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp.web
import kmock
import kopf
from kmock._internal import dicts, rendering  # kmock 0.8 exposes no public merge-patch or Request type alias
from kubernetes import client

from teal import controller as teal_controller
from teal import kopf_compat
from teal.api import ANNOTATION_CLAIMED_BY, ANNOTATION_HASH, ANNOTATION_REVISION, LABEL_COLOR, LABEL_ROLLOUT, template_hash
from teal.controller import Controller, Loop
from teal.kube import Kube, claim_value
from teal_devenv.wait import WaitTimeout, async_wait_for

ROLLOUTS = kmock.resource("teal.dev", "v1alpha1", "rollouts")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
SERVICES = kmock.resource("", "v1", "services")
EVENTS = kmock.resource("", "v1", "events")
REVISIONS = kmock.resource("apps", "v1", "controllerrevisions")
NAMESPACES = kmock.resource("", "v1", "namespaces")

Request = rendering.Request
Hook = Callable[[Request], Awaitable[None] | None]


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


class FakeApi(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with resourceVersions, preconditions and fault helpers."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._rv = itertools.count(1000)
        self._last_rv = "999"
        self._hooks: list[tuple[kmock.View, Hook]] = []
        self._arrivals: dict[int, float] = {}
        self._born: dict[tuple[Any, str | None, str], int] = {}  # the resourceVersion that created an object
        self._released = asyncio.Event()
        self.conflicts: list[Request] = []  # writes refused with 409 for a stale resourceVersion
        self.held = 0  # requests being held by hang() right now
        for res, kind in (
            (ROLLOUTS, "Rollout"),
            (DEPLOYMENTS, "Deployment"),
            (SERVICES, "Service"),
            (EVENTS, "Event"),
            (REVISIONS, "ControllerRevision"),
        ):
            self.resources[res] = kmock.ResourceInfo(
                kind=kind,
                namespaced=True,
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
                subresources={"status", "scale"} if res in (ROLLOUTS, DEPLOYMENTS) else set(),
            )
        # kopf waits for the namespaces resource to exist before it watches anything.
        self.resources[NAMESPACES] = kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs={"get", "list", "watch"})

    # ------------------------------------------------------------ faults

    def fail(
        self, view: kmock.View, code: int, times: int, reason: str = "InternalError", retry_after: int | None = None
    ) -> kmock.View:
        """Answer the first `times` requests seen through `view` with a Status `code`."""
        reaction = view[:times] << code
        if retry_after is not None:
            reaction = reaction << {"Retry-After": str(retry_after)}
        return reaction << status_body(code, reason, f"injected by the test: {code} {reason}")

    def hang(self, view: kmock.View) -> kmock.View:
        """Hold every request seen through `view` (no answer) until release()."""

        async def held() -> dict[str, Any]:
            self.held += 1
            try:
                await self._released.wait()
            finally:
                self.held -= 1
            return status_body(504, "Timeout", "released by the test")

        return view[lambda: not self._released.is_set()] << 504 << held

    def release(self) -> None:
        """Let held requests go (they get 504) and serve later ones normally."""
        self._released.set()

    def drop(self, view: kmock.View, *events: dict[str, Any]) -> kmock.View:
        """Stream `events` to the first watch seen through `view`, then close the connection
        in the middle of the chunked response (what a restarted apiserver or a proxy does)."""

        def cut(request: Request) -> None:
            request._raw_request.transport.close()  # kmock 0.8 keeps the aiohttp request private

        return view[:1] << 200 << (*events, cut)

    def before(self, view: kmock.View, hook: Hook) -> None:
        """Run `hook(request)` when a request seen through `view` arrives, before serving it."""
        self._hooks.append((view, hook))

    def arrived(self, request: Request) -> float:
        return self._arrivals[request.id]

    # ------------------------------------------------------------ state

    def requests(self, *criteria: Any) -> list[Request]:
        """The requests so far that match all criteria (kmock filters), in order of arrival."""
        view: kmock.View = self
        for c in criteria:
            view = view[c]
        return list(view)

    def next_rv(self) -> str:
        self._last_rv = str(next(self._rv))
        return self._last_rv

    def store(self, resource: kmock.resource, body: dict[str, Any]) -> dict[str, Any]:
        """Keep an object as if it had been created through the API (no watch event)."""
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        meta.update(
            resourceVersion=self.next_rv(),
            uid=meta.get("uid") or str(uuid.uuid4()),
            creationTimestamp=meta.get("creationTimestamp") or _now(),
        )
        if "spec" in body:
            meta.setdefault("generation", 1)
        self.objects[resource, meta.get("namespace"), meta["name"]] = body
        self._born[resource, meta.get("namespace"), meta["name"]] = int(meta["resourceVersion"])
        return body

    def stored(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[resource, namespace, name].raw)

    def edit(self, resource: kmock.resource, namespace: str, name: str, patch: dict[str, Any]) -> str:
        """Another client's merge patch of a stored object; returns the new resourceVersion.
        (No watch event: use the HTTP API, e.g. `await api.patch(url, json=...)`, for one.)"""
        obj = self.objects[resource, namespace, name]
        patch = copy.deepcopy(patch)
        meta = patch.setdefault("metadata", {})
        meta["resourceVersion"] = self.next_rv()
        if "spec" in patch:
            meta["generation"] = int(obj.raw["metadata"].get("generation", 1)) + 1
        obj.patch(patch)
        return meta["resourceVersion"]

    # ------------------------------------------------------------ serving

    async def _handle(self, request: Request) -> aiohttp.web.StreamResponse:
        self._arrivals[request.id] = time.monotonic()
        for view, hook in list(self._hooks):
            if request in view:
                result = hook(request)
                if asyncio.iscoroutine(result):
                    await result
        if self._scripted(request):
            # A fault answers instead of the server: the stored state must not change.
            return await kmock.RawHandler._handle(self, request)
        sent = copy.deepcopy(request.data)
        try:
            if request.resource is not None:
                async with self._lock:
                    unchanged = self._stamp(request)
                if unchanged is not None:
                    return aiohttp.web.json_response(unchanged)
            return await super()._handle(request)
        finally:
            if isinstance(request.data, dict):  # assertions see what the client sent, not the stamps
                request.data.clear()
                request.data.update(sent)

    def _scripted(self, request: Request) -> bool:
        """Is the request answered by a test's reaction rather than by the emulator's own?
        (kmock serves the highest priority first; the emulator's reactions are fallbacks.)"""
        for reaction in self._payloads:
            if float("-inf") in reaction.priorities or reaction._disabled.is_set():
                continue
            if request in reaction._source:
                return True
        return False

    def _stamp(self, request: Request) -> dict[str, Any] | None:
        """Prepare a write the way the apiserver would; the object as it is for a no-op patch."""
        action, data = request.action, request.data
        if action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.update(resourceVersion=self.next_rv(), uid=str(uuid.uuid4()), creationTimestamp=_now())
            if "spec" in data:
                meta["generation"] = 1
            self._born[request.resource, meta.get("namespace"), meta.get("name")] = int(meta["resourceVersion"])
            return None
        if action != kmock.action.UPDATE or not isinstance(data, dict) or request.name is None:
            return None
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            if "apply-patch" in request.headers.get("Content-Type", ""):  # server-side apply creates
                body = copy.deepcopy(data)
                body.setdefault("metadata", {}).update(name=request.name, namespace=request.namespace)
                self.store(request.resource, body)
            return None  # else the emulator answers 404
        current = self.objects[key].raw
        meta = data.setdefault("metadata", {})
        wanted = meta.pop("resourceVersion", None)
        if wanted is not None and str(wanted) != str(current["metadata"].get("resourceVersion")):
            self.conflicts.append(request)
            raise kmock.KubernetesError(
                status=409,
                reason="Conflict",
                message=f'Operation cannot be fulfilled on {request.resource.plural} "{request.name}": the object '
                "has been modified; please apply your changes to the latest version and try again",
            )
        if dicts.patch_dict(current, data) == current:
            return current
        meta["resourceVersion"] = self.next_rv()
        if request.subresource is None and "spec" in data and request.resource == ROLLOUTS:
            meta["generation"] = int(current["metadata"].get("generation", 1)) + 1
        return None

    async def _serve_watch(self, request: Request) -> AsyncIterator[Any]:
        """A watch from a resourceVersion starts with what changed since (kmock would replay
        every object as ADDED, which would hide whether a client re-listed after a 410)."""
        since = request.params.get("resourceVersion")
        if not since:
            async for item in super()._serve_watch(request):
                yield item
            return
        yield b""  # send the headers now
        async with self._lock:
            changed = [
                {"type": "ADDED" if self._born.get(key, 0) > int(since) else "MODIFIED", "object": obj.raw}
                for key, obj in self.objects.items()
                if key[0] == request.resource
                and not obj.deleted
                and request.namespace in (None, key[1])
                and int(obj.raw["metadata"].get("resourceVersion", 0)) > int(since)
            ]
        for event in changed:
            yield event
        async for event in self._buses[request.resource]:
            if request.namespace in (None, event["object"].get("metadata", {}).get("namespace")):
                yield event

    async def _serve_list(self, request: Request) -> Any:
        result = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            result["items"] = [o for o in result["items"] if _selects(selector, o)]
        result["metadata"]["resourceVersion"] = self._last_rv
        return result


def _selects(selector: str, obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.rstrip("=")) != v.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.asynccontextmanager
async def fake_api() -> AsyncIterator[FakeApi]:
    """A FakeApi served on a local port; held requests are let go before it stops."""
    async with FakeApi() as api, kmock.Server(api):
        try:
            yield api
        finally:
            api.release()


def api_client(api: FakeApi) -> client.ApiClient:
    config = client.Configuration()
    config.host = str(api.url).rstrip("/")
    return client.ApiClient(config)


# ------------------------------------------------------------------ Teal on the fake API


class TracedController(Controller):
    """Teal's Controller, recording how each reconcile ended (per Rollout, in order):
    the delay it asked for, or the exception it raised."""

    def __init__(self, kube: Kube):
        super().__init__(kube)
        self.outcomes: dict[tuple[str, str], list[float | None | BaseException]] = {}
        self.running: set[tuple[str, str]] = set()

    async def reconcile(self, loop: Loop) -> float | None:
        key = (loop.namespace, loop.name)
        self.running.add(key)
        try:
            delay = await super().reconcile(loop)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self.outcomes.setdefault(key, []).append(e)
            raise
        finally:
            self.running.discard(key)
        self.outcomes.setdefault(key, []).append(delay)
        return delay

    def failures(self, ns: str, name: str) -> list[BaseException]:
        return [o for o in self.outcomes.get((ns, name), []) if isinstance(o, BaseException)]

    def settled(self, ns: str, name: str) -> bool:
        """The last reconcile succeeded and asked for no early look again (nothing to do)."""
        done = self.outcomes.get((ns, name))
        if not done or (ns, name) in self.running:
            return False
        last = done[-1]
        return last is None or (isinstance(last, float) and last >= 1.0)


@contextlib.asynccontextmanager
async def running_controller(api: FakeApi) -> AsyncIterator[TracedController]:
    """Teal's controller on the fake API; its loops are stopped afterwards."""
    ctl = TracedController(Kube(api_client(api)))
    try:
        yield ctl
    finally:
        await ctl.stop()
        ctl.kube.close()


def kopf_registry(api: FakeApi, ctl: Controller, error_backoffs: tuple[float, ...] | None = None) -> kopf.OperatorRegistry:
    """Teal's registry for `ctl` (teal.controller.registry, as `teal run` builds it) with a
    login to the fake API instead of kopf's fallback login, which would load a kubeconfig into
    the kubernetes client's process-wide default configuration."""
    registry = teal_controller.registry(ctl)
    server = str(api.url).rstrip("/")

    @kopf.on.login(registry=registry)
    def _login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server)

    if error_backoffs is not None:  # after Teal's startup handler: kopf's own API retries, shortened

        @kopf.on.startup(registry=registry)
        def _backoffs(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.networking.error_backoffs = error_backoffs

    return registry


@contextlib.asynccontextmanager
async def running_operator(api: FakeApi, error_backoffs: tuple[float, ...] | None = None) -> AsyncIterator[TracedController]:
    """The real kopf operator with Teal's handlers (and its startup settings) on the fake
    API, cluster-wide; stopped, with Teal's loops, afterwards.

    It runs in a thread with its own event loop, as kopf.testing.KopfRunner does, but
    joined without blocking this loop, which serves the fake API. (In this loop, kopf
    would take the fake API's request handlers for its own hung tasks and wait 5 s for
    them at exit, and it would install its signal handlers.)"""
    kopf_compat.install()  # as `teal run` does
    ctl = TracedController(Kube(api_client(api)))
    registry = kopf_registry(api, ctl, error_backoffs)  # the handlers reach `ctl` and no other
    stop, ready = threading.Event(), threading.Event()
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(kopf.operator(registry=registry, clusterwide=True, standalone=True, stop_flag=stop, ready_flag=ready))
        except BaseException as e:  # reported by the test
            crashed.append(e)

    thread = threading.Thread(target=run, name="kopf-operator", daemon=True)
    thread.start()
    try:
        await until(lambda: ready.is_set() or crashed, 10, "kopf started")
        yield ctl
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 15)
        await ctl.stop()  # in case the cleanup handler did not run (stopping twice is harmless)
        ctl.kube.close()
    assert not thread.is_alive(), "kopf did not stop within 15 s"
    assert not crashed, f"kopf exited with {crashed[0]!r}"


# ------------------------------------------------------------------ a world to act on


def template(image: str) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "demo"}}, "spec": {"containers": [{"name": "app", "image": image}]}}


def deployment(ns: str, rollout: str, color: str, image: str, replicas: int) -> dict[str, Any]:
    """A colour's Deployment with every pod ready (nothing in kmock would make them ready)."""
    tpl = template(image)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"{rollout}-{color}",
            "namespace": ns,
            "labels": {LABEL_ROLLOUT: rollout, LABEL_COLOR: color},
            "annotations": {ANNOTATION_HASH: template_hash(tpl), ANNOTATION_REVISION: "1"},
        },
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "demo", LABEL_COLOR: color}}, "template": tpl},
        "status": {
            "replicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "updatedReplicas": replicas,
            "observedGeneration": 1,
        },
    }


def service(ns: str, name: str, color: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": "demo", LABEL_COLOR: color}, "ports": [{"port": 80}]},
    }


def rollout(ns: str, name: str, image: str, replicas: int = 2) -> dict[str, Any]:
    """A Rollout whose revision 1 (image v1) is stable and live on blue, asking for `image`."""
    stable = template_hash(template("v1"))
    return {
        "apiVersion": "teal.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": template(image),
            "strategy": {
                "blueGreen": {
                    "activeServices": [name],
                    "previewService": f"{name}-preview",
                    "scaleDownDelaySeconds": 600,
                    "abortScaleDownDelaySeconds": 600,
                }
            },
        },
        "status": {
            "phase": "Healthy",
            "reason": "Healthy",
            "activeColor": "blue",
            "stableColor": "blue",
            "stableHash": stable,
            "stableRevision": "1",
            "currentRevision": "1",
            "currentHash": stable,
            "revision": 1,
        },
    }


def seed_world(api: FakeApi, ns: str, name: str, replicas: int = 2) -> None:
    """What a Rollout `name` acts on: blue runs v1, green already runs v2 (every pod ready),
    and both Services select blue."""
    api.store(DEPLOYMENTS, deployment(ns, name, "blue", "v1", replicas))
    api.store(DEPLOYMENTS, deployment(ns, name, "green", "v2", replicas))
    api.store(SERVICES, service(ns, name, "blue"))
    api.store(SERVICES, service(ns, f"{name}-preview", "blue"))


def seed_release(api: FakeApi, ns: str, name: str, replicas: int = 2) -> None:
    """A release the next reconcile completes at once: revision 1 (v1) is live on blue, the
    spec asks for v2, and green already runs v2 with every pod ready, so Teal switches both
    Services to green (a fast rollback to the warm colour) with no Deployment to wait for."""
    seed_world(api, ns, name, replicas)
    ro = api.store(ROLLOUTS, rollout(ns, name, "v2", replicas))
    # as the operator left revision 1: the Rollout has claimed both Services
    services = [name, f"{name}-preview"]
    for svc in services:
        body = api.stored(SERVICES, ns, svc)
        body["metadata"]["annotations"] = {ANNOTATION_CLAIMED_BY: claim_value(ro)}
        api.store(SERVICES, body)
    ro["status"]["claims"] = sorted(f"Service/{svc}" for svc in services)
    api.store(ROLLOUTS, ro)


def selector_color(api: FakeApi, ns: str, service_name: str) -> str | None:
    return api.stored(SERVICES, ns, service_name)["spec"]["selector"].get(LABEL_COLOR)


def rollout_status(api: FakeApi, ns: str, name: str) -> dict[str, Any]:
    return api.stored(ROLLOUTS, ns, name).get("status") or {}


def switched(api: FakeApi, ns: str, name: str) -> bool:
    """Both Services select green and the status says so."""
    if (ROLLOUTS, ns, name) not in api.objects:
        return False
    st = rollout_status(api, ns, name)
    return (
        selector_color(api, ns, name) == "green"
        and selector_color(api, ns, f"{name}-preview") == "green"
        and st.get("phase") == "Healthy"
        and st.get("stableColor") == "green"
    )


async def until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `pred` on the event loop until it is truthy; fail after `timeout` seconds."""
    try:
        return await async_wait_for(pred, timeout=timeout, interval=interval, what=what, ignore=())
    except WaitTimeout:
        raise AssertionError(f"not within {timeout}s: {what}") from None
