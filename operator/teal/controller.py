"""The operator: kopf watches, one reconcile loop per Rollout, and the glue to the adapters.

Watches (no polling) wake a Rollout's loop within milliseconds:
- every event of the Rollout itself (spec, status written by kubectl-teal, deletion),
- every event of a Deployment Teal owns (label teal.dev/rollout), and of a Deployment
  named by a workloadRef.
A loop also wakes when the core asks for it (a timer is due) and at least every
RESYNC_SECONDS; with informers (which watch every object a decision reads, a Service selector
edited by hand included), a Rollout whose last decision changed nothing waits for an event or
its timer, and replays its decision every IDLE_RESYNC_SECONDS.

One loop per Rollout means reconciles of one Rollout never overlap, and a slow call
(Prometheus, a router) only delays its own Rollout. The loops are plain asyncio tasks
rather than kopf daemons so that Rollouts get no finalizer: deleting a Rollout never waits
for the operator, and garbage collection removes what Teal made.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from . import analysis, analysis_driver, core, leases, metrics, policy_kube
from .api import (
    ANNOTATION_RESTART_AT,
    COLORS,
    GROUP,
    LABEL_ROLLOUT,
    PLURAL,
    ROUTE_OBJECT_KIND,
    ROUTER_KINDS,
    VERSION,
    SpecError,
    parse_spec,
    steered_objects,
)
from .client import DEPLOYMENTS, ApiError, Conflict, Resource
from .informer import READS, Informers
from .kube import REFUSALS, Kube, api_message, deployment_name, merge_patch, owner_reference

log = logging.getLogger("teal")
log_writes = logging.getLogger("teal.writes")  # TEAL_DEBUG_LOGGERS=teal.writes: every status write, with the writer

RESYNC_SECONDS = 30.0
ROUTE_RESYNC_SECONDS = 5.0
MIN_REQUEUE = 0.05
# With informers, a Rollout whose last decision changed nothing is decided again when one of the
# objects it read changes (a watch event), when the core's next timer is due, or after this long.
IDLE_RESYNC_SECONDS = 600.0
SETTLE_SECONDS = 5.0  # with informers: after a decision that wrote, the look that finds it quiet
TRAFFIC_ACTIONS = (core.SelectColor, core.SetWeights)  # what moves users' requests: done before status records it


@dataclasses.dataclass
class Settings:
    namespaces: list[str] = dataclasses.field(default_factory=list)  # empty: all namespaces
    prometheus_address: str | None = None
    leases: leases.Config | None = None  # shards on Leases (teal.leases); None: this replica acts everywhere
    identity: str = ""
    api_workers: int = 32  # threads for Kubernetes calls
    routers: tuple[str, ...] = ROUTER_KINDS  # traffic routers this operator may use (and watch the routes of)
    notifications_config: str | None = None  # NAMESPACE/NAME of the notifications ConfigMap (teal.notify)


class Loop:
    """The reconcile loop of one Rollout."""

    def __init__(self, controller: Controller, namespace: str, name: str):
        self.controller = controller
        self.namespace = namespace
        self.name = name
        self.poke = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.failures = 0
        self.workload_ref: str | None = None
        self.route: tuple[str, str] | None = None  # (kind, name) of the traffic router's object
        self.pending_events: list[core.Event] = []
        self.services: frozenset[str] = frozenset()  # the active and preview Services it points at
        self.rejection: core.Rejection | None = None  # a refused Deployment, until status records it
        # (what the last decision read -> resourceVersion, policies version, when its timer is due),
        # kept when that decision wrote and did nothing: the inputs of a wake-up that may skip deciding
        self.quiet: tuple[dict[tuple[str, str, str], str | None], int, Any] | None = None
        self.acting = 0  # decisions in a row that acted

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"teal:{self.namespace}/{self.name}")

    async def run(self) -> None:
        while True:
            await self.controller.gate.wait_owned(self.namespace)  # only the holder of its shard acts
            self.poke.clear()
            try:
                delay = await self.controller.reconcile(self)
                self.failures = 0
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                self.failures += 1
                delay = min(30.0, 0.2 * 2**self.failures)
                metrics.reconcile_error("conflict" if isinstance(e, Conflict) else "api")
                if isinstance(e, Conflict):
                    delay = 0.0  # someone wrote in between: decide again on fresh data
                else:
                    log.warning(
                        "%s/%s: API error %s %s: %s; retrying in %.1fs",
                        self.namespace,
                        self.name,
                        e.status,
                        e.reason,
                        api_message(e, 300),
                        delay,
                    )
            except Exception as e:
                self.failures += 1
                delay = min(30.0, 0.5 * 2**self.failures)
                metrics.reconcile_error(metrics.error_kind(e))
                log.exception("%s/%s: reconcile failed; retrying in %.1fs", self.namespace, self.name, delay)
            if delay is None:
                return  # the Rollout is gone
            try:
                # A quiet Rollout is woken by the informers' events for everything it read (and
                # by its own timer, which `delay` already is): no periodic look until IDLE_RESYNC.
                cap = IDLE_RESYNC_SECONDS if self.quiet is not None else RESYNC_SECONDS
                await asyncio.wait_for(self.poke.wait(), timeout=min(max(delay, 0.0), cap))
            except TimeoutError:
                pass


async def _together(*calls) -> None:
    """Await all; then raise the first failure, if any (none is left running)."""
    for outcome in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


def _measured(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Did the decision from `old` to `new` record an analysis measurement (its run's state)?"""
    return any(old.get(k) != new.get(k) for k in ("analysisRun", "analysis"))


