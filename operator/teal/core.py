"""Teal's decision core: a pure function of (spec, previous status, observed world, now).

`decide()` returns the new status, the actions that converge the cluster towards it, the
Events to post, and when to look again. It does no I/O, keeps no memory between calls, and
everything it needs to survive a restart lives in the status it returns.

The safety rules it guarantees (property-tested in tests/test_core_properties.py):
- a Service or route is only pointed at a colour that has ready pods (or when the
  Rollout runs zero replicas, so nothing can be served either way);
- an abort ends with every active Service and 100% of the weight on the stable colour;
- a release always ends Healthy, Aborted or Degraded, or says what it waits for.

The status is typed (teal.status): parsed once from the status dict, dumped back in the same
format. A release runs through an explicit stage machine (teal.status.Stage), one handler
per stage; a handler returns the next stage, None (done for this decision), or an `AbortIntent`
that `_run_release` records and applies in one place (`_apply_abort`).

Status layout (all of it is in the CRD schema):
  activeColor/stableColor/stableHash/stableRevision  what serves traffic and what is proven
  currentRevision/currentHash                         what spec asks for
  release{...}                                        the release in progress, or absent
  abort{revision,reason,message,at}                   an abort of `revision` (user or Teal)
  promote{revision,step,full}                         a promote request (written by the CLI)
  scaleDown{color,at}                                 the idle colour's pending scale-down
  rejected{color,hash,replicas,code,message,...}      the apiserver's refusal of a colour's Deployment
  stats{...}                                          release statistics (stats.outcomes: totals per outcome)
  history[...]                                        finished releases, newest first, bounded (HISTORY_LIMIT)
  analysisRun{...}, analysis[...]                     the running analysis (teal.analysis) and its measurements
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .api import BLUE, COLORS, RolloutSpec, TrafficRouting, other, parse_traffic_routing
from .policy import Gate, hold
from .status import (
    PHASES,
    Abort,
    AnalysisState,
    HistoryEntry,
    Phase,
    Rejected,
    Release,
    RunKey,
    ScaleDown,
    Stage,
    Status,
    iso,
    parse_time,
)
from .status import Outcome as ReleaseOutcome

__all__ = ["PHASES", "Phase", "Stage", "Status", "decide", "cannot_decide", "iso", "parse_time"]

# ---------------------------------------------------------------- observed world


@dataclasses.dataclass(frozen=True)
class ColorObs:
    """One colour's Deployment as read from the cluster."""

    exists: bool = False
    hash: str | None = None  # teal.dev/template-hash annotation
    replicas: int = 0  # spec.replicas
    ready: int = 0  # ready pods of any ReplicaSet (what a Service would route to)
    updated_available: int = 0  # available pods of the newest template only
    synced: bool = True  # the Deployment controller has seen the latest spec
    failure: str | None = None  # message of its ReplicaFailure condition: pods cannot be created

    def refused_pods(self, want_hash: str | None) -> str | None:
        """The admission's refusal of this template's pods (a quota, a policy, a webhook),
        or None. Other pod-creation failures (timeouts, conflicts) are left to retry."""
        if self.exists and self.hash == want_hash and self.synced and self.failure and _PERMANENT_FAILURE.search(self.failure):
            return self.failure
        return None

    def available(self, want_hash: str | None, n: int) -> bool:
        return self.exists and self.hash == want_hash and self.synced and self.replicas == n and self.updated_available >= n


@dataclasses.dataclass(frozen=True)
class ServiceObs:
    exists: bool = True
    color: str | None = None  # the teal.dev/color value of its selector


@dataclasses.dataclass(frozen=True)
class AnalysisRun:
    """The state of one analysis run, as computed by teal.analysis for this tick."""

    key: str  # str(RunKey): the run of release.analysisKey this verdict is for
    verdict: str  # Running | Successful | Failed | Inconclusive
    message: str = ""
    next_at: dt.datetime | None = None
    error: str | None = None  # a configuration error (bad query, unknown template, ...)
    # what teal.analysis measured this tick: the run's state (status.analysisRun) and the
    # measurement history (status.analysis); None when nothing was measured
    state: Mapping[str, Any] | None = None
    history: Sequence[Mapping[str, Any]] | None = None


_PERMANENT_FAILURE = re.compile(r"is forbidden:|is invalid:|denied the request")


@dataclasses.dataclass(frozen=True)
class Rejection:
    """The apiserver refused a DeployColor (400/422 invalid, 403 forbidden by a quota,
    a policy or a webhook): reported by the adapter, recorded in status.rejected."""

    color: str
    hash: str
    replicas: int
    code: int
    message: str


@dataclasses.dataclass(frozen=True)
class Observed:
    template: Mapping[str, Any] | None
    template_hash: str | None
    colors: Mapping[str, ColorObs]
    services: Mapping[str, ServiceObs]
    weights: Mapping[str, int] | None = None  # read back from the router; None: no router
    router_error: str | None = None
    router_unavailable: bool = False  # router_error says the router is disabled or its API is not served
    template_error: str | None = None  # e.g. the workloadRef Deployment is missing
    analysis: AnalysisRun | None = None
    rejected: Rejection | None = None  # the last DeployColor, refused (fresh from the adapter)
    # the stable revision's template from the revision history, read when the spec's template is
    # another one and the stable colour's Deployment is missing (so it can be made again)
    stable_template: Mapping[str, Any] | None = None
    # objects this Rollout names that another, existing Rollout has claimed: "Service/x" -> owner
    claimed: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # release windows and freezes that apply to this Rollout (teal.policy), evaluated here at `now`
    gates: tuple[Gate, ...] = ()


# ---------------------------------------------------------------- actions


@dataclasses.dataclass(frozen=True)
class DeployColor:
    """Create or update `<name>-<color>` with this template and replica count."""

    color: str
    template: Mapping[str, Any]
    hash: str
    revision: str
    replicas: int


@dataclasses.dataclass(frozen=True)
class ScaleColor:
    color: str
    replicas: int


@dataclasses.dataclass(frozen=True)
class SelectColor:
    """Point a Service's selector at a colour (an atomic switch of one object)."""

    service: str
    color: str


@dataclasses.dataclass(frozen=True)
class SetWeights:
    weights: tuple[tuple[str, int], ...]  # ((color, weight), ...) summing to 100

    def as_dict(self) -> dict[str, int]:
        return dict(self.weights)


@dataclasses.dataclass(frozen=True)
class RecordRevision:
    """Keep the template of a revision (a ControllerRevision) for `kubectl teal undo`."""

    revision: str
    hash: str
    template: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


Action = DeployColor | ScaleColor | SelectColor | SetWeights | RecordRevision


@dataclasses.dataclass
class Plan:
    status: dict[str, Any]  # the new status, in the persisted format (Status.dump())
    actions: list[Action]
    events: list[Event]
    requeue_after: float | None  # seconds until the next timer is due

    @property
    def analysis_key(self) -> str | None:
        key = (self.status.get("release") or {}).get("analysisKey")
        return str(key) if key else None


@dataclasses.dataclass(frozen=True)
class AbortIntent:
    """A stage handler's decision to abort the release (recorded and applied by _run_release)."""

    reason: str
    message: str


# A stage handler's outcome: the next stage (in this same decision), None (wait: done for this
# decision), or an abort.
Outcome = Stage | AbortIntent | None

# A refused Deployment is not sent again until the template changes; a 403 (a quota or a
# policy that may be lifted) is tried again after 30 s, 60 s, ... at most every 5 min.
REJECTED_RETRY_FIRST = 30.0
REJECTED_RETRY_MAX = 300.0


