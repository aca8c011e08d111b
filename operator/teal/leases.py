"""Which replica acts for which namespace: leader election and namespace shards on
coordination.k8s.io Leases, with client-go's leaderelection semantics.

**Shards.** With `--shards N` a namespace belongs to shard `stable_hash(namespace) % N`
(SHA-256 of the name: the same in every process and release, unlike Python's salted
`hash()`). Shard i is held through the Lease `<lease-name>-<i>` in the operator's namespace
(`--lease-namespace`, else POD_NAMESPACE). One shard is plain leader election: the holder of
`<lease-name>-0` reconciles everything. Cluster-scoped objects (ClusterReleasePolicy status)
belong to shard 0.

**Timing** (client-go's three durations, `Timing`). A holder renews each of its Leases every
`retry_period` with a PUT guarded by the resourceVersion its last write returned. It acts for
a shard only while its last successful renew was *sent* less than `renew_deadline` ago:
`owns()` checks the deadline on every call, and a timer on the event loop stops the shard's
reconcile loops at that instant even if the renewing thread hangs. Another replica takes a
Lease over only when its record (resourceVersion) has not changed for `leaseDurationSeconds`
measured on its *own* monotonic clock from when it first saw that record (no clock skew
between nodes matters). Since renew_deadline < lease_duration, a holder that cannot renew
stops acting before anyone else may start. A dead holder's shard is taken over at most
lease_duration + 2 × retry_period after its last renew (8 + 2 = 10 s by default).

**Fair share.** With more than one shard each replica also keeps a membership Lease
(`<lease-name>-member-<hash of its identity>`, label teal.dev/lease-role=member). A replica
counts the live members M (its own included) and holds at most ceil(N / M) shards: it takes
free or expired shard Leases up to that share, preferring shards by rendezvous hashing of
(identity, shard) so replicas starting together want different ones, and hands back the
ones it prefers least when it holds more (a new replica joined). Handing back is graceful:
the replica stops acting for the shard at once (its loops are cancelled) and writes the Lease
free (empty holderIdentity) one retry period later, so a reconcile in flight has finished
before the next holder starts. Graceful shutdown hands back every Lease the same way and
deletes the membership Lease. Membership Leases of replicas dead for 5 × lease_duration are
deleted by whoever notices.

A write that was already sent when a shard is lost cannot be recalled (as in every Go
controller); everything after it is: the loop's task is cancelled before its next await.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import getpass
import hashlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from .client import JSON, LEASES, ApiError, Conflict

log = logging.getLogger("teal.leases")

LABEL_LEASE = "teal.dev/lease"  # the lease name (several operators may share a namespace)
LABEL_ROLE = "teal.dev/lease-role"  # shard | member
STALE_MEMBER_FACTOR = 5.0


def own_identity() -> str:
    """This replica's holder identity: POD_ID (the chart sets the pod's name), else user@host/pid."""
    return os.environ.get("POD_ID") or f"{getpass.getuser()}@{socket.gethostname()}/{os.getpid()}"


def stable_hash(text: str) -> int:
    """A hash of `text` that is the same in every process (64 bits of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def shard_of(namespace: str, shards: int) -> int:
    """The shard a namespace belongs to; '' (cluster-scoped objects) belongs to shard 0."""
    if shards <= 1 or not namespace:
        return 0
    return stable_hash(namespace) % shards


def fair_share(shards: int, members: int) -> int:
    """How many shards one of `members` live replicas may hold: ceil(shards / members)."""
    return math.ceil(shards / max(1, members))


def preference(identity: str, shard: int) -> int:
    """Rendezvous weight: replicas rank the shards differently, each the same way every time."""
    return stable_hash(f"{identity}\x00{shard}")


def member_lease_name(lease_name: str, identity: str) -> str:
    return f"{lease_name}-member-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


def micro_time(now: dt.datetime | None = None) -> str:
    """A metav1.MicroTime."""
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True)
class Timing:
    """client-go's LeaseDuration, RenewDeadline and RetryPeriod, in seconds."""

    lease_duration: float = 8.0
    renew_deadline: float = 5.0
    retry_period: float = 1.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError("lease timing needs lease_duration > renew_deadline > retry_period > 0")


@dataclasses.dataclass(frozen=True)
class Config:
    name: str  # Lease `<name>-<i>` for shard i
    namespace: str
    identity: str
    shards: int = 1
    timing: Timing = Timing()