def _set_claims(status: dict[str, Any], held: list[str]) -> None:
    if held:
        status["claims"] = sorted(held)
    else:
        status.pop("claims", None)


def selector_weights(spec, observed: core.Observed) -> dict[str, int] | None:
    """Without a traffic router the weights are what the active Services select, read back."""
    colors = [(observed.services.get(s) or core.ServiceObs()).color for s in spec.blue_green.active_services]
    if not colors or any(c not in COLORS for c in colors):
        return None
    return {c: round(100 * colors.count(c) / len(colors)) for c in COLORS}


class Controller:
    """The operator's state: its settings, its Kubernetes client (in `kube`), the release
    policies its watches saw, and one Loop per Rollout. Built by main (or a test) and handed
    to the kopf handlers by registry()."""

    def __init__(self, kube: Kube | None = None, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.kube = kube or Kube()
        self.policies = policy_kube.Policies()
        self.providers = analysis.ProviderCache()  # Prometheus connection pools, kept across reconciles
        from . import notify  # release notifications: an outbox in status, sent in the background

        self.notifier = notify.Notifier(self.kube, self.call, self.settings.notifications_config, self.owns)
        self.loops: dict[tuple[str, str], Loop] = {}
        self.api_pool = concurrent.futures.ThreadPoolExecutor(self.settings.api_workers, thread_name_prefix="teal-api")
        self.leading = asyncio.Event()  # set while this replica holds a shard (with one shard: leads)
        self.leading.set()
        self.gate: leases.LeaseGate | leases.AlwaysOwner = leases.AlwaysOwner()
        # The informers behind kube's CachingClient (teal.informer), if any: reads come from
        # memory and their events wake the loops; loops wait for their first sync (`ready`).
        self.informers: Informers | None = getattr(self.kube.client, "informers", None)
        self.ready = asyncio.Event()
        if self.informers is None:
            self.ready.set()
        self.background: set[asyncio.Task] = set()

    async def call(self, fn, *args, **kwargs):
        """fn in the API thread pool, in this task's context (teal.informer.READS records its reads)."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self.api_pool, lambda: ctx.run(fn, *args, **kwargs))

    async def read(self, fn, *args):
        """fn on the event loop when it reads only from listed caches (no request, no thread hop on
        the switch path), else in the API thread pool as call() does."""
        if self.informers is not None and self.informers.core_usable():
            return fn(*args)
        return await self.call(fn, *args)

    # -- loops
    def wake(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        loop = self.loops.get(key)
        if loop is None or loop.task is None or loop.task.done():
            loop = self.loops[key] = Loop(self, namespace, name)
            loop.start()
        loop.poke.set()

    def forget(self, namespace: str, name: str) -> None:
        self.policies.pending.update(self.policies.note((namespace, name), set()))  # it applies to none now
        loop = self.loops.pop((namespace, name), None)
        if loop and loop.task:
            loop.task.cancel()
        metrics.forget_rollout(namespace, name)  # its series go with it

    def _poke_where(self, namespace: str, matches) -> None:
        for (ns, _), loop in list(self.loops.items()):
            if ns == namespace and matches(loop):
                loop.poke.set()

    def wake_by_workload(self, namespace: str, deployment: str) -> None:
        self._poke_where(namespace, lambda loop: loop.workload_ref == deployment)

    def wake_by_service(self, namespace: str, service: str) -> None:
        self._poke_where(namespace, lambda loop: service in loop.services)

    def wake_by_route(self, namespace: str, kind: str, name: str) -> None:
        """`name` is the route itself, or the canary Ingress Teal made beside an Ingress."""
        self._poke_where(
            namespace,
            lambda loop: (
                loop.route is not None
                and loop.route[0] == kind
                and (loop.route[1] == name or (kind == "nginx" and name == f"{loop.route[1]}-teal-canary"))
            ),
        )

    def owns(self, namespace: str | None) -> bool:
        """May this replica act for `namespace` now ('' or None: cluster-scoped objects)?"""
        return self.gate.owns(namespace)

    def start_leases(self, config: leases.Config) -> None:
        """Act only for the namespaces of the shards this replica holds (see teal.leases)."""
        from .client import Client

        api = Client(self.kube.client.configuration, timeout=(2.0, 2.0), retries=1, pool_size=2)
        self.gate = gate = leases.LeaseGate(api, config)
        gate.on_change = self._shards_changed
        self.leading.clear()  # stand by until a shard is held
        gate.start()

    def _shards_changed(self, gained: set[int], lost: set[int]) -> None:
        """A lost shard's loops stop at once (a reconcile in flight is cancelled at its next
        await); a gained shard's loops start and look at their Rollouts."""
        for (ns, name), loop in list(self.loops.items()):
            shard = self.gate.shard_of(ns)
            if shard in lost and loop.task is not None:
                loop.task.cancel()
            elif shard in gained:
                self.wake(ns, name)
        self.leading.set() if self.gate.held() else self.leading.clear()
        metrics.shards_held(self.gate.held(), self.gate.shards)

    async def start_informers(self, timeout: float = 120.0) -> None:
        """Start the informers (their events wake the loops on this event loop) and let the
        loops reconcile once every cache has listed (a kind that is missing does not hold them)."""
        assert self.informers is not None
        await self.call(policy_kube.load_policies, self)  # no Rollout decides before the policies are known
        self.informers.start(asyncio.get_running_loop(), self.on_change)
        if not await asyncio.to_thread(self.informers.wait_synced, timeout):
            log.warning("informers: not all caches listed within %.0fs; reading the rest through the apiserver", timeout)
        self.ready.set()

    def on_change(self, res: Resource, typ: str, obj: Mapping[str, Any]) -> None:
        """An informer's event (on the event loop): wake the Rollout(s) it concerns."""
        meta = obj.get("metadata") or {}
        ns, name = meta.get("namespace") or "", meta.get("name") or ""
        plural = res.plural
        if plural == PLURAL:
            if typ != "DELETED":
                self.wake(ns, name)
            elif (ns, name) in self.loops or meta.get("uid"):
                task = asyncio.ensure_future(self._rollout_deleted(ns, name, obj))
                self.background.add(task)
                task.add_done_callback(self.background.discard)
        elif plural == "deployments":
            owner = (meta.get("labels") or {}).get(LABEL_ROLLOUT)
            loop = self.loops.get((ns, owner)) if owner else None
            if loop is not None:
                loop.poke.set()
            elif not owner:
                self.wake_by_workload(ns, name)
        elif plural == "services":
            self.wake_by_service(ns, name)
        elif plural in ROUTE_PLURALS:
            self.wake_by_route(ns, ROUTE_PLURALS[plural], name)
        elif plural != "controllerrevisions":  # templates, namespaces: loops that did not read them skip at once
            for (lns, _), loop in list(self.loops.items()):
                if not ns or lns == ns or plural == "namespaces" and lns == name:
                    loop.poke.set()

    async def _rollout_deleted(self, ns: str, name: str, obj: Mapping[str, Any]) -> None:
        self.forget(ns, name)
        await policy_kube.report_selection(self)
        if (obj.get("metadata") or {}).get("uid"):
            await self.release_claims(obj)

    async def stop(self) -> None:
        if self.informers is not None:
            self.informers.stop()
        for loop in list(self.loops.values()):
            if loop.task:
                loop.task.cancel()
        await asyncio.gather(*(lp.task for lp in self.loops.values() if lp.task), return_exceptions=True)
        self.loops.clear()
        await self.gate.stop()  # no loop acts any more: hand the Leases back
        await self.providers.aclose()
        await self.notifier.aclose()
        self.api_pool.shutdown(wait=False, cancel_futures=True)

    # -- one reconcile
    async def reconcile(self, loop: Loop) -> float | None:
        """One look at the Rollout. With informers, a wake-up (a resync, an event of an object it
        did not read) that finds every input of its last quiet decision unchanged (the
        resourceVersions of all it read, the release policies) before the core's next timer is
        due decides nothing and sends nothing: an idle Rollout costs no API request and no decide()."""
        await self.ready.wait()
        if loop.quiet is not None:
            left = self._quiet_left(loop)
            if left is not None:
                return left
        loop.quiet = None
        READS.set({} if self.informers is not None else None)  # this loop's task only
        return await self._reconcile(loop)

    def _quiet_left(self, loop: Loop) -> float | None:
        """Seconds until the last quiet decision's timer is due, if nothing it read changed; else None."""
        assert loop.quiet is not None and self.informers is not None
        reads, version, due = loop.quiet
        if loop.pending_events or loop.rejection or version != self.policies.version:
            return None
        left = (due - policy_kube.now()).total_seconds()
        if left <= 0 or not self.informers.unchanged(reads):
            return None
        return left

    def _remember_quiet(self, loop: Loop, requeue_after: float | None, now) -> None:
        reads = READS.get()
        if reads is None or self.informers is None or None in reads.values():
            return  # without informers, or it read something from the apiserver: nothing to compare
        wait = requeue_after if requeue_after is not None else IDLE_RESYNC_SECONDS
        loop.quiet = (reads, self.policies.version, now + dt.timedelta(seconds=wait))

    async def _reconcile(self, loop: Loop) -> float | None:
        started = time.monotonic()
        body = await self.read(self.kube.get_rollout, loop.namespace, loop.name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.forget(loop.namespace, loop.name)
            return None
        status = body.get("status") or {}
        now = policy_kube.now()
        try:
            spec = parse_spec(body.get("spec") or {})
        except SpecError as e:
            metrics.reconcile_error("spec")
            return await self._cannot_decide(loop, body, status, f"invalid spec: {e}", "InvalidSpec", now)
        loop.workload_ref = spec.workload_ref.name if spec.workload_ref else None
        routing = spec.blue_green.traffic_routing
        loop.route = (routing.kind, routing.name) if routing else None
        loop.services = frozenset(spec.blue_green.active_services) | frozenset(
            [spec.blue_green.preview_service] if spec.blue_green.preview_service else []
        )
        held, refused = await self._claim(body, status)
        observed = await self.read(self.kube.observe, body, spec)
        gates = await self.read(self.policies.gates_for, body, policy_kube.namespace_labels(self.kube.client))
        if self.policies.pending:  # this Rollout made a policy select something, or nothing any more
            await policy_kube.report_selection(self)
        observed = dataclasses.replace(observed, rejected=loop.rejection, claimed=refused, gates=gates)
        router = None
        if refused:
            pass  # nothing of this Rollout's traffic is touched (not even a router's prepare)
        elif spec.blue_green.traffic_routing is not None:
            router, observed = await self._observe_router(
                body, spec.blue_green.traffic_routing, spec.blue_green.active_services, observed
            )
        else:
            observed = dataclasses.replace(observed, weights=selector_weights(spec, observed))
        try:
            if spec.analysis:  # the verdict (and the engine's state, which decide() puts in status)
                observed = await self._analysis(body, spec, status, observed, now)
            plan = core.decide(spec, status, observed, now, body["metadata"].get("generation"))
        except (ApiError, asyncio.CancelledError):
            raise
        except Exception as e:  # a bug for this one Rollout: say so in its status, still honour an abort
            log.exception("%s/%s: cannot decide", loop.namespace, loop.name)
            metrics.reconcile_error(metrics.error_kind(e, default="decide"))
            return await self._cannot_decide(loop, body, status, f"cannot decide: {type(e).__name__}: {e}", "ReconcileError", now)
        _set_claims(plan.status, held)
        posted = await self._carry_out(loop, body, spec, status, plan, router)
        if posted is None:
            return 0.0  # it moved traffic: the next decision, at once, reads it back and records it
        metrics.observe_reconcile(time.monotonic() - started, body, status, plan.status)
        if plan.actions or loop.rejection:
            # look again at once: read back what we changed (from the cache, which holds the writes'
            # answers); a decision that keeps acting (someone undoes it) looks again every MIN_REQUEUE
            loop.acting += 1
            return 0.0 if self.informers is not None and loop.acting <= 3 else MIN_REQUEUE
        loop.acting = 0
        unchanged = not plan.events and not posted and not merge_patch(status, plan.status)
        if unchanged:
            self._remember_quiet(loop, plan.requeue_after, now)
        requeue = plan.requeue_after if plan.requeue_after is not None else RESYNC_SECONDS
        if self.informers is not None and plan.requeue_after is None and (loop.quiet is not None or not unchanged):
            # Quiet: only an event (or IDLE_RESYNC) wakes it. Else it wrote: look once more soon, on
            # the cache, to find it quiet (an idle operator then decides nothing at all). A decision
            # that read through the apiserver (a kind not cached) still looks every RESYNC_SECONDS.
            requeue = IDLE_RESYNC_SECONDS if loop.quiet is not None else SETTLE_SECONDS
        if router is not None and plan.status.get("release"):
            # Mid-release, a route someone else edits gets Teal's weights back even if its
            # watch event is missed (the route's CRD may have appeared after start-up).
            requeue = min(requeue, ROUTE_RESYNC_SECONDS)
        return requeue

    async def _carry_out(self, loop: Loop, body, spec, status, plan: core.Plan, router) -> list[core.Event] | None:
        """Carry out a decision; returns the Events posted, or None when it only moved traffic.

        The switch (a Deployment event -> one decision -> its writes) puts the one write that moves
        traffic first, as Argo Rollouts does. A decision that moves traffic (Service selectors, a
        router's weights; each only to a colour decide() saw with ready pods; all at once) does
        only that, and the loop decides again at once on what it reads back (the cache holds the
        writes' answers). That decision, with nothing left to move, records the whole outcome in
        one status write guarded by resourceVersion (Healthy, if the release is done), then runs
        the other actions (Deployments, scaling, revisions: a status written first keeps them
        safe), and posts the Events last, never before what they report. A move that is not found
        done (someone undoes it) is recorded at once the second time, and so is a decision that
        took an analysis measurement: a measurement is not taken again the same way, so it is
        recorded with the move it caused, not left for the next decision to redo.

        Why this order is safe: a crash after a move leaves the old status beside a selector that
        has moved; the next decision, on the same inputs, decides the same move, finds it done and
        records it, or (the new colour lost its pods, an abort came) points every Service back
        where status says: the stable colour. A decision on data a few milliseconds stale may move
        traffic to a colour that had ready pods when read; the decision that follows at once, on
        fresh data (its status write fails with 409 if the Rollout changed meanwhile), puts it
        where the fresh status says. A move that fails is retried with backoff; the status is
        written all the same (it says traffic is being moved, never Healthy)."""
        moves = [a for a in plan.actions if isinstance(a, TRAFFIC_ACTIONS)]
        if moves:
            try:
                await self._act(loop, body, spec, moves, router)
            except ApiError:
                await self._write(body, status, plan.status)
                loop.pending_events.extend(plan.events)  # they go out after the next success
                raise
            if loop.acting < 2 and not _measured(status, plan.status):
                loop.acting += 1
                return None
        await self._write(body, status, plan.status)
        loop.rejection = None  # recorded in status (or no longer relevant)
        # The decision is recorded; its Events are posted once the actions are done, so
        # they never claim what has not happened. If an action fails, they wait on the loop
        # (the next decision will not repeat them) and go out after the next success.
        loop.pending_events.extend(plan.events)
        await self._act(loop, body, spec, [a for a in plan.actions if not isinstance(a, TRAFFIC_ACTIONS)], router)
        await self._restart(body, plan.status)
        events, loop.pending_events = loop.pending_events, []
        await self._post(body, events)
        return events

    async def _claim(self, body, status) -> tuple[list[str], dict[str, str]]:
        """Claim the Services and route the spec names; release those it no longer names
        (status.claims). Returns (held, refused: object -> the Rollout that holds it).
        Routes of a router this operator does not use are neither read nor claimed (it may
        have no permission to): the Rollout is told RouterUnavailable instead."""
        usable = {"Service", *(ROUTE_OBJECT_KIND[k] for k in self.settings.routers)}
        objects = [o for o in steered_objects(body.get("spec")) if o.split("/", 1)[0] in usable]
        held, refused = await self.call(self.kube.claim, body, objects)
        stale = [o for o in status.get("claims") or [] if o not in objects and o.split("/", 1)[0] in usable]
        if stale:
            await self.call(self.kube.release_claims, body, stale)
        return held, refused

    async def release_claims(self, body) -> None:
        """Best effort, on the Rollout's deletion (a claim by a Rollout that is gone is taken
        over anyway, so a missed event costs nothing). Only the holder of its namespace's shard."""
        if not self.owns(body["metadata"].get("namespace")):
            return
        objects = sorted(set(steered_objects(body.get("spec"))) | set((body.get("status") or {}).get("claims") or []))
        try:
            await self.call(self.kube.release_claims, body, objects)
        except Exception as e:
            log.info(
                "%s/%s: claims not released on deletion (taken over later): %s",
                body["metadata"].get("namespace"),
                body["metadata"].get("name"),
                e,
            )

    async def _cannot_decide(self, loop: Loop, body, status, message: str, reason: str, now) -> float | None:
        """Degraded with the error; an abort is acted on all the same (core.cannot_decide)."""
        fallback = core.Fallback.from_spec(body.get("spec"))
        loop.services = frozenset(fallback.active_services) | frozenset(
            [fallback.preview_service] if fallback.preview_service else []
        )
        held, refused = await self._claim(body, status)
        observed = await self.call(self.kube.observe_traffic, body, sorted(loop.services))
        observed = dataclasses.replace(observed, claimed=refused)
        router = None
        if fallback.traffic_routing is not None and not refused:  # an abort moves the weights back too
            try:
                router, observed = await self._observe_router(body, fallback.traffic_routing, fallback.active_services, observed)
            except Exception as e:  # the Services are moved all the same; the next reconcile tries the route again
                log.warning("%s/%s: route not read while the spec cannot be processed: %s", loop.namespace, loop.name, e)
        plan = core.cannot_decide(status, fallback, observed, message, reason, now, body["metadata"].get("generation"))
        _set_claims(plan.status, held)
        await self._write(body, status, plan.status)
        loop.pending_events.extend(plan.events)
        await self._act(loop, body, None, plan.actions, router)
        events, loop.pending_events = loop.pending_events, []
        await self._post(body, events)
        if plan.actions:
            return MIN_REQUEUE
        if plan.requeue_after is not None:
            return plan.requeue_after
        return None if plan.status == status else RESYNC_SECONDS  # a new event (an abort, a fix) wakes it

    async def _write(self, body, old: dict, new: dict) -> None:
        await self.notifier.record(old, new, body)  # release events' notifications, in this same write
        patch = merge_patch(old, new)
        if patch:
            meta = body["metadata"]
            log_writes.debug("%s/%s: status write by %s", meta["namespace"], meta["name"], self.settings.identity)
            await self.call(self.kube.patch_status, body, patch)
        self.notifier.offer(body, new)  # sent in the background, removed from status once delivered

    async def _post(self, body, events: list[core.Event]) -> None:
        for ev in events:
            log.info("%s/%s: %s: %s", body["metadata"]["namespace"], body["metadata"]["name"], ev.reason, ev.message)
            await self.call(self.kube.post_event, body, ev)

    async def _act(self, loop: Loop, body, spec, actions: Sequence[core.Action], router) -> None:
        """Writes to different objects go out together: the traffic moves (several Services switch
        at once), then the revision record beside the colour changes, which run in order."""
        moves = [a for a in actions if isinstance(a, TRAFFIC_ACTIONS)]
        await _together(*(self._one(loop, body, spec, a, router) for a in moves))
        records = [a for a in actions if isinstance(a, core.RecordRevision)]
        rest = [a for a in actions if not isinstance(a, (*TRAFFIC_ACTIONS, core.RecordRevision))]
        await _together(
            *(self._one(loop, body, spec, a, router) for a in records), self._in_order(loop, body, spec, rest, router)
        )

    async def _in_order(self, loop: Loop, body, spec, actions: Sequence[core.Action], router) -> None:
        for action in actions:
            await self._one(loop, body, spec, action, router)

    async def _one(self, loop: Loop, body, spec, action: core.Action, router) -> None:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        if isinstance(action, core.DeployColor):
            await self._deploy(loop, body, spec, action)
        elif isinstance(action, core.ScaleColor):
            await self.call(self.kube.scale, ns, name, action.color, action.replicas)
        elif isinstance(action, core.SelectColor):
            await self.call(self.kube.select_color, ns, action.service, action.color)
        elif isinstance(action, core.RecordRevision):
            await self.call(self.kube.record_revision, body, action, spec.revision_history_limit)
        elif isinstance(action, core.SetWeights) and router is not None:
            drifted = await self.call(router.set_weights, action.as_dict())
            if drifted:
                await self.call(
                    self.kube.post_event,
                    body,
                    core.Event(
                        "Warning",
                        "WeightsReapplied",
                        f"{router.kind} {router.name}: {router.last_drift}; Teal's weights re-applied",
                    ),
                )

    async def _restart(self, body, status: Mapping[str, Any]) -> None:
        """`kubectl teal restart`: when the Rollout's teal.dev/restart-at differs from the one on the
        stable colour's pod template, stamp it there (with a field manager of its own, so Teal's
        applies keep it) and the Deployment replaces its pods under its rolling-update limits: same
        revision, no release. Never during a release (the stable colour is what an abort falls back to)."""
        want = (body["metadata"].get("annotations") or {}).get(ANNOTATION_RESTART_AT)
        color = status.get("stableColor")
        if (
            not want
            or color not in COLORS
            or status.get("release")
            or status.get("currentRevision") != status.get("stableRevision")
        ):
            return
        ns, name = body["metadata"]["namespace"], deployment_name(body["metadata"]["name"], color)
        dep = await self.call(self.kube.client.get, DEPLOYMENTS, ns, name)
        tmeta = (((dep or {}).get("spec") or {}).get("template") or {}).get("metadata") or {}
        if dep is None or (tmeta.get("annotations") or {}).get(ANNOTATION_RESTART_AT) == want:
            return
        patch = {"spec": {"template": {"metadata": {"annotations": {ANNOTATION_RESTART_AT: want}}}}}
        await self.call(self.kube.client.merge_patch, DEPLOYMENTS, ns, name, patch, fieldManager="teal-restart")
        message = f"restart asked at {want}: the pods of {name} (stable, revision {status.get('stableRevision')}) are replaced"
        await self.call(self.kube.post_event, body, core.Event("Normal", "Restarted", message))

    async def _deploy(self, loop: Loop, body, spec, action: core.DeployColor) -> None:
        """Apply a colour's Deployment. A refusal (invalid, or forbidden by a quota, a policy
        or a webhook) is no error of the loop: the next decision gets it as an observation,
        says so in status and does not send the same Deployment again."""
        manifest = self.kube.deployment_manifest(body, spec, action)
        try:
            await self.call(self.kube.apply_deployment, manifest)
        except ApiError as e:
            if e.status not in REFUSALS:
                raise
            message = api_message(e)
            loop.rejection = core.Rejection(action.color, action.hash, action.replicas, e.status, message)
            metrics.DEPLOYMENTS_REJECTED.labels(loop.namespace, loop.name, str(e.status)).inc()
            log.warning(
                "%s/%s: the apiserver refused Deployment %s (%s): %s",
                loop.namespace,
                loop.name,
                manifest["metadata"]["name"],
                e.status,
                message,
            )

    async def _observe_router(self, body, routing, active_services, observed: core.Observed):
        from . import routers

        name = body["metadata"]["name"]
        kind = routing.kind
        if kind not in self.settings.routers:
            enabled = ", ".join(self.settings.routers) or "none"
            return None, dataclasses.replace(
                observed,
                router_unavailable=True,
                router_error=(
                    f"the {kind} traffic router is not enabled in this operator (enabled: {enabled}; "
                    f"teal run --routers, chart value rbac.trafficRouters.{kind})"
                ),
            )
        try:
            router = routers.make_router(
                self.kube.client,
                body["metadata"]["namespace"],
                name,
                owner_reference(body),
                routing,
                routers.ColorServices.for_rollout(name, active_services),
            )
            await self.call(router.prepare)
            weights = await self.call(router.get_weights)
            return router, dataclasses.replace(observed, weights=weights)
        except routers.RouterError as e:
            if e.transient:
                raise  # the loop retries with backoff; nothing is wrong with the spec
            return None, dataclasses.replace(
                observed, router_error=f"{e.reason}: {e}", router_unavailable=e.reason == "APINotFound"
            )

    async def _analysis(self, body, spec, status, observed, now) -> core.Observed:
        return await analysis_driver.run(
            self.kube.api_client, self.call, self.providers, self.settings.prometheus_address, body, spec, status, observed, now
        )


# ------------------------------------------------------------------ kopf wiring
#
# The handlers are registered on a registry of their own, built for one Controller: each
# handler closes over it, so there is no module-level controller and nothing is registered
# as a side effect of an import (a test builds a registry for its own Controller).

# A route edited by someone else (a user, a GitOps sync) gets Teal's weights back at once.
ROUTE_RESOURCES = {
    "gatewayAPI": ("gateway.networking.k8s.io", "v1", "httproutes"),
    "nginx": ("networking.k8s.io", "v1", "ingresses"),
    "istio": ("networking.istio.io", "v1", "virtualservices"),
}
ROUTE_PLURALS = {plural: kind for kind, (_, _, plural) in ROUTE_RESOURCES.items()}


def informers_for(client: Any, settings: Settings) -> Informers:
    """The informers an operator with `settings` reads from (see teal.informer)."""
    from .analysis.kube import TEMPLATE_RESOURCES

    routes = [Resource(*ROUTE_RESOURCES[kind]) for kind in settings.routers]
    return Informers(client, settings.namespaces, routes=routes, templates=TEMPLATE_RESOURCES.values())


def registry(ctl: Controller, reg: kopf.OperatorRegistry | None = None) -> kopf.OperatorRegistry:
    """A kopf registry with Teal's handlers for `ctl` (no login handler: the caller adds one,
    e.g. kopf.login_via_client). The routes of the routers in ctl.settings.routers are watched."""
    reg = reg if reg is not None else kopf.OperatorRegistry()
    _register_lifecycle(reg, ctl)
    if ctl.informers is not None:  # Teal's own list+watch informers wake the loops (teal.informer)
        _register_informers(reg, ctl)
    else:  # a Controller on a plain client (the fault tests' fake API): kopf's watches wake them
        _register_watches(reg, ctl)
        for kind in ctl.settings.routers:
            _register_route_watch(reg, ctl, kind)
    policy_kube.register(reg, ctl)
    return reg


def _register_informers(reg: kopf.OperatorRegistry, ctl: Controller) -> None:
    @kopf.on.startup(registry=reg)
    async def _start_informers(**_: Any) -> None:
        await ctl.start_informers()


def _register_lifecycle(reg: kopf.OperatorRegistry, ctl: Controller) -> None:
    @kopf.on.startup(registry=reg)
    async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.queueing.idle_timeout = 60  # kopf 1.45 hands each event over at once (no batch window)
        settings.execution.max_workers = 8
        settings.posting.level = logging.ERROR  # Teal posts its own, explained, Events
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 30
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="teal.dev", key="last-handled")
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="teal.dev")
        # With a fixed list of namespaces there is nothing to discover at run time, and the
        # namespaced RBAC grants no cluster-wide list of namespaces or CRDs.
        settings.scanning.disabled = bool(ctl.settings.namespaces)
        if ctl.settings.leases is not None:
            ctl.start_leases(ctl.settings.leases)

    @kopf.on.cleanup(registry=reg)
    async def _cleanup(**_: Any) -> None:
        await ctl.stop()

    @kopf.on.probe(id="rollouts", registry=reg)
    def _probe(**_: Any) -> int:
        return len(ctl.loops)