def _required(value: str | None, name: str) -> str:
    if value is None:
        raise KeyError(name)
    return value


class _Tick:
    """The working state of one decide() call."""

    def __init__(self, spec: RolloutSpec | None, status: Mapping[str, Any] | Status, obs: Observed, now: dt.datetime):
        self._spec = spec
        self.old = status if isinstance(status, Status) else Status.read(status)  # read-only
        self.st: Status = self.old.copy()
        self.obs = obs
        self.now = now
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.wakeups: list[dt.datetime] = []

    @property
    def spec(self) -> RolloutSpec:
        if self._spec is None:
            raise ValueError("no spec")
        return self._spec

    @property
    def stable(self) -> str:
        return _required(self.st.stable_color, "stableColor")

    @property
    def template(self) -> Mapping[str, Any]:
        if self.obs.template is None:
            raise ValueError("no template")
        return self.obs.template

    # -- small utilities
    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    def wake_at(self, t: dt.datetime | None) -> None:
        if t is not None:
            self.wakeups.append(t)

    def set_phase(self, phase: Phase, message: str, reason: str) -> None:
        self.st.phase = phase
        self.st.message = message
        self.st.reason = reason

    def color(self, c: str | None) -> ColorObs:
        return (self.obs.colors.get(c) if c is not None else None) or ColorObs()

    def servable(self, c: str) -> bool:
        """May traffic go to colour c? Only if it has ready pods (or nothing runs at all)."""
        return self.color(c).ready > 0 or self.spec.replicas == 0

    def stats(self, key: str, at: bool = True) -> None:
        stats = self.st.stats if self.st.stats is not None else {}
        stats[key] = int(stats.get(key, 0)) + 1
        if at:
            stats[f"last{key[0].upper()}{key[1:]}At"] = iso(self.now)
        self.st.stats = stats

    def abort_for(self, revision: str | None) -> Abort | None:
        abort = self.st.abort
        if abort and revision is not None and str(abort.revision) == str(revision):
            return abort
        return None

    def promote_for(self, revision: str, step: int | None) -> bool:
        p = self.st.promote
        if p is None or str(p.revision) != str(revision):
            return False
        if p.full:
            return True
        return step is None or p.step is None or p.step == step

    def full_promote(self, revision: str) -> bool:
        p = self.st.promote
        return p is not None and str(p.revision) == str(revision) and p.full

    def plan(self) -> Plan:
        requeue = max(0.0, (min(self.wakeups) - self.now).total_seconds()) if self.wakeups else None
        return Plan(
            status=self.st.dump(), actions=_unclaimed(self, _dedupe(self.actions)), events=self.events, requeue_after=requeue
        )


# ---------------------------------------------------------------- the decision


def decide(
    spec: RolloutSpec, status: Mapping[str, Any] | Status, obs: Observed, now: dt.datetime, generation: int | None = None
) -> Plan:
    t = _Tick(spec, status, obs, now)
    if generation is not None:
        t.st.observed_generation = generation
    _note_rejection(t)
    _decide(t)
    _enforce_traffic(t)
    _restore_observed(t)
    _honest_phase(t)
    _guard_stable(t)
    _scale_down_idle(t)
    _observed_fields(t)
    _conditions(t)
    _analysis_state(t)
    return t.plan()


def _unclaimed(t: _Tick, actions: list[Action]) -> list[Action]:
    """Never write an object another Rollout has claimed (a second line behind ServiceClaimed)."""
    if not t.obs.claimed:
        return actions
    route_claimed = any(not k.startswith("Service/") for k in t.obs.claimed)
    return [
        a
        for a in actions
        if not (
            (isinstance(a, SelectColor) and f"Service/{a.service}" in t.obs.claimed)
            or (isinstance(a, SetWeights) and route_claimed)
        )
    ]


@dataclasses.dataclass(frozen=True)
class Fallback:
    """What an unprocessable spec still says about traffic (read leniently from the raw spec)."""

    active_services: tuple[str, ...] = ()
    preview_service: str | None = None
    progress_deadline_seconds: int = 600
    abort_scale_down_delay_seconds: int = 30
    traffic_routing: TrafficRouting | None = None  # when it still parses: an abort moves the weights back too

    @classmethod
    def from_spec(cls, spec: Any) -> Fallback:
        """Whatever of these a raw spec states readably; defaults for the rest. Never raises."""
        bg: Any = ((spec or {}).get("strategy") or {}).get("blueGreen") if isinstance(spec, Mapping) else None
        bg = bg if isinstance(bg, Mapping) else {}

        def seconds(key: str, default: int) -> int:
            v = bg.get(key)
            return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 else default

        active, preview, raw = bg.get("activeServices"), bg.get("previewService"), bg.get("trafficRouting")
        try:
            routing = parse_traffic_routing(raw) if isinstance(raw, Mapping) else None
        except Exception:  # unreadable: Services are still moved, the route is left as it is
            routing = None
        return cls(
            traffic_routing=routing,
            active_services=tuple(s for s in active if isinstance(s, str) and s) if isinstance(active, list) else (),
            preview_service=preview if isinstance(preview, str) and preview else None,
            progress_deadline_seconds=seconds("progressDeadlineSeconds", 600),
            abort_scale_down_delay_seconds=seconds("abortScaleDownDelaySeconds", 30),
        )


def cannot_decide(
    status: Mapping[str, Any] | Status,
    fallback: Fallback,
    obs: Observed,
    message: str,
    reason: str,
    now: dt.datetime,
    generation: int | None = None,
) -> Plan:
    """The plan when the spec cannot be processed (InvalidSpec) or deciding failed (ReconcileError):
    Degraded naming the error, and an abort -- a user's, a passed progress deadline, or one Teal
    recorded before -- still acted on: every Service back on the stable colour (when it has
    ready pods) and the aborted colour scaled down later. Nothing else is touched."""
    t = _Tick(None, status, obs, now)
    st = t.st
    if generation is not None:
        st.observed_generation = generation
    release, stable = st.release, st.stable_color
    text = message
    if release and stable:
        if not release.aborted_at:
            _deadline_without_spec(t, release, fallback)
        abort = t.abort_for(release.revision)
        if abort or release.aborted_at:
            text += _abort_without_spec(t, release, stable, abort, fallback)
    st.preview_color = release.color if release and not release.aborted_at else None
    t.set_phase(Phase.DEGRADED, text, reason)
    _scale_down_idle(t)
    _conditions(t)
    return t.plan()


def _deadline_without_spec(t: _Tick, release: Release, fallback: Fallback) -> None:
    since = release.progress_at or t.now
    deadline = since + dt.timedelta(seconds=fallback.progress_deadline_seconds)
    if t.abort_for(release.revision) is None and t.now >= deadline:
        _record_abort(
            t,
            release,
            AbortIntent(
                "ProgressDeadlineExceeded",
                f"no progress for {fallback.progress_deadline_seconds}s while the spec could not be processed",
            ),
        )
    elif t.now < deadline:
        t.wake_at(deadline)


