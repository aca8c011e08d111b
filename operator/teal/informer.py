"""The operator's read path: list+watch informers and a caching client in front of teal.client.

Every object a reconcile reads (Rollouts, Deployments, Services, the enabled routers' routes,
AnalysisTemplates, ClusterAnalysisTemplates, Teal's ControllerRevisions, Namespaces when the
operator serves all of them, and only the Secrets analysis names) is kept in memory by one
`Informer` per kind (per namespace when the operator watches a list of namespaces): a thread
that lists, then watches from the list's resourceVersion with bookmarks, lists again on 410
Gone and backs off on any other error. A kind whose CRD is not installed (or that RBAC does not
let it list) is listed again slowly, as kopf does, and its reads fall through to the apiserver
meanwhile (which says "not served", so a router reports APINotFound as before).

`CachingClient` has teal.client.Client's methods: reads of a cached kind come from the store,
other reads go to the apiserver, and every write goes to the apiserver and then puts the write's
answer into the store (when its resourceVersion is newer than the stored one), so the next
decision never sees data older than what it wrote. Writes stay guarded by resourceVersion.
Objects are returned as stored: callers must not mutate them (the routers copy what they edit).

Why our own informers and not kopf's watches or `@kopf.index`: the bodies are plain dicts we
control (kopf wraps them), we index by Rollout and update the store from our own writes'
answers (kopf's indexes only see watch events), there is no per-object kopf worker hop between
a Deployment event and the reconcile that switches the Service, and the same informers can serve
kubectl-teal. kopf keeps startup, cleanup, probes, login and the ReleasePolicy watches.

Each change is handed to the asyncio loop with `call_soon_threadsafe` (the controller wakes the
Rollout(s) it concerns); a write's answer wakes nobody (the writer looks again anyway).
"""

from __future__ import annotations

import builtins
import contextvars
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .client import (
    CONTROLLER_REVISIONS,
    DEPLOYMENTS,
    JSON,
    NAMESPACES,
    SECRETS,
    SERVICES,
    ApiError,
    Client,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    Resource,
)

log = logging.getLogger("teal.informer")

Key = tuple[str, str]  # (namespace or "", name)
Handler = Callable[[Resource, str, JSON], None]  # (resource, event type, object)

WATCH_SECONDS = 300  # each watch request lasts this long (plus up to 20 % jitter), as client-go's 5-10 min
MISSING_RETRY_SECONDS = 30.0  # a kind whose CRD is missing, or that may not be listed: list again after
MAX_BACKOFF_SECONDS = 30.0
SECRET_IDLE_SECONDS = 600.0  # a Secret watch nobody read for this long is stopped

# What one reconcile read (resource plural, namespace, name-or-list-key) -> resourceVersion; set
# by the controller around a reconcile, filled by CachingClient's reads (in the API threads too:
# the controller copies its context into them). None as a value: read from the apiserver, so a
# fingerprint of it says nothing.
READS: contextvars.ContextVar[dict[tuple[str, str, str], str | None] | None] = contextvars.ContextVar("teal_reads", default=None)