def _register_watches(reg: kopf.OperatorRegistry, ctl: Controller) -> None:
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=reg)
    async def _rollout_event(event: Any, name: str, namespace: str | None, **_: Any) -> None:
        namespace = namespace or ""
        if event.get("type") == "DELETED":
            ctl.forget(namespace, name)
            await policy_kube.report_selection(ctl)
            if isinstance(event.get("object"), dict) and (event["object"].get("metadata") or {}).get("uid"):
                await ctl.release_claims(event["object"])
        else:
            ctl.wake(namespace, name)

    @kopf.on.event("apps", "v1", "deployments", labels={LABEL_ROLLOUT: kopf.PRESENT}, registry=reg)
    async def _owned_deployment_event(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
        owner = labels.get(LABEL_ROLLOUT)
        loop = ctl.loops.get((namespace or "", owner)) if owner else None
        if loop is not None:
            loop.poke.set()

    @kopf.on.event("apps", "v1", "deployments", labels={LABEL_ROLLOUT: kopf.ABSENT}, registry=reg)
    async def _workload_event(name: str, namespace: str | None, **_: Any) -> None:
        ctl.wake_by_workload(namespace or "", name)

    # A Service that appears (it was missing) or whose selector someone edited: act at once.
    @kopf.on.event("", "v1", "services", registry=reg)
    async def _service_event(name: str, namespace: str | None, **_: Any) -> None:
        ctl.wake_by_service(namespace or "", name)


def _register_route_watch(reg: kopf.OperatorRegistry, ctl: Controller, kind: str) -> None:
    """Watch the routes of an enabled router only. The chart grants access to the enabled
    routers' kinds alone, and kopf fails on a watch it may not list; a kind whose CRD is absent
    is skipped by kopf (with a warning) and picked up when its CRD appears (cluster-wide;
    namespaced operators see it on their next start)."""
    group, version, plural = ROUTE_RESOURCES[kind]

    @kopf.on.event(group, version, plural, id=f"route-{kind}", registry=reg)
    async def _route_event(name: str, namespace: str | None, **_: Any) -> None:
        ctl.wake_by_route(namespace or "", kind, name)