def _abort_without_spec(t: _Tick, release: Release, stable: str, abort: Abort | None, fallback: Fallback) -> str:
    """Act on an abort without a spec: the Services (and a route that still parses) back on the
    stable colour, the release's colour scaled down after abortScaleDownDelaySeconds."""
    st = t.st
    if not release.aborted_at:
        _record_abort_history(t, release, abort or Abort(reason="Aborted", message="aborted", at=t.now))
        release.aborted_at = t.now
        st.scale_down = ScaleDown(color=release.color, at=t.now + dt.timedelta(seconds=fallback.abort_scale_down_delay_seconds))
        t.stats("aborted")
        why = abort.reason if abort and abort.reason is not None else "Aborted"
        t.event(
            "Aborted",
            f"revision {release.revision} aborted ({why}) although the spec cannot be processed; all traffic on {stable}",
            warning=True,
        )
    st.active_color = stable
    text = f"; revision {release.revision} aborted, revision {st.stable_revision} on {stable}"
    if t.color(stable).ready <= 0:
        return text + " (which has no ready pods: Services left where they are)"
    names = fallback.active_services + ((fallback.preview_service,) if fallback.preview_service else ())
    for name in names:
        svc = t.obs.services.get(name)
        if svc is not None and svc.exists and svc.color != stable:
            t.actions.append(SelectColor(name, stable))
    if fallback.traffic_routing is not None and t.obs.weights and t.obs.weights.get(stable) != 100:
        t.actions.append(SetWeights(tuple((c, 100 if c == stable else 0) for c in COLORS)))
    return text


def _dedupe(actions: list[Action]) -> list[Action]:
    """Keep the last action per target, in first-seen order (later decisions win)."""
    out: dict[tuple[str, ...], Action] = {}
    for a in actions:
        key: tuple[str, ...]
        if isinstance(a, DeployColor | ScaleColor):
            key = ("deploy", a.color)
            prev = out.get(key)
            if isinstance(prev, DeployColor) and isinstance(a, ScaleColor):
                a = dataclasses.replace(prev, replicas=a.replicas)
        elif isinstance(a, SelectColor):
            key = ("select", a.service)
        elif isinstance(a, RecordRevision):
            key = ("revision", a.revision)
        else:
            key = ("weights",)
        out.pop(key, None)
        out[key] = a
    return list(out.values())


def _blocked(t: _Tick) -> bool:
    """Problems the operator cannot act around: say so, touch nothing (True: stop here)."""
    spec, obs = t.spec, t.obs
    if obs.claimed:
        owners = "; ".join(
            f"{obj.replace('/', ' ', 1)} is claimed by Rollout {owner}" for obj, owner in sorted(obs.claimed.items())
        )
        t.set_phase(Phase.DEGRADED, f"{owners} (annotation teal.dev/claimed-by); nothing was written to it", "ServiceClaimed")
        return True
    missing = [s for s in _service_names(spec) if not (obs.services.get(s) or ServiceObs(False)).exists]
    if missing:
        names = ", ".join(missing)
        t.set_phase(Phase.DEGRADED, f"Service {names} not found in the namespace; nothing was changed", "ServiceNotFound")
        return True
    if obs.template_error or obs.template is None or obs.template_hash is None:
        t.set_phase(Phase.DEGRADED, obs.template_error or "no pod template to run", "TemplateNotFound")
        return True
    if obs.router_error:
        reason = "RouterUnavailable" if obs.router_unavailable else "TrafficRouterError"
        t.set_phase(Phase.DEGRADED, obs.router_error, reason)
        # still keep traffic where it is and let a running abort finish below
        return not t.st.stable_hash
    return False


def _decide(t: _Tick) -> None:
    st = t.st
    if _blocked(t):
        return
    want = _required(t.obs.template_hash, "template hash")
    st.current_hash = want
    # No stable release yet: adopt what runs, or make the first release.
    if not st.stable_hash:
        if not _adopt(t, want):
            _first_release(t, want)
        return
    release = st.release
    # Spec asks for what is already stable: cancel whatever release runs.
    if want == st.stable_hash:
        _back_to_stable(t, release)
        return
    # A new template (or the first sight of this one): start or supersede a release.
    if not release or release.hash != want:
        if _held_start(t, release, want):
            _ensure_stable(t)
            return
        release = _start_release(t, release, want)
    _ensure_stable(t)
    _run_release(t, release)


def _back_to_stable(t: _Tick, release: Release | None) -> None:
    st = t.st
    st.current_revision = st.stable_revision
    if release:
        _cancel_release(t, release, f"the template is back to stable revision {st.stable_revision}")
    st.abort = None
    refused = _ensure_stable(t)
    if refused is not None:  # its Deployment is gone (deleted by hand) and cannot be made again
        t.set_phase(Phase.DEGRADED, f"stable revision {st.stable_revision}: {_refused_text(refused)}", "DeploymentRejected")
        return
    t.set_phase(Phase.HEALTHY, f"revision {st.stable_revision} is live on {t.stable}", "Healthy")


def _service_names(spec: RolloutSpec) -> list[str]:
    names = list(spec.blue_green.active_services)
    if spec.blue_green.preview_service:
        names.append(spec.blue_green.preview_service)
    return names


# ---------------------------------------------------------------- the first release


def _adopt(t: _Tick, want: str) -> bool:
    """Adoption after a lost status: every active Service already selects a colour whose
    Deployment runs the wanted template. Never during a first release that status records:
    its move comes before the status that completes it (the first release completes it)."""
    st = t.st
    if st.first_release_started_at is not None:
        return False
    colors = {(t.obs.services.get(s) or ServiceObs()).color for s in t.spec.blue_green.active_services}
    if len(colors) != 1:
        return False
    (c,) = colors
    if c is None or c not in COLORS or not (t.color(c).exists and t.color(c).hash == want):
        return False
    rev = st.current_revision or "1"
    st.stable_color, st.active_color, st.stable_hash, st.stable_revision = c, c, want, rev
    st.current_revision = rev
    st.revision = int(rev)
    t.set_phase(Phase.HEALTHY, f"adopted {c} running revision {rev}", "Adopted")
    return True


def _first_release(t: _Tick, want: str) -> None:
    spec, st = t.spec, t.st
    color = st.first_color or BLUE
    st.first_color = color
    if st.current_hash != want or not st.current_revision:
        st.revision = int(st.revision or 0) + (0 if st.current_revision else 1)
        st.current_revision = str(st.revision)
    rev = _required(st.current_revision, "currentRevision")
    if not st.first_release_started_at or st.first_release_hash != want:
        st.first_release_started_at = t.now
        st.first_release_hash = want
        t.actions.append(RecordRevision(rev, want, t.template))
        t.event("FirstRelease", f"first release: revision {rev} on {color}")
    obs = t.color(color)
    if not (obs.exists and obs.hash == want and obs.replicas == spec.replicas):
        deploy = DeployColor(color, t.template, want, rev, spec.replicas)
        refused = _refusal(t, deploy)
        if refused is None or _retry_due(t, refused):
            t.actions.append(deploy)
        if refused is not None:
            t.set_phase(Phase.DEGRADED, f"first release: {_refused_text(refused)}", "DeploymentRejected")
            return
    if t.color(color).available(want, spec.replicas) and (spec.replicas == 0 or t.color(color).ready > 0):
        _first_release_done(t, color, want, rev)
        return
    _first_release_waits(t, color, want)


def _first_release_done(t: _Tick, color: str, want: str, rev: str) -> None:
    st = t.st
    st.stable_color, st.active_color, st.stable_hash, st.stable_revision = color, color, want, rev
    started = st.first_release_started_at
    st.first_color = st.first_release_started_at = st.first_release_hash = None
    t.stats("releases")
    t.stats("promoted")
    if started and st.stats is not None:
        st.stats["lastReleaseSeconds"] = round((t.now - started).total_seconds(), 3)
    first = Release(revision=rev, hash=want, color=color, started_at=started, switched_at=t.now)
    _release_facts(t, first)
    _record_history(t, first, ReleaseOutcome.PROMOTED, "FirstRelease", f"revision {rev} is live on {color}")
    t.event("Promoted", f"revision {rev} is live on {color}")
    t.set_phase(Phase.HEALTHY, f"revision {rev} is live on {color}", "Healthy")