class LeaseApi(Protocol):
    """What the gate needs of teal.client.Client (a fake in unit tests)."""

    def items(self, res: Any, namespace: str | None = None, **kwargs: Any) -> list[JSON]: ...
    def create(self, res: Any, namespace: str | None, body: Mapping[str, Any], **query: Any) -> JSON: ...
    def replace(self, res: Any, namespace: str | None, name: str, body: Mapping[str, Any], **query: Any) -> JSON: ...
    def delete(self, res: Any, namespace: str | None, name: str, *, uid: str | None = None) -> JSON | None: ...


@dataclasses.dataclass
class Seen:
    """A Lease record as this replica observed it: expiry runs from `since` (its own clock)."""

    body: JSON
    since: float

    @property
    def holder(self) -> str:
        return str((self.body.get("spec") or {}).get("holderIdentity") or "")

    @property
    def rv(self) -> str:
        return str(self.body["metadata"].get("resourceVersion") or "")

    def expired(self, now: float, default_duration: float) -> bool:
        duration = (self.body.get("spec") or {}).get("leaseDurationSeconds") or default_duration
        return not self.holder or now >= self.since + float(duration)


@dataclasses.dataclass
class Held:
    body: JSON  # the Lease as our last write returned it
    valid_until: float  # renew sent + renew_deadline: act only before this (monotonic)


def plan_shards(
    shards: int, identity: str, held: Iterable[int], acquirable: Iterable[int], members: int
) -> tuple[list[int], list[int]]:
    """Pure: (shards to take, shards to hand back) for a replica that holds `held`, may take
    `acquirable` (free, expired or still its own), and sees `members` live replicas."""
    held = set(held)
    share = fair_share(shards, members)
    if len(held) > share:
        extra = sorted(held, key=lambda s: preference(identity, s))[: len(held) - share]
        return [], extra
    wanted = sorted((s for s in set(acquirable) - held), key=lambda s: -preference(identity, s))
    return wanted[: share - len(held)], []


class AlwaysOwner:
    """The gate without leases (one operator, `teal run` on a workstation): owns everything."""

    shards = 1

    def shard_of(self, namespace: str) -> int:
        return 0

    def owns(self, namespace: str | None) -> bool:
        return True

    def held(self) -> set[int]:
        return {0}

    async def wait_owned(self, namespace: str) -> None:
        return None

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


Changed = Callable[[set[int], set[int]], None]  # (gained, lost), called on the event loop