def newer(a: str | None, b: str | None) -> bool:
    """Is resourceVersion `a` newer than `b`? (etcd's are integers; anything else counts as newer.)"""
    if b is None:
        return True
    if a is None:
        return False
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return a != b


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _rv(obj: Mapping[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("resourceVersion")


def parse_selector(selector: str | None) -> dict[str, str | None] | None:
    """An equality-only label selector ("a=b,c" ) as {key: value or None for exists};
    None when it has other terms (!=, in, notin, !key): the caller asks the apiserver."""
    out: dict[str, str | None] = {}
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if any(op in term for op in ("!", " in ", " notin ", "(")):
            return None
        if "=" in term:
            k, v = term.split("=", 1)
            out[k.rstrip("=").strip()] = v.lstrip("=").strip()
        else:
            out[term] = None
    return out


def matches(selector: Mapping[str, str | None], obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all((k in labels) if v is None else labels.get(k) == v for k, v in selector.items())


class Informer:
    """A list+watch of one resource (in one namespace, or cluster-wide), kept in a dict."""

    def __init__(
        self,
        client: Client,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_change: Handler | None = None,
        watch_seconds: int = WATCH_SECONDS,
        retry_missing: bool = True,
    ) -> None:
        self.client, self.res, self.namespace = client, res, namespace
        self.retry_missing = retry_missing  # False: a kind it may not list is read through the apiserver for good
        # the first list's objects are news only for the kind whose objects start loops (Rollouts):
        # the rest is read by those loops' first reconciles anyway
        self.notify_initial = False
        self.label_selector, self.field_selector = label_selector, field_selector
        self.on_change = on_change
        self.watch_seconds = watch_seconds
        self.items: dict[Key, JSON] = {}
        self.lock = threading.Lock()
        self.synced = threading.Event()  # listed at least once
        self.settled = threading.Event()  # listed, or found missing/forbidden: no need to wait on it
        self.missing = False  # the kind is not served (or not listable): reads go to the apiserver
        self.version = 0  # bumped on every change: a list read's fingerprint
        self.last_read = time.monotonic()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"teal-informer:{res.plural}:{namespace or '*'}", daemon=True)

    def start(self) -> Informer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()

    @property
    def usable(self) -> bool:
        return self.synced.is_set() and not self.missing

    # -- the store
    def get(self, namespace: str | None, name: str) -> JSON | None:
        self.last_read = time.monotonic()
        return self.items.get((namespace or "" if self.res.namespaced else "", name))

    def list(self, namespace: str | None = None, selector: Mapping[str, str | None] | None = None) -> builtins.list[JSON]:
        self.last_read = time.monotonic()
        with self.lock:
            values = builtins.list(self.items.values())
        return [o for o in values if (namespace is None or _key(o)[0] == namespace) and (not selector or matches(selector, o))]

    def put(self, obj: JSON, notify: bool = True) -> bool:
        """Store `obj` unless the store holds it at a newer resourceVersion; True if it changed."""
        key = _key(obj)
        with self.lock:
            old = self.items.get(key)
            if old is not None and not newer(_rv(obj), _rv(old)):
                return False
            self.items[key] = obj
            self.version += 1
        if notify and self.on_change:
            self.on_change(self.res, "MODIFIED" if old is not None else "ADDED", obj)
        return True

    def remove(self, obj: JSON, notify: bool = True) -> None:
        with self.lock:
            gone = self.items.pop(_key(obj), None)
            if gone is not None:
                self.version += 1
        if gone is not None and notify and self.on_change:
            self.on_change(self.res, "DELETED", obj)

    # -- the thread
    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                rv = self._list()
                failures = 0
                while not self.stopping.is_set():
                    rv = self._watch(rv)
            except Gone:
                log.debug("%s: watch too old; listing again", self.res.plural)
                continue
            except (NotFound, Forbidden) as e:
                if isinstance(e, NotFound) and not e.kind_missing:
                    self._backoff(failures := failures + 1, e)
                    continue
                if not self.missing:
                    log.warning(
                        "%s: cannot list (%s); reading through the apiserver, listing again every %.0fs",
                        self.res.plural,
                        e.quoted(200),
                        MISSING_RETRY_SECONDS,
                    )
                self.missing = True
                self.settled.set()
                if not self.retry_missing:
                    return
                self.stopping.wait(MISSING_RETRY_SECONDS)
            except Exception as e:  # Transient, a cut stream, anything: back off, list again
                failures += 1
                self._backoff(failures, e)

    def _backoff(self, failures: int, e: Exception) -> None:
        delay = min(MAX_BACKOFF_SECONDS, 0.2 * 2**failures) * random.uniform(0.8, 1.2)
        log.warning("%s: watch failed (%s); listing again in %.1fs", self.res.plural, e, delay)
        self.stopping.wait(delay)

    def _list(self) -> str:
        answer = self.client.list(
            self.res, self.namespace, label_selector=self.label_selector, field_selector=self.field_selector
        )
        fresh = {_key(o): o for o in answer.get("items") or []}
        first = not self.synced.is_set()
        kind = self.res.plural
        changed: builtins.list[tuple[str, JSON]] = []
        with self.lock:
            for key, old in builtins.list(self.items.items()):
                if key not in fresh:
                    del self.items[key]
                    changed.append(("DELETED", old))
            for key, obj in fresh.items():
                obj.setdefault("kind", (answer.get("kind") or "").removesuffix("List"))
                obj.setdefault("apiVersion", answer.get("apiVersion"))
                held = self.items.get(key)
                if held is None or newer(_rv(obj), _rv(held)):
                    self.items[key] = obj
                    changed.append(("MODIFIED" if held is not None else "ADDED", obj))
            self.version += 1
        self.missing = False
        self.synced.set()
        self.settled.set()
        log.debug("%s: listed %d", kind, len(fresh))
        if self.on_change and (not first or self.notify_initial):
            for typ, obj in changed:
                self.on_change(self.res, typ, obj)
        return str((answer.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, rv: str) -> str:
        seconds = int(self.watch_seconds * random.uniform(1.0, 1.2))
        for event in self.client.watch(
            self.res,
            self.namespace,
            resource_version=rv,
            timeout_seconds=seconds,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
        ):
            obj = event.get("object") or {}
            rv = _rv(obj) or rv
            typ = event.get("type")
            if typ == "DELETED":
                self.remove(obj)
            elif typ in ("ADDED", "MODIFIED"):
                self.put(obj)
            if self.stopping.is_set():
                break
        return rv


class Informers:
    """The informers of one operator, by resource and namespace; `handler` sees every change
    on the asyncio loop given to start() (or in the informer's thread without one)."""

    def __init__(
        self,
        client: Client,
        namespaces: Sequence[str] = (),
        *,
        routes: Iterable[Resource] = (),
        templates: Iterable[Resource] = (),
        watch_namespaces: bool | None = None,
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self.client = client
        self.namespaces = list(namespaces)
        self.watch_seconds = watch_seconds
        self.handler: Handler | None = None
        self.loop: Any = None
        self.by_res: dict[Resource, dict[str | None, Informer]] = {}
        self.secrets: dict[Key, Informer] = {}
        self.secrets_lock = threading.Lock()
        from .api import GROUP, LABEL_ROLLOUT, PLURAL, VERSION

        self.rollouts = Resource(GROUP, VERSION, PLURAL)
        kinds: list[tuple[Resource, str | None]] = [
            (self.rollouts, None),
            (DEPLOYMENTS, None),
            (SERVICES, None),
            (CONTROLLER_REVISIONS, LABEL_ROLLOUT),
            *((r, None) for r in routes),
            *((r, None) for r in templates if r.namespaced),
        ]
        for res, label in kinds:
            self._add(res, label)
        for inf in self.by_res[self.rollouts].values():
            inf.notify_initial = True
        for res in templates:
            if not res.namespaced:
                self._add(res, None, cluster=True)
        if watch_namespaces if watch_namespaces is not None else not self.namespaces:
            self._add(NAMESPACES, None, cluster=True)
        self.plurals = {res.plural: res for res in self.by_res}
        self.core = {self.rollouts, DEPLOYMENTS, SERVICES, CONTROLLER_REVISIONS, NAMESPACES}

    def _add(self, res: Resource, label: str | None, cluster: bool = False) -> None:
        scopes: list[str | None] = [None] if cluster or not self.namespaces else list(self.namespaces)
        self.by_res[res] = {
            ns: Informer(self.client, res, ns, label_selector=label, on_change=self._changed, watch_seconds=self.watch_seconds)
            for ns in scopes
        }

    def all(self) -> Iterator[Informer]:
        for scoped in self.by_res.values():
            yield from scoped.values()
        yield from builtins.list(self.secrets.values())

    def start(self, loop: Any = None, handler: Handler | None = None) -> Informers:
        self.loop, self.handler = loop, handler
        for inf in self.all():
            inf.start()
        return self

    def stop(self) -> None:
        for inf in self.all():
            inf.stop()

    def wait_synced(self, timeout: float = 60.0) -> bool:
        """Until every informer has listed once (or found its kind missing); False on timeout."""
        deadline = time.monotonic() + timeout
        return all(inf.settled.wait(max(0.0, deadline - time.monotonic())) for inf in self.all())

    def _changed(self, res: Resource, typ: str, obj: JSON) -> None:
        handler, loop = self.handler, self.loop
        if handler is None:
            return
        if loop is None:
            handler(res, typ, obj)
            return
        try:
            loop.call_soon_threadsafe(handler, res, typ, obj)
        except RuntimeError:  # the loop is closed: the operator is stopping
            pass

    # -- lookups
    def informer(self, res: Resource, namespace: str | None) -> Informer | None:
        """The usable informer that holds objects of `res` in `namespace` (None: not cached)."""
        scoped = self.by_res.get(res)
        if not scoped:
            return None
        inf = scoped.get(None) if None in scoped else scoped.get(namespace) if namespace else None
        return inf if inf is not None and inf.usable else None

    def secret_informer(self, namespace: str, name: str) -> Informer | None:
        """The watch of one Secret, started on its first read (usable once it listed; until
        then, and when RBAC allows no list/watch of Secrets, reads go to the apiserver)."""
        key = (namespace, name)
        with self.secrets_lock:
            inf = self.secrets.get(key)
            if inf is None:  # RBAC without list/watch of Secrets: GET as before (retry_missing=False)
                inf = self.secrets[key] = Informer(
                    self.client,
                    SECRETS,
                    namespace,
                    field_selector=f"metadata.name={name}",
                    watch_seconds=self.watch_seconds,
                    retry_missing=False,
                    on_change=self._changed,
                ).start()
            for other_key, other in builtins.list(self.secrets.items()):  # nobody names it any more
                if other_key != key and time.monotonic() - other.last_read > SECRET_IDLE_SECONDS:
                    other.stop()
                    del self.secrets[other_key]
        inf.last_read = time.monotonic()
        return inf if inf.usable else None

    def unchanged(self, reads: Mapping[tuple[str, str, str], str | None]) -> bool:
        """Does every store still hold what a reconcile read (same resourceVersions)?"""
        for (plural, ns, name), rv in reads.items():
            if rv is None:
                return False  # read from the apiserver: nothing to compare
            if plural == SECRETS.plural:
                inf = self.secrets.get((ns, name))
            else:
                res = self.plurals.get(plural)
                inf = self.informer(res, ns or None) if res is not None else None
            if inf is None:
                return False
            now = f"v{inf.version}" if name.startswith("list:") else _rv(inf.items.get((ns, name))) or "-"
            if now != rv:
                return False
        return True

    def observe(self, res: Resource, obj: Any) -> None:
        """A write's answer: into the store if it is newer (nobody is woken)."""
        if not isinstance(obj, dict) or not (obj.get("metadata") or {}).get("resourceVersion"):
            return
        ns = (obj.get("metadata") or {}).get("namespace")
        inf = None if res == SECRETS else self.informer(res, ns)
        if inf is None:
            return
        if (
            res == CONTROLLER_REVISIONS
            and inf.label_selector
            and inf.label_selector not in ((obj.get("metadata") or {}).get("labels") or {})
        ):
            return
        inf.put(obj, notify=False)

    def scaled(self, res: Resource, namespace: str | None, name: str, scale: JSON) -> None:
        """A /scale write's answer (a Scale with the object's new resourceVersion): the stored
        object with that replica count and a new generation, until its watch event brings it whole."""
        inf = self.informer(res, namespace)
        held = inf.get(namespace, name) if inf is not None else None
        rv, replicas = _rv(scale), (scale.get("spec") or {}).get("replicas")
        if inf is None or held is None or replicas is None or not newer(rv, _rv(held)):
            return
        meta = dict(held["metadata"], resourceVersion=rv)
        if (held.get("spec") or {}).get("replicas") != replicas:
            meta["generation"] = int(meta.get("generation") or 0) + 1
        inf.put({**held, "metadata": meta, "spec": {**(held.get("spec") or {}), "replicas": replicas}}, notify=False)

    def core_usable(self) -> bool:
        """Are the caches of what every reconcile reads (Rollouts, Deployments, Services, Teal's
        ControllerRevisions, Namespaces when watched) listed? Then those reads never block."""
        return all(inf.usable for res, scoped in self.by_res.items() if res in self.core for inf in scoped.values())

    def forget(self, res: Resource, namespace: str | None, name: str) -> None:
        inf = self.informer(res, namespace)
        if inf is not None:
            inf.remove({"metadata": {"namespace": namespace, "name": name}}, notify=False)


def _record(res: Resource, namespace: str | None, name: str, rv: str | None) -> None:
    reads = READS.get()
    if reads is not None:
        reads[(res.plural, namespace or "", name)] = rv


class CachingClient(Client):
    """teal.client.Client whose reads of cached kinds come from `informers` (see the module doc).
    It shares the wrapped client's connection pool, settings and request counter."""

    def __init__(self, client: Client, informers: Informers) -> None:  # noqa: D107 - no Client.__init__: shared state
        self.__dict__.update(client.__dict__)
        self.inner = client
        self.informers = informers

    # -- reading
    def get(self, res: Resource, namespace: str | None, name: str, sub: str | None = None) -> JSON | None:
        if sub:
            inf = None
        elif res == SECRETS:
            inf = self.informers.secret_informer(namespace, name) if namespace else None
        else:
            inf = self.informers.informer(res, namespace)
        if inf is None:
            _record(res, namespace, name, None)
            return super().get(res, namespace, name, sub)
        obj = inf.get(namespace, name)
        _record(res, namespace if res.namespaced else None, name, _rv(obj) or "-")
        return obj

    def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
    ) -> JSON:
        inf = self.informers.informer(res, namespace) if res != SECRETS else None
        selector = parse_selector(label_selector)
        name = None
        if field_selector:
            field, _, value = field_selector.partition("=")
            name = value.lstrip("=") if field == "metadata.name" and "," not in field_selector else None
        if inf is None or selector is None or (field_selector and name is None):
            _record(res, namespace, f"list:{label_selector}:{field_selector}", None)
            return super().list(res, namespace, label_selector=label_selector, field_selector=field_selector, limit=limit)
        if name is not None:
            one = inf.get(namespace, name)
            items = [one] if one is not None and (not selector or matches(selector, one)) else []
            _record(res, namespace if res.namespaced else None, name, _rv(one) or "-")
        else:
            items = inf.list(namespace, selector)
            _record(res, namespace, f"list:{label_selector}:{field_selector}", f"v{inf.version}")
        return {"items": items, "metadata": {}}

    # -- writing: to the apiserver, then the answer into the store
    def _refresh(self, res: Resource, namespace: str | None, name: str) -> None:
        """After a 409: the cache held an older object than the apiserver (its watch event is on
        the way); read it once so the next decision does not send the same stale write again."""
        try:
            fresh = super().get(res, namespace, name)
        except ApiError:
            return
        if fresh is not None:
            self.informers.observe(res, fresh)

    def _wrote(self, res: Resource, namespace: str | None, name: str, sub: str | None, write: Callable[[], JSON]) -> JSON:
        try:
            out = write()
        except Conflict:
            if self.informers.informer(res, namespace) is not None:
                self._refresh(res, namespace, name)
            raise
        if sub in (None, "status"):
            self.informers.observe(res, out)
        elif sub == "scale":
            self.informers.scaled(res, namespace, name, out)
        return out

    def create(self, res: Resource, namespace: str | None, body: Mapping[str, Any], **query: Any) -> JSON:
        out = super().create(res, namespace, body, **query)
        self.informers.observe(res, out)
        return out

    def replace(
        self, res: Resource, namespace: str | None, name: str, body: Mapping[str, Any], sub: str | None = None, **query: Any
    ) -> JSON:
        return self._wrote(
            res, namespace, name, sub, lambda: super(CachingClient, self).replace(res, namespace, name, body, sub, **query)
        )

    def merge_patch(
        self, res: Resource, namespace: str | None, name: str, patch: Mapping[str, Any], sub: str | None = None, **query: Any
    ) -> JSON:
        return self._wrote(
            res, namespace, name, sub, lambda: super(CachingClient, self).merge_patch(res, namespace, name, patch, sub, **query)
        )

    def json_patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        ops: Sequence[Mapping[str, Any]],
        sub: str | None = None,
        **query: Any,
    ) -> JSON:
        return self._wrote(
            res, namespace, name, sub, lambda: super(CachingClient, self).json_patch(res, namespace, name, ops, sub, **query)
        )

    def apply(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        field_manager: str,
        force: bool = True,
        sub: str | None = None,
    ) -> JSON:
        return self._wrote(
            res,
            namespace,
            name,
            sub,
            lambda: super(CachingClient, self).apply(res, namespace, name, body, field_manager, force, sub),
        )

    def delete(
        self, res: Resource, namespace: str | None, name: str, *, uid: str | None = None, propagation: str | None = None
    ) -> JSON | None:
        out = super().delete(res, namespace, name, uid=uid, propagation=propagation)
        deleting = isinstance(out, dict) and (out.get("metadata") or {}).get("deletionTimestamp")
        if deleting and out is not None:
            self.informers.observe(res, out)
        else:
            self.informers.forget(res, namespace, name)
        return out

    def close(self) -> None:
        self.informers.stop()
        super().close()