def _first_release_waits(t: _Tick, color: str, want: str) -> None:
    spec, c = t.spec, t.color(color)
    started = t.st.first_release_started_at or t.now
    deadline = started + dt.timedelta(seconds=spec.blue_green.progress_deadline_seconds)
    detail = f"{c.updated_available}/{spec.replicas} available"
    if c.refused_pods(want):
        t.set_phase(Phase.DEGRADED, f"first release: {color} cannot create pods: {c.failure}", "DeploymentRejected")
        return
    if c.failure and c.hash == want:
        detail += f"; pods cannot be created: {c.failure}"
    if t.now >= deadline:
        t.set_phase(
            Phase.DEGRADED,
            f"first release: {color} not available after {spec.blue_green.progress_deadline_seconds}s ({detail})",
            "ProgressDeadlineExceeded",
        )
        return
    t.wake_at(deadline)
    t.set_phase(Phase.PROGRESSING, f"first release: waiting for {color} to become available ({detail})", "Deploying")


def _ensure_stable(t: _Tick) -> Rejected | None:
    """Keep the stable colour at full size (an HPA may change spec.replicas); the standing
    refusal of its Deployment, if it is missing and the apiserver refuses to make it again."""
    st, spec = t.st, t.spec
    c = t.stable
    obs = t.color(c)
    refused = None
    template = t.obs.template if t.obs.template_hash == st.stable_hash else t.obs.stable_template
    if not obs.exists and template is not None:
        deploy = DeployColor(
            c, template, _required(st.stable_hash, "stableHash"), _required(st.stable_revision, "stableRevision"), spec.replicas
        )
        refused = _refusal(t, deploy)
        if refused is None or _retry_due(t, refused):
            t.actions.append(deploy)
            t.event(
                "StableRestored",
                f"the Deployment of the stable colour {c} was missing: made again from revision {st.stable_revision}",
                warning=True,
            )
    elif obs.exists and obs.replicas != spec.replicas:
        t.actions.append(ScaleColor(c, spec.replicas))
    if st.scale_down and st.scale_down.color == c:
        st.scale_down = None
    return refused


# ---------------------------------------------------------------- starting and ending a release


def _release_at_start(t: _Tick, color: str) -> Release:
    """The current revision's release on `color`, at its very start (new, or retried)."""
    return Release(
        revision=_required(t.st.current_revision, "currentRevision"),
        hash=_required(t.st.current_hash, "currentHash"),
        color=color,
        started_at=t.now,
        progress_at=t.now,
        step=0,
    )


def _new_release(t: _Tick, color: str) -> Release:
    st = t.st
    st.revision = int(st.revision or st.stable_revision or 0) + 1
    st.current_revision = str(st.revision)
    return _release_at_start(t, color)


def _start_release(t: _Tick, old: Release | None, want: str) -> Release:
    st, spec = t.st, t.spec
    if old:
        _hold_ended(t, old)  # a release superseded while held was held until now
    if old and old.switched_at and not old.aborted_at:
        # The superseded release already serves all traffic: it becomes stable now.
        _complete_release(t, old, superseded=True)
    elif old:
        t.event("Superseded", f"revision {old.revision} superseded by a new template", warning=False)
        if old.aborted_at is None:
            t.stats("superseded", at=False)
            why = f"revision {old.revision} superseded by a new template before it was promoted"
            _record_history(t, old, ReleaseOutcome.SUPERSEDED, "Superseded", why)
    st.abort = None
    st.promote = None
    color = other(t.stable)
    release = _new_release(t, color)
    _release_facts(t, release)
    t.actions.append(RecordRevision(release.revision, want, t.template))
    t.stats("releases")
    idle = t.color(color)
    if idle.available(want, spec.replicas) and idle.ready > 0:
        # Fast rollback: the warm idle colour already runs this template.
        release.fast_rollback = release.promoted = release.pre_promotion_done = True
        release.step = len(spec.blue_green.steps)
        t.stats("rollbacks")
        t.event("FastRollback", f"{color} still runs this template: switching back at once (revision {release.revision})")
    else:
        t.event("ReleaseStarted", f"revision {release.revision} starts on {color}")
    st.release = release
    return release


def _held(t: _Tick, message: str, opens_at: dt.datetime | None) -> None:
    """Held by a release window or a freeze: still Progressing (kstatus Reconciling, never
    Stalled), woken when it opens, one Event per hold (not one per tick: the 'in 14h' changes)."""
    t.wake_at(opens_at)
    t.set_phase(Phase.PROGRESSING, message, "HeldByPolicy")
    if t.old.reason != "HeldByPolicy":
        t.event("HeldByPolicy", message)


def _held_start(t: _Tick, release: Release | None, want: str) -> bool:
    """Does a HoldBeforeStart policy or a freeze keep this new template from starting? Never a
    fast rollback (the warm idle colour already runs it), never while a release runs (it is
    superseded as before, and held at its next gate)."""
    if not t.obs.gates or (release and not release.aborted_at):
        return False
    idle = t.color(other(t.stable))
    if idle.available(want, t.spec.replicas) and idle.ready > 0:
        return False
    h = hold(t.obs.gates, t.now, before_start=True)
    if h is None:
        return False
    _held(t, f"the new template waits: {h.message}", h.opens_at)
    return True


def _cancel_release(t: _Tick, release: Release, why: str) -> None:
    _hold_ended(t, release)  # a release cancelled while held was held until now
    st = t.st
    st.active_color = t.stable
    st.scale_down = ScaleDown(
        color=release.color, at=t.now + dt.timedelta(seconds=t.spec.blue_green.abort_scale_down_delay_seconds)
    )
    st.release = None
    st.promote = None
    if not release.aborted_at:
        outcome = ReleaseOutcome.REVERTED if _reached_users(release) else ReleaseOutcome.ABORTED
        _record_history(t, release, outcome, "BackToStable", f"revision {release.revision} cancelled: {why}", t.now)
    if release.switched_at and not release.aborted_at:
        t.stats("rollbacks")
        t.event("RolledBack", f"traffic back on {t.stable}: {why}", warning=True)
    else:
        t.event("ReleaseCancelled", f"revision {release.revision} cancelled: {why}")


def _complete_release(t: _Tick, release: Release, superseded: bool = False) -> None:
    st, bg = t.st, t.spec.blue_green
    old_stable = t.stable
    st.stable_color = st.active_color = release.color
    st.stable_hash, st.stable_revision = release.hash, release.revision
    switched = release.switched_at or t.now
    st.scale_down = ScaleDown(color=old_stable, at=max(switched + dt.timedelta(seconds=bg.scale_down_delay_seconds), t.now))
    st.release = st.promote = st.abort = None
    t.stats("promoted")
    if release.started_at and st.stats is not None:
        held = release.held_seconds or 0  # a hold is not release time (teal_release_held_seconds_total)
        st.stats["lastReleaseSeconds"] = round((t.now - release.started_at).total_seconds() - held, 3)
    how = " (superseded by a newer template while being verified)" if superseded else ""
    t.event("Promoted", f"revision {release.revision} is live on {release.color}{how}")
    _record_completion(t, release, how)


# ---------------------------------------------------------------- aborts (recorded once, applied in one place)


def _record_abort(t: _Tick, release: Release, intent: AbortIntent) -> Abort:
    """Teal's own abort: recorded in status exactly like a user's."""
    t.st.abort = Abort(revision=release.revision, reason=intent.reason, message=intent.message, at=t.now)
    return t.st.abort