class LeaseGate:
    """Holds shard Leases for this replica and tells the controller which namespaces it owns.

    `step()` is one synchronous round (list, renew, take, hand back) against the API; `start()`
    runs it every retry period in a thread of its own (a busy API pool never delays a renew)
    and announces gains and losses on the event loop through `on_change`."""

    def __init__(self, api: LeaseApi, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.config = config
        self.timing = config.timing
        self.shards = max(1, config.shards)
        self.clock = clock
        self.holding: dict[int, Held] = {}
        self.releasing: dict[int, JSON] = {}  # stopped acting; written free on the next step
        self.seen: dict[str, Seen] = {}
        self.member: JSON | None = None
        self.members = 1
        self.stopping = False
        self.on_change: Changed = lambda gained, lost: None
        self.announced: set[int] = set()
        self._owned_events: dict[int, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="teal-leases")

    # -- the interface of the controller
    def shard_of(self, namespace: str) -> int:
        return shard_of(namespace, self.shards)

    def lease_name(self, shard: int) -> str:
        return f"{self.config.name}-{shard}"

    def valid(self, shard: int) -> bool:
        held = self.holding.get(shard)
        return held is not None and not self.stopping and self.clock() < held.valid_until

    def owns(self, namespace: str | None) -> bool:
        """May this replica act for `namespace` now ('' or None: cluster-scoped objects)?"""
        shard = self.shard_of(namespace or "")
        return shard in self.announced and self.valid(shard)

    def held(self) -> set[int]:
        return {s for s in self.announced if self.valid(s)}

    async def wait_owned(self, namespace: str) -> None:
        """Return once this replica owns `namespace` (at once when it does)."""
        shard = self.shard_of(namespace)
        while not self.owns(namespace):
            if shard in self.announced:  # its deadline passed: the timer announces the loss in a moment
                await asyncio.sleep(0.01)
            else:  # announce() sets the event on a gain and clears it on a loss
                await self._owned_events.setdefault(shard, asyncio.Event()).wait()

    # -- one round against the API (synchronous: a thread, or a unit test with a fake clock)
    def step(self) -> None:
        now = self.clock()
        self._observe(now)
        self._drop_expired(now)
        self._hand_back()
        if self.shards > 1:
            self._keep_membership()
        for shard in list(self.holding):
            self._renew(shard)
        acquirable = [s for s in range(self.shards) if s not in self.releasing and self._acquirable(s, self.clock())]
        take, give = plan_shards(self.shards, self.config.identity, self.holding, acquirable, self.members)
        for shard in take:
            self._acquire(shard)
        for shard in give:  # stop acting now; the Lease is written free on the next step
            self.releasing[shard] = self.holding.pop(shard).body
            log.info(
                "shard %d: handing back (fair share %d of %d shards with %d replicas)",
                shard,
                fair_share(self.shards, self.members),
                self.shards,
                self.members,
            )

    def _observe(self, now: float) -> None:
        """List this operator's Leases; a record seen for the first time starts its expiry clock."""
        try:
            items = self.api.items(LEASES, self.config.namespace, label_selector=f"{LABEL_LEASE}={self.config.name}")
        except ApiError as e:
            log.warning("leases: cannot list Leases in %s: %s", self.config.namespace, e)
            return
        current: dict[str, Seen] = {}
        for body in items:
            name = body["metadata"]["name"]
            old = self.seen.get(name)
            rv = str(body["metadata"].get("resourceVersion") or "")
            current[name] = old if old is not None and old.rv == rv else Seen(body, now)
            current[name].body = body
        self.seen = current
        if self.shards > 1:
            self._count_members(now)

    def _count_members(self, now: float) -> None:
        me = member_lease_name(self.config.name, self.config.identity)
        live = 1
        for name, seen in list(self.seen.items()):
            labels = seen.body["metadata"].get("labels") or {}
            if labels.get(LABEL_ROLE) != "member" or name == me:
                continue
            if not seen.expired(now, self.timing.lease_duration):
                live += 1
            elif now >= seen.since + STALE_MEMBER_FACTOR * self.timing.lease_duration:
                self._delete_stale(name, seen)
        self.members = live

    def _delete_stale(self, name: str, seen: Seen) -> None:
        try:
            self.api.delete(LEASES, self.config.namespace, name, uid=seen.body["metadata"].get("uid"))
            log.info("leases: deleted the membership Lease %s of %s (dead)", name, seen.holder or "nobody")
        except ApiError as e:
            log.debug("leases: membership Lease %s not deleted: %s", name, e)

    def _drop_expired(self, now: float) -> None:
        """A shard whose renew deadline passed is not ours any more (the timer said so already)."""
        for shard, held in list(self.holding.items()):
            if now >= held.valid_until:
                self.holding.pop(shard)
                log.warning(
                    "shard %d: renew deadline passed (%.1fs without a renew); stopped acting", shard, self.timing.renew_deadline
                )

    def _acquirable(self, shard: int, now: float) -> bool:
        seen = self.seen.get(self.lease_name(shard))
        if seen is None:
            return True  # no Lease yet: create it
        return seen.holder == self.config.identity or seen.expired(now, self.timing.lease_duration)

    def _spec(self, body: Mapping[str, Any] | None, holder: str) -> JSON:
        old = dict((body or {}).get("spec") or {})
        stamp = micro_time()
        spec = dict(old, holderIdentity=holder, leaseDurationSeconds=math.ceil(self.timing.lease_duration), renewTime=stamp)
        if old.get("holderIdentity") != holder:
            spec["acquireTime"] = stamp
            spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0) + (1 if old.get("holderIdentity") else 0)
        return spec

    def _write(self, name: str, body: JSON | None, holder: str, role: str) -> JSON:
        """Create the Lease, or replace it guarded by the resourceVersion of `body`."""
        spec = self._spec(body, holder)
        if body is None:
            meta = {"name": name, "labels": {LABEL_LEASE: self.config.name, LABEL_ROLE: role}}
            new = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
            return self.api.create(LEASES, self.config.namespace, new)
        return self.api.replace(LEASES, self.config.namespace, name, dict(body, spec=spec))

    def _renew(self, shard: int) -> None:
        sent = self.clock()
        try:
            body = self._write(self.lease_name(shard), self.holding[shard].body, self.config.identity, "shard")
        except Conflict:
            self.holding.pop(shard, None)  # someone else wrote it: it is not ours any more
            log.warning("shard %d: lost (the Lease %s was written by someone else)", shard, self.lease_name(shard))
            return
        except ApiError as e:  # keep it until the renew deadline; the next step tries again
            log.warning("shard %d: renew failed (%s); acting until the renew deadline", shard, e)
            return
        self.holding[shard] = Held(body, sent + self.timing.renew_deadline)

    def _acquire(self, shard: int) -> None:
        name = self.lease_name(shard)
        seen = self.seen.get(name)
        sent = self.clock()
        try:
            body = self._write(name, seen.body if seen else None, self.config.identity, "shard")
        except ApiError as e:
            log.debug("shard %d: not taken (%s)", shard, e)  # another replica was faster
            return
        self.holding[shard] = Held(body, sent + self.timing.renew_deadline)
        previous = seen.holder if seen else ""
        if previous and previous != self.config.identity:
            log.info("shard %d: taking over the Lease %s from %s (expired)", shard, name, previous)

    def _hand_back(self) -> None:
        for shard, body in list(self.releasing.items()):
            self.releasing.pop(shard)
            try:
                self.api.replace(LEASES, self.config.namespace, self.lease_name(shard), dict(body, spec=self._free_spec(body)))
                log.info("shard %d: Lease %s handed back", shard, self.lease_name(shard))
            except ApiError as e:  # it expires for the others all the same
                log.info("shard %d: Lease %s not written free (%s); it expires", shard, self.lease_name(shard), e)

    def _free_spec(self, body: Mapping[str, Any]) -> JSON:
        spec = dict(body.get("spec") or {})
        spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=micro_time())
        return spec

    def _keep_membership(self) -> None:
        name = member_lease_name(self.config.name, self.config.identity)
        seen = self.seen.get(name)
        body = self.member if self.member is not None else (seen.body if seen else None)
        try:
            self.member = self._write(name, body, self.config.identity, "member")
        except ApiError as e:
            self.member = None  # read it again from the next listing
            log.warning("leases: membership Lease %s not renewed: %s", name, e)

    # -- running it
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="teal:leases")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        log.info(
            "leases: %s competes for %d shard(s) as Leases %s-0..%d in %s (lease %.0fs, renew deadline %.0fs, retry %.1fs)",
            self.config.identity,
            self.shards,
            self.config.name,
            self.shards - 1,
            self.config.namespace,
            self.timing.lease_duration,
            self.timing.renew_deadline,
            self.timing.retry_period,
        )
        while True:
            started = self.clock()
            try:
                await loop.run_in_executor(self._pool, self.step)
            except Exception:
                log.exception("leases: step failed")
            self.announce()
            await asyncio.sleep(max(0.0, self.timing.retry_period - (self.clock() - started)))

    def announce(self) -> None:
        """On the event loop: tell the controller what changed, and arm the deadline timer."""
        now_held = {s for s in list(self.holding) if self.valid(s)}  # list(): the step's thread may change it
        gained, lost = now_held - self.announced, self.announced - now_held
        self.announced = now_held
        for shard in sorted(lost):
            log.warning("shard %d: lost; its namespaces stop here (held: %s)", shard, sorted(now_held) or "none")
        for shard in sorted(gained):
            log.info(
                "shard %d: acquired by %s; reconciling its namespaces (held: %s)", shard, self.config.identity, sorted(now_held)
            )
        for shard in gained | lost:
            event = self._owned_events.setdefault(shard, asyncio.Event())
            event.set() if shard in now_held else event.clear()
        if gained or lost:
            try:
                self.on_change(gained, lost)
            except Exception:  # the Leases go on (and the deadline timer below is armed all the same)
                log.exception("leases: the controller failed to take a change of shards")
        if self._timer is not None:
            self._timer.cancel()
        deadlines = [h.valid_until for h in (self.holding.get(s) for s in now_held) if h is not None]
        if deadlines:
            delay = max(0.0, min(deadlines) - self.clock())
            self._timer = asyncio.get_running_loop().call_later(delay + 0.001, self.announce)

    async def stop(self) -> None:
        """Stop acting, then hand every Lease back and leave (graceful shutdown)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.stopping = True  # nothing is valid any more; _leave hands it all back
        self.announce()
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._pool, self._leave), timeout=self.timing.renew_deadline)
        except Exception as e:
            log.warning("leases: not all Leases handed back on shutdown (they expire): %s", e)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _leave(self) -> None:
        """In the leases' thread, after any step in flight: hand back all, then leave."""
        self.releasing.update({s: h.body for s, h in self.holding.items()})
        self.holding.clear()
        self._hand_back()
        if self.member is not None:
            try:
                self.api.delete(
                    LEASES, self.config.namespace, self.member["metadata"]["name"], uid=self.member["metadata"].get("uid")
                )
            except ApiError as e:
                log.info("leases: membership Lease not deleted (it expires): %s", e)