def _apply_abort(t: _Tick, release: Release, abort: Abort) -> None:
    """All traffic back on the stable colour; the release starts over as an aborted one (a
    retry starts it afresh), its colour scaled down after abortScaleDownDelaySeconds."""
    st, bg, stable = t.st, t.spec.blue_green, t.stable
    st.active_color = stable
    if not release.aborted_at:
        _hold_ended(t, release)  # an abort is never held; the hold it ends still counts
        _record_abort_history(t, release, abort)
        at = abort.at or t.now
        release = _release_at_start(t, other(stable))
        release.aborted_at = t.now
        st.release = release
        st.scale_down = ScaleDown(
            color=other(stable), at=max(at, t.now) + dt.timedelta(seconds=bg.abort_scale_down_delay_seconds)
        )
        t.stats("aborted")
        why = abort.reason if abort.reason is not None else "Aborted"
        t.event(
            "Aborted",
            f"revision {release.revision} aborted ({why}): {abort.message if abort.message is not None else ''}; "
            f"all traffic on {stable}",
            warning=True,
        )
    msg = f"revision {release.revision} aborted: {abort.message or abort.reason}"
    msg += f"; revision {st.stable_revision} serves all traffic on {stable}"
    t.set_phase(Phase.ABORTED, msg, str(abort.reason or "Aborted"))


def _rejected(t: _Tick, release: Release, why: str) -> AbortIntent:
    """The apiserver refuses the new colour (its Deployment or its pods): abort at once,
    traffic stays on the stable colour."""
    t.event("DeploymentRejected", f"revision {release.revision}: {why}", warning=True)
    return AbortIntent("DeploymentRejected", why)


# ---------------------------------------------------------------- refused Deployments


def _note_rejection(t: _Tick) -> None:
    """Record a fresh refusal in status.rejected; forget one that no longer applies (the
    template changed, or the colour runs what was refused: it was accepted since)."""
    st, r = t.st, t.obs.rejected
    if r is not None:
        old = st.rejected
        again = old is not None and (old.color, old.hash, old.replicas) == (r.color, r.hash, r.replicas)
        attempts = (old.attempts or 0) + 1 if again and old is not None else 1
        st.rejected = Rejected(
            color=r.color, hash=r.hash, replicas=r.replicas, code=r.code, message=r.message, at=t.now, attempts=attempts
        )
    rej = st.rejected
    if not rej:
        return
    c = t.color(rej.color)
    accepted = c.exists and (c.hash, c.replicas) == (rej.hash, rej.replicas)
    if rej.hash != t.obs.template_hash or accepted:
        st.rejected = None


def _refusal(t: _Tick, deploy: DeployColor) -> Rejected | None:
    """The recorded refusal of exactly this Deployment (colour, template, size), if any."""
    rej = t.st.rejected
    if rej and (rej.color, rej.hash, rej.replicas) == (deploy.color, deploy.hash, deploy.replicas):
        return rej
    return None


def _retry_due(t: _Tick, rej: Rejected) -> bool:
    """Only a 403 is sent again by itself, with a bounded backoff; 400/422 wait for a new template."""
    if (rej.code or 0) != 403:
        return False
    attempts = max(1, rej.attempts or 1)
    delay = min(REJECTED_RETRY_MAX, REJECTED_RETRY_FIRST * 2 ** min(attempts - 1, 10))
    due = (rej.at or t.now) + dt.timedelta(seconds=delay)
    if t.now >= due:
        return True
    t.wake_at(due)
    return False


def _refused_text(rej: Rejected, then: bool = True) -> str:
    text = f"the apiserver refused the Deployment for {rej.color} ({rej.code}): {rej.message}"
    if not then:
        return text
    if (rej.code or 0) == 403:
        return text + "; tried again with backoff (a quota or policy may be lifted)"
    return text + "; not sent again until the template changes"


# ---------------------------------------------------------------- the stage machine of a release


def _run_release(t: _Tick, release: Release) -> None:
    """Run the release through its stages as far as the world allows in this decision."""
    abort = t.abort_for(release.revision)
    if abort:
        _apply_abort(t, release, abort)
        return
    if release.aborted_at:  # the abort was withdrawn (kubectl teal retry): start the same revision afresh
        release = _retry(t, release)
    stage: Stage | None = Stage.POST_PROMOTION if release.switched_at else Stage.DEPLOYING
    while stage is not None:
        out = _HANDLERS[stage](t, release)
        if isinstance(out, AbortIntent):
            _apply_abort(t, release, _record_abort(t, release, out))
            return
        stage = out


def _retry(t: _Tick, release: Release) -> Release:
    fresh = _release_at_start(t, other(t.stable))
    t.st.release = fresh
    t.st.promote = None
    t.st.rejected = None  # a retry sends the Deployment again
    t.stats("retries", at=False)
    t.event("Retry", f"revision {release.revision} starts again on {fresh.color}")
    return fresh


def _progressed(t: _Tick, r: Release, progress: str) -> None:
    if r.progress != progress:
        r.progress = progress
        r.progress_at = t.now


def _deadline(t: _Tick, r: Release, what: str) -> AbortIntent | None:
    """An abort once the release made no progress for progressDeadlineSeconds."""
    seconds = t.spec.blue_green.progress_deadline_seconds
    deadline = (r.progress_at or t.now) + dt.timedelta(seconds=seconds)
    if t.now >= deadline:
        return AbortIntent("ProgressDeadlineExceeded", f"{what} after {seconds}s")
    t.wake_at(deadline)
    return None


def _held_move(t: _Tick, r: Release, what: str) -> bool:
    """A window or freeze holds the next move of traffic (never a fast rollback); the time held
    is recorded (release.heldSince/heldSeconds, stats.heldSeconds), not counted as release time."""
    h = None if r.fast_rollback else hold(t.obs.gates, t.now)
    if h is None:
        _hold_ended(t, r)
        return False
    if r.held_since is None:
        r.held_since = t.now
    _progressed(t, r, "Held")
    _held(t, f"revision {r.revision} on {r.color} waits before {what}: {h.message}", h.opens_at)
    return True


def _hold_ended(t: _Tick, r: Release) -> None:
    if r.held_since is None:
        return
    held = max(0, round((t.now - r.held_since).total_seconds()))
    r.held_since, r.held_seconds = None, (r.held_seconds or 0) + held
    stats = t.st.stats if t.st.stats is not None else {}
    stats["heldSeconds"] = int(stats.get("heldSeconds", 0)) + held
    t.st.stats = stats


def _target(t: _Tick, r: Release) -> int:
    """The new colour's size: the preview size until promoted, then full."""
    bg, full = t.spec.blue_green, t.spec.replicas
    scaled = r.promoted or bg.preview_replicas is None
    return full if scaled or bg.preview_replicas is None else min(bg.preview_replicas, full)


def _deploying(t: _Tick, r: Release) -> Outcome:
    """Deploying: the new colour at its target size and available (checked on every decision)."""
    obs, target = t.color(r.color), _target(t, r)
    if not (obs.exists and obs.hash == r.hash and obs.replicas == target):
        deploy = DeployColor(r.color, t.template, r.hash, r.revision, target)
        refused = _refusal(t, deploy)
        if refused is not None:
            return _rejected(t, r, _refused_text(refused, then=False))
        t.actions.append(deploy)
    if t.st.scale_down and t.st.scale_down.color == r.color:
        t.st.scale_down = None
    if obs.refused_pods(r.hash):
        return _rejected(t, r, f"{r.color} cannot create pods: {obs.failure}")
    if not obs.available(r.hash, target) or (target > 0 and obs.ready == 0):
        return _waiting_for_pods(t, r, obs, target)
    r.preview_ready = True
    if t.spec.paused:
        t.set_phase(Phase.PAUSED, f"revision {r.revision} on {r.color}: paused by spec.paused", "PausedBySpec")
        return None
    return Stage.PROMOTION if r.pre_promotion_done else Stage.PRE_PROMOTION


def _waiting_for_pods(t: _Tick, r: Release, obs: ColorObs, target: int) -> Outcome:
    bg = t.spec.blue_green
    scaled = r.promoted or bg.preview_replicas is None
    progress = "Deploying" if not scaled or not bg.preview_replicas else "ScalingUp"
    _progressed(t, r, progress)
    fresh = obs.updated_available if obs.hash == r.hash else 0
    counts = f"{fresh}/{target} pods of revision {r.revision} available"
    if obs.failure and obs.hash == r.hash:
        counts += f"; pods cannot be created: {obs.failure}"
    abort = _deadline(t, r, f"{r.color} not available ({counts})")
    if abort:
        return abort
    t.set_phase(Phase.PROGRESSING, f"revision {r.revision}: waiting for {r.color} to become available ({counts})", progress)
    return None


def _pre_promotion(t: _Tick, r: Release) -> Outcome:
    """PrePromotion: the prePromotion analysis passes before any user traffic."""
    gate = _analysis_gate(t, r, RunKey(r.revision, "prePromotion"))
    if gate is not True:
        return _stop(gate)
    r.pre_promotion_done = True
    return Stage.PROMOTION


def _promotion(t: _Tick, r: Release) -> Outcome:
    """Promotion: autoPromote or a user's promote (without steps; with steps, the steps gate the
    traffic), unless a window holds it; then the preview goes to full size (back to Deploying)."""
    if r.promoted:
        return Stage.STEPS
    if not t.spec.blue_green.steps and not (t.spec.blue_green.auto_promote or t.promote_for(r.revision, None)):
        _progressed(t, r, "AwaitingPromotion")
        t.set_phase(Phase.PAUSED, f"revision {r.revision} ready on {r.color}; waiting for promote", "AwaitingPromotion")
        return None
    if _held_move(t, r, "promotion"):
        return None
    preview_size = _target(t, r)
    r.promoted = True
    return Stage.DEPLOYING if preview_size != t.spec.replicas else Stage.STEPS


def _steps(t: _Tick, r: Release) -> Outcome:
    """Steps: weights through a router and pauses, one after the other (all of them at a full promote)."""
    steps = t.spec.blue_green.steps
    if t.full_promote(r.revision):
        r.step = len(steps)
    while (r.step or 0) < len(steps):
        i = r.step or 0
        t.st.current_step = i + 1
        out = _weight_step(t, r, i) if steps[i].set_weight is not None else _pause_step(t, r, i)
        if out is not Stage.STEPS:
            return out
    return Stage.SWITCHING


def _weight_step(t: _Tick, r: Release, i: int) -> Outcome:
    bg, steps, stable = t.spec.blue_green, t.spec.blue_green.steps, t.stable
    w = steps[i].set_weight or 0
    if bg.traffic_routing is None:  # no router: a weight step only orders the pauses
        r.step = len(steps) if w >= 100 else r.step
        if w < 100:
            _next_step(t, r)
        return Stage.STEPS
    if (r.weight or 0) != w and _held_move(t, r, f"step {i + 1}/{len(steps)} ({w}%)"):
        return None
    r.weight = w
    if w > 0 and r.traffic_at is None:
        r.traffic_at = t.now  # user traffic reaches it from this decision's SetWeights on
    if not t.servable(r.color) and w > 0:
        return AbortIntent("NewColorUnavailable", f"{r.color} has no ready pods at step {i + 1}")
    if w < 100 and not t.servable(stable):
        t.set_phase(
            Phase.DEGRADED,
            f"step {i + 1}/{len(steps)}: the stable colour {stable} has no ready pods, so {100 - w}% "
            "cannot go there; waiting for it to recover (or promote --full)",
            "StableUnavailable",
        )
        return None
    current = dict(t.obs.weights or {})
    if current.get(r.color, 0) != w or current.get(stable, 0) != 100 - w:
        _progressed(t, r, f"Step{i + 1}")
        t.set_phase(Phase.PROGRESSING, f"step {i + 1}/{len(steps)}: setting {w}% to {r.color}", "SettingWeights")
        return None
    key = RunKey(r.revision, "steps", i)
    if not r.has_passed(key):
        gate = _analysis_gate(t, r, key)
        if gate is not True:
            return _stop(gate)
    _next_step(t, r)
    return Stage.STEPS


def _pause_step(t: _Tick, r: Release, i: int) -> Outcome:
    steps = t.spec.blue_green.steps
    seconds = steps[i].pause_seconds
    if seconds is None:
        if t.promote_for(r.revision, i + 1):
            _next_step(t, r)
            return Stage.STEPS
        _progressed(t, r, f"Step{i + 1}")
        t.set_phase(Phase.PAUSED, f"step {i + 1}/{len(steps)}: paused until promoted; {_weight_text(t, r)}", "PausedAtStep")
        return None
    if r.step_started_at is None:
        r.step_started_at = t.now
    end = r.step_started_at + dt.timedelta(seconds=seconds)
    if t.now >= end or t.promote_for(r.revision, i + 1):
        _next_step(t, r)
        return Stage.STEPS
    t.wake_at(end)
    left = (end - t.now).total_seconds()
    t.set_phase(Phase.PAUSED, f"step {i + 1}/{len(steps)}: pause {left:.0f}s left; {_weight_text(t, r)}", "PausedAtStep")
    return None


def _switching(t: _Tick, r: Release) -> Outcome:
    """Switching: every active Service to the new colour, once it has ready pods and no window holds it."""
    r.weight = None
    if not t.servable(r.color):
        t.set_phase(Phase.PROGRESSING, f"revision {r.revision}: {r.color} has no ready pods; not switching", "WaitingForPods")
        return None
    if _held_move(t, r, "the switch"):
        return None
    r.switched_at = t.now
    r.progress = "Switched"
    t.st.active_color = r.color
    t.event("Switched", f"all active Services now select {r.color} (revision {r.revision})")
    if r.fast_rollback or not _analysis_names(t.spec, "postPromotion"):
        _complete_release(t, r)
        t.set_phase(Phase.HEALTHY, f"revision {r.revision} is live on {r.color}", "Healthy")
        return None
    return _stop(_analysis_gate(t, r, RunKey(r.revision, "postPromotion")))


def _post_promotion(t: _Tick, r: Release) -> Outcome:
    """PostPromotion: verify the new colour serving all traffic, then make it stable."""
    t.st.active_color = r.color
    if not t.servable(r.color):
        return AbortIntent("NewColorUnavailable", f"{r.color} lost all ready pods after the switch")
    key = RunKey(r.revision, "postPromotion")
    if not r.has_passed(key) and not r.fast_rollback:
        gate = _analysis_gate(t, r, key)
        if gate is not True:
            return _stop(gate)
    _complete_release(t, r)
    t.set_phase(Phase.HEALTHY, f"revision {r.revision} is live on {r.color}", "Healthy")
    return None


# Aborted has no handler: _run_release applies an abort (or a retry) before any stage runs.
_HANDLERS: dict[Stage, Callable[[_Tick, Release], Outcome]] = {
    Stage.DEPLOYING: _deploying,
    Stage.PRE_PROMOTION: _pre_promotion,
    Stage.PROMOTION: _promotion,
    Stage.STEPS: _steps,
    Stage.SWITCHING: _switching,
    Stage.POST_PROMOTION: _post_promotion,
}


def _stop(gate: bool | AbortIntent) -> Outcome:
    """A gate that has not passed: wait (None), or abort."""
    return gate if isinstance(gate, AbortIntent) else None


def _next_step(t: _Tick, r: Release) -> None:
    r.step = (r.step or 0) + 1
    r.step_started_at = t.now
    r.progress_at = t.now


def _weight_text(t: _Tick, r: Release) -> str:
    if t.spec.blue_green.traffic_routing is None:
        return f"{r.color} gets no traffic yet"
    return f"{r.weight or 0}% to {r.color}"


def _analysis_names(spec: RolloutSpec, run: str) -> list[str]:
    analysis = spec.analysis or {}
    return list(analysis.get(run) or [])


# ---------------------------------------------------------------- analysis gates


def _analysis_gate(t: _Tick, r: Release, key: RunKey) -> bool | AbortIntent:
    """True when the analysis run `key` has passed (or none is configured); False while it runs."""
    if not _analysis_names(t.spec, key.run):
        return True
    r.analysis_key = key
    a = t.obs.analysis
    if a is None or a.key != str(key):
        _progressed(t, r, f"Analysis:{key.run}")
        t.set_phase(Phase.PROGRESSING, f"revision {r.revision}: {key.run} analysis starting on {r.color}", "Analysis")
        t.wake_at(t.now)
        return False
    if a.error:
        return AbortIntent("AnalysisError", a.error)
    if a.verdict == "Successful":
        _analysis_took(t, r, a)
        _passed(r, key)
        t.event("AnalysisPassed", f"revision {r.revision}: {key.run} analysis passed: {a.message}")
        return True
    if a.verdict == "Failed":
        _analysis_took(t, r, a)
        return AbortIntent("AnalysisFailed", f"{key.run} analysis failed: {a.message}")
    if a.verdict == "Inconclusive":
        return _inconclusive(t, r, key, a)
    _progressed(t, r, f"Analysis:{key.run}")
    t.wake_at(a.next_at)
    t.set_phase(Phase.PROGRESSING, f"revision {r.revision}: {key.run} analysis running on {r.color}: {a.message}", "Analysis")
    return False


def _inconclusive(t: _Tick, r: Release, key: RunKey, a: AnalysisRun) -> bool:
    """An inconclusive run waits for a user: promote passes it, abort ends the release."""
    if t.promote_for(r.revision, key.step if key.step is not None else -1) or t.full_promote(r.revision):
        _analysis_took(t, r, a)
        _passed(r, key)
        t.event("AnalysisOverridden", f"revision {r.revision}: inconclusive {key.run} analysis promoted by a user")
        return True
    _progressed(t, r, f"Inconclusive:{key.run}")
    t.set_phase(
        Phase.PAUSED,
        f"revision {r.revision}: {key.run} analysis inconclusive ({a.message}); waiting for promote or abort",
        "AnalysisInconclusive",
    )
    return False


def _passed(r: Release, key: RunKey) -> None:
    r.analysis_key = None
    r.passed = [*(r.passed or []), key]


def _analysis_state(t: _Tick) -> None:
    """What teal.analysis measured this tick becomes status.analysisRun and status.analysis; the
    run's state goes once no run is asked for (release.analysisKey)."""
    st, a = t.st, t.obs.analysis
    if a is not None and a.history is not None:
        st.analysis_run = AnalysisState.load(a.state) if a.state else None
        st.analysis = [dict(m) for m in a.history]
    if not (st.release and st.release.analysis_key):
        st.analysis_run = None


# ---------------------------------------------------------------- convergence


def _desired_weights(t: _Tick) -> dict[str, int] | None:
    st = t.st
    active = st.active_color
    if active is None:
        return None
    release = st.release
    if release and release.weight is not None and not release.aborted_at and t.abort_for(release.revision) is None:
        w = release.weight
        return {release.color: w, active: 100 - w}
    return {active: 100, other(active): 0}


def _enforce_traffic(t: _Tick) -> None:
    """Point Services and routes where status says, but never at a colour without ready pods."""
    st, bg = t.st, t.spec.blue_green
    active = st.active_color
    if st.reason in ("ServiceNotFound", "TemplateNotFound", "ServiceClaimed") or active is None:
        return
    if not t.servable(active):
        # Nothing to switch to safely: leave every selector where it is.
        stable = st.stable_color
        if not (stable and stable != active and t.servable(stable)):
            return
        st.active_color = active = stable
    for name in bg.active_services:
        if (t.obs.services.get(name) or ServiceObs()).color != active:
            t.actions.append(SelectColor(name, active))
    if bg.preview_service:
        release = st.release
        target = release.color if release and not release.aborted_at else active
        if target and t.servable(target) and (t.obs.services.get(bg.preview_service) or ServiceObs()).color != target:
            t.actions.append(SelectColor(bg.preview_service, target))
    if bg.traffic_routing is not None and not t.obs.router_error:
        want = _desired_weights(t)
        if want is not None:
            if any(w > 0 and not t.servable(c) for c, w in want.items()):
                want = {active: 100, other(active): 0}
            current = dict(t.obs.weights or {})
            if any(current.get(c, 0) != w for c, w in want.items()):
                t.actions.append(SetWeights(tuple(sorted(want.items()))))


def _honest_phase(t: _Tick) -> None:
    """A decision that moves traffic never calls the release Healthy: its moves may fail (the
    next reconcile, right after them, reads them back and will)."""
    moving = [
        a
        for a in t.actions
        if isinstance(a, SetWeights) or (isinstance(a, SelectColor) and a.service in t.spec.blue_green.active_services)
    ]
    if moving and t.st.phase == Phase.HEALTHY:
        t.set_phase(Phase.PROGRESSING, f"moving traffic to {t.st.active_color}", "Switching")


def _guard_stable(t: _Tick) -> None:
    """A release in progress (or a Healthy phase) never hides an outage of the stable colour
    that serves the traffic: with no ready pod it is Degraded/StableUnavailable (a Warning
    Event, Stalled=True) until it recovers; _ensure_stable meanwhile restores it."""
    st = t.st
    c = st.stable_color
    if not c or st.active_color != c or t.spec.replicas == 0 or st.phase not in (Phase.HEALTHY, Phase.PROGRESSING, Phase.PAUSED):
        return
    obs = t.color(c)
    if obs.ready > 0:
        return
    if not obs.exists:
        restorable = t.obs.template_hash == st.stable_hash or t.obs.stable_template is not None
        how = "its Deployment is missing; " + (
            "it is being made again" if restorable else "its template is not in the revision history: it cannot be made again"
        )
    else:
        how = f"0/{t.spec.replicas} pods ready"
    message = f"the stable colour {c} (revision {st.stable_revision}) has no ready pods: {how}"
    if st.release:
        message += f"; meanwhile: {st.message}"
    t.set_phase(Phase.DEGRADED, message, "StableUnavailable")


def _scale_down_idle(t: _Tick) -> None:
    st = t.st
    pending = st.scale_down
    if not pending:
        return
    color, release = pending.color, st.release
    if color == st.active_color or (release and release.color == color and not release.aborted_at):
        st.scale_down = None
        return
    at = pending.at or t.now
    if t.now < at:
        t.wake_at(at)
        return
    if t.color(color).replicas != 0 and color is not None:
        t.actions.append(ScaleColor(color, 0))
        if not pending.announced:
            pending.announced = True
            t.event("ScaledDown", f"{color} scaled to zero")
    else:
        st.scale_down = None


def _observed_fields(t: _Tick) -> None:
    st = t.st
    release = st.release
    st.preview_color = release.color if release and not release.aborted_at else None
    if not release:
        st.current_step = None
    if t.obs.weights is not None:
        st.weights = {c: int(t.obs.weights.get(c, 0)) for c in COLORS}
    active = st.active_color
    st.replicas = t.spec.replicas
    st.ready_replicas = t.color(active).ready if active else 0
    st.selector = ",".join(f"{k}={v}" for k, v in sorted(t.spec.match_labels.items()))


def _condition(t: _Tick, type_: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    value = "True" if status else "False"
    old = t.old.condition(type_)
    changed = not old or old.get("status") != value
    cond = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": iso(t.now) if changed or old is None else old.get("lastTransitionTime", iso(t.now)),
    }
    if t.st.observed_generation is not None:
        cond["observedGeneration"] = t.st.observed_generation
    return cond


def _conditions(t: _Tick) -> None:
    st = t.st
    phase, reason, message = st.phase or Phase.PROGRESSING, st.reason or "", st.message or ""
    ready = phase == Phase.HEALTHY
    stalled = phase in (Phase.DEGRADED, Phase.ABORTED)
    reconciling = phase in (Phase.PROGRESSING, Phase.PAUSED)
    st.conditions = [
        _condition(t, "Ready", ready, reason if not ready else "Healthy", message),
        _condition(t, "Reconciling", reconciling, reason if reconciling else "Idle", message if reconciling else ""),
        _condition(t, "Stalled", stalled, reason if stalled else "NotStalled", message if stalled else ""),
    ]
    if st.phase != t.old.phase and phase in PHASES:
        if phase == Phase.DEGRADED:
            t.event(reason or "Degraded", message, warning=True)
        elif phase == Phase.PAUSED:
            t.event(reason or "Paused", message)


# ---------------------------------------------------------------- release history (status.history)

HISTORY_LIMIT = 25  # entries kept in status.history; status.stats.outcomes counts every one
MESSAGE_LIMIT = 512  # characters of an entry's message (the measured values that decided)
SOURCE_TIME = "teal.dev/source-time"  # template annotation: RFC 3339 commit time, set by CI
RESTORE_WATCH = dt.timedelta(minutes=10)  # how long a Reverted entry's restore is looked for


def _release_facts(t: _Tick, r: Release) -> None:
    """What the history needs to know of the template a release starts with."""
    template = t.obs.template or {}
    spec, meta = template.get("spec") or {}, template.get("metadata") or {}
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    r.images = [str(c["image"]) for c in containers or [] if isinstance(c, Mapping) and c.get("image")]
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    r.source_time = _source_time((annotations or {}).get(SOURCE_TIME) if isinstance(annotations, Mapping) else None)


def _source_time(value: Any) -> dt.datetime | None:
    """teal.dev/source-time, when it is an RFC 3339 time with a zone (anything else is ignored)."""
    if not isinstance(value, str):
        return None
    try:
        when = parse_time(value.strip())
    except ValueError:
        return None
    return when if when is not None and when.tzinfo is not None else None


def _reached_users(r: Release) -> bool:
    return r.traffic_at is not None or r.switched_at is not None


def _record_history(
    t: _Tick, r: Release, outcome: ReleaseOutcome, reason: str, message: str, detected: dt.datetime | None = None
) -> None:
    """The release `r` ended: one entry in status.history (newest first, bounded) and one more
    in stats.outcomes (never reset)."""
    switched = min(x for x in (r.traffic_at, r.switched_at) if x is not None) if _reached_users(r) else None
    entry = HistoryEntry(
        revision=r.revision,
        hash=r.hash or None,
        images=list(r.images) if r.images else None,
        started_at=r.started_at,
        switched_at=switched,
        finished_at=t.now,
        outcome=outcome,
        reason=reason,
        message=message[:MESSAGE_LIMIT],
        analysis_seconds=r.analysis_seconds,
    )
    if r.source_time is not None and switched is not None:
        entry.lead_time_seconds = round((switched - r.source_time).total_seconds(), 3)
    if outcome == ReleaseOutcome.REVERTED:
        entry.detected_at = min(detected or t.now, t.now)
    t.st.history = [entry, *(t.st.history or [])][:HISTORY_LIMIT]
    stats = t.st.stats if t.st.stats is not None else {}
    totals = dict(stats.get("outcomes") or {})
    totals[outcome.value] = int(totals.get(outcome.value, 0)) + 1
    stats["outcomes"] = totals
    t.st.stats = stats


def _record_abort_history(t: _Tick, r: Release, abort: Abort) -> None:
    """An abort ends the release: Reverted once user traffic reached it, Aborted before."""
    outcome = ReleaseOutcome.REVERTED if _reached_users(r) else ReleaseOutcome.ABORTED
    message = abort.message if abort.message is not None else str(abort.reason or "aborted")
    _record_history(t, r, outcome, str(abort.reason or "Aborted"), message, abort.at or t.now)


def _record_completion(t: _Tick, r: Release, how: str) -> None:
    """A promotion, or a rollback: a release of a template that was live before (undo)."""
    older = any(
        e.hash == r.hash and e.outcome in (ReleaseOutcome.PROMOTED, ReleaseOutcome.ROLLED_BACK) for e in t.old.history or []
    )
    if r.switched_at is None:
        r.switched_at = t.now
    passed = "; ".join(e.message for e in t.events if e.reason == "AnalysisPassed")
    message = f"revision {r.revision} is live on {r.color}{how}" + (f"; {passed}" if passed else "")
    if r.fast_rollback or older:
        _record_history(t, r, ReleaseOutcome.ROLLED_BACK, "FastRollback" if r.fast_rollback else "OlderRevision", message)
    else:
        _record_history(t, r, ReleaseOutcome.PROMOTED, "SupersededWhileVerifying" if how else "Promoted", message)


def _restore_observed(t: _Tick) -> None:
    """A Reverted release's time to restore ends when all traffic is observed back on the
    stable colour: every active Service selects it and the router (if any) gives it 100%."""
    st = t.st
    entry = st.history[0] if st.history else None
    if entry is None or entry.outcome != ReleaseOutcome.REVERTED or entry.restored_at is not None:
        return
    detected = entry.detected_at or entry.finished_at or t.now
    if t.now - detected > RESTORE_WATCH or (st.release is not None and st.release.aborted_at is None):
        return  # not seen in time, or a newer attempt moves traffic again: left unknown
    stable = st.stable_color
    services = [(t.obs.services.get(s) or ServiceObs()).color for s in t.spec.blue_green.active_services]
    weights_ok = t.obs.weights is None or int(t.obs.weights.get(stable or "", 0)) == 100
    if stable is None or t.obs.router_error or not weights_ok or any(c != stable for c in services):
        return  # the next reconcile looks again (the Service and route watches wake it when they move)
    entry.restored_at = t.now
    entry.restore_seconds = round(max(0.0, (t.now - detected).total_seconds()), 3)


def _analysis_took(t: _Tick, r: Release, a: AnalysisRun) -> None:
    """Add the finished run's time (its startedAt to finishedAt, or now) to the release's time in analysis."""
    state = a.state or {}
    started = parse_time(str(state.get("startedAt") or "")) if isinstance(state, Mapping) else None
    if started is None:
        return
    ended = parse_time(str(state.get("finishedAt") or "")) or t.now
    r.analysis_seconds = round((r.analysis_seconds or 0.0) + max(0.0, (ended - started).total_seconds()), 3)
