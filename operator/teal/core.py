"""Teal's decision core: a pure function of (spec, previous status, observed world, now).

`decide()` returns the new status, the actions that converge the cluster towards it, the
Events to post, and when to look again. It does no I/O, keeps no memory between calls, and
everything it needs to survive a restart lives in the status it returns.

The safety rules it guarantees (property-tested in tests/test_core_properties.py):
- a Service or route is only pointed at a colour that has ready pods (or when the
  Rollout runs zero replicas, so nothing can be served either way);
- an abort ends with every active Service and 100% of the weight on the stable colour;
- a release always ends Healthy, Aborted or Degraded, or says what it waits for.

Status layout (all of it is in the CRD schema):
  activeColor/stableColor/stableHash/stableRevision  what serves traffic and what is proven
  currentRevision/currentHash                         what spec asks for
  release{...}                                        the release in progress, or absent
  abort{revision,reason,message,at}                   an abort of `revision` (user or Teal)
  promote{revision,step,full}                         a promote request (written by the CLI)
  scaleDown{color,at}                                 the idle colour's pending scale-down
  rejected{color,hash,replicas,code,message,...}      the apiserver's refusal of a colour's Deployment
  stats{...}                                          release statistics
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import re
from typing import Any, Mapping

from .api import BLUE, COLORS, RolloutSpec, Step, TrafficRouting, other, parse_traffic_routing
from .policy import Gate, hold

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
        if self.exists and self.hash == want_hash and self.synced and self.failure \
                and _PERMANENT_FAILURE.search(self.failure):
            return self.failure
        return None

    def available(self, want_hash: str | None, n: int) -> bool:
        return (
            self.exists
            and self.hash == want_hash
            and self.synced
            and self.replicas == n
            and self.updated_available >= n
        )


@dataclasses.dataclass(frozen=True)
class ServiceObs:
    exists: bool = True
    color: str | None = None  # the teal.dev/color value of its selector


@dataclasses.dataclass(frozen=True)
class AnalysisRun:
    """The state of one analysis run, as computed by teal.analysis for this tick."""

    key: str
    verdict: str  # Running | Successful | Failed | Inconclusive
    message: str = ""
    next_at: dt.datetime | None = None
    error: str | None = None  # a configuration error (bad query, unknown template, ...)


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
    status: dict[str, Any]
    actions: list[Action]
    events: list[Event]
    requeue_after: float | None  # seconds until the next timer is due

    @property
    def analysis_key(self) -> str | None:
        return (self.status.get("release") or {}).get("analysisKey")


# ---------------------------------------------------------------- helpers


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


PHASES = ("Healthy", "Progressing", "Paused", "Degraded", "Aborted")
# A refused Deployment is not sent again until the template changes; a 403 (a quota or a
# policy that may be lifted) is tried again after 30 s, 60 s, ... at most every 5 min.
REJECTED_RETRY_FIRST = 30.0
REJECTED_RETRY_MAX = 300.0


class _Tick:
    """The working state of one decide() call."""

    def __init__(self, spec: RolloutSpec, status: Mapping[str, Any], obs: Observed, now: dt.datetime):
        self.spec = spec
        self.old = status
        self.st: dict[str, Any] = copy.deepcopy(dict(status))
        self.obs = obs
        self.now = now
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.wakeups: list[dt.datetime] = []

    # -- small utilities
    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    def wake_at(self, t: dt.datetime | None) -> None:
        if t is not None:
            self.wakeups.append(t)

    def set_phase(self, phase: str, message: str, reason: str) -> None:
        self.st["phase"] = phase
        self.st["message"] = message
        self.st["reason"] = reason

    def color(self, c: str) -> ColorObs:
        return self.obs.colors.get(c) or ColorObs()

    def servable(self, c: str) -> bool:
        """May traffic go to colour c? Only if it has ready pods (or nothing runs at all)."""
        return self.color(c).ready > 0 or self.spec.replicas == 0

    def stats(self, key: str, at: bool = True) -> None:
        stats = self.st.setdefault("stats", {})
        stats[key] = int(stats.get(key, 0)) + 1
        if at:
            stats[f"last{key[0].upper()}{key[1:]}At"] = iso(self.now)

    def abort_for(self, revision: str | None) -> Mapping[str, Any] | None:
        abort = self.st.get("abort")
        if abort and revision is not None and str(abort.get("revision")) == str(revision):
            return abort
        return None

    def promote_for(self, revision: str, step: int | None) -> bool:
        p = self.st.get("promote") or {}
        if str(p.get("revision")) != str(revision):
            return False
        if p.get("full"):
            return True
        return step is None or p.get("step") is None or int(p["step"]) == step

    def full_promote(self, revision: str) -> bool:
        p = self.st.get("promote") or {}
        return str(p.get("revision")) == str(revision) and bool(p.get("full"))


# ---------------------------------------------------------------- the decision


def decide(
    spec: RolloutSpec, status: Mapping[str, Any], obs: Observed, now: dt.datetime, generation: int | None = None
) -> Plan:
    t = _Tick(spec, status, obs, now)
    if generation is not None:
        t.st["observedGeneration"] = generation
    _note_rejection(t)
    _decide(t)
    _enforce_traffic(t)
    _honest_phase(t)
    _guard_stable(t)
    _scale_down_idle(t)
    _observed_fields(t)
    _conditions(t)
    requeue = None
    if t.wakeups:
        requeue = max(0.0, (min(t.wakeups) - now).total_seconds())
    return Plan(status=t.st, actions=_unclaimed(t, _dedupe(t.actions)), events=t.events, requeue_after=requeue)


def _unclaimed(t: _Tick, actions: list[Action]) -> list[Action]:
    """Never write an object another Rollout has claimed (a second line behind ServiceClaimed)."""
    if not t.obs.claimed:
        return actions
    route_claimed = any(not k.startswith("Service/") for k in t.obs.claimed)
    return [a for a in actions if not (
        (isinstance(a, SelectColor) and f"Service/{a.service}" in t.obs.claimed)
        or (isinstance(a, SetWeights) and route_claimed))]


@dataclasses.dataclass(frozen=True)
class Fallback:
    """What an unprocessable spec still says about traffic (read leniently from the raw spec)."""

    active_services: tuple[str, ...] = ()
    preview_service: str | None = None
    progress_deadline_seconds: int = 600
    abort_scale_down_delay_seconds: int = 30
    traffic_routing: TrafficRouting | None = None  # when it still parses: an abort moves the weights back too

    @classmethod
    def from_spec(cls, spec: Any) -> "Fallback":
        """Whatever of these a raw spec states readably; defaults for the rest. Never raises."""
        bg = ((spec or {}).get("strategy") or {}).get("blueGreen") if isinstance(spec, Mapping) else None
        bg = bg if isinstance(bg, Mapping) else {}

        def seconds(key: str, default: int) -> int:
            v = bg.get(key)
            return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 else default

        active = bg.get("activeServices")
        preview = bg.get("previewService")
        try:
            raw = bg.get("trafficRouting")
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


def cannot_decide(status: Mapping[str, Any], fallback: Fallback, obs: Observed, message: str, reason: str,
                  now: dt.datetime, generation: int | None = None) -> Plan:
    """The plan when the spec cannot be processed (InvalidSpec) or deciding failed (ReconcileError):
    Degraded naming the error, and an abort -- a user's, a passed progress deadline, or one Teal
    recorded before -- still acted on: every Service back on the stable colour (when it has
    ready pods) and the aborted colour scaled down later. Nothing else is touched."""
    t = _Tick(None, status, obs, now)  # type: ignore[arg-type]
    st = t.st
    if generation is not None:
        st["observedGeneration"] = generation
    release, stable = st.get("release"), st.get("stableColor")
    text = message
    if release and stable and not release.get("abortedAt"):
        since = parse_time(release.get("progressAt")) or now
        deadline = since + dt.timedelta(seconds=fallback.progress_deadline_seconds)
        if t.abort_for(release.get("revision")) is None and now >= deadline:
            _abort(t, release, "ProgressDeadlineExceeded",
                   f"no progress for {fallback.progress_deadline_seconds}s while the spec could not be processed")
        elif now < deadline:
            t.wake_at(deadline)
    abort = t.abort_for((release or {}).get("revision"))
    if release and stable and (abort or release.get("abortedAt")):
        if not release.get("abortedAt"):
            release["abortedAt"] = iso(now)
            st["scaleDown"] = {"color": release["color"],
                               "at": iso(now + dt.timedelta(seconds=fallback.abort_scale_down_delay_seconds))}
            t.stats("aborted")
            t.event("Aborted", f"revision {release['revision']} aborted ({(abort or {}).get('reason', 'Aborted')}) "
                               f"although the spec cannot be processed; all traffic on {stable}", warning=True)
        st["activeColor"] = stable
        text += f"; revision {release['revision']} aborted, revision {st.get('stableRevision')} on {stable}"
        if t.color(stable).ready > 0:
            for name in fallback.active_services + ((fallback.preview_service,) if fallback.preview_service else ()):
                svc = obs.services.get(name)
                if svc is not None and svc.exists and svc.color != stable:
                    t.actions.append(SelectColor(name, stable))
            if fallback.traffic_routing is not None and obs.weights and obs.weights.get(stable) != 100:
                t.actions.append(SetWeights(tuple((c, 100 if c == stable else 0) for c in COLORS)))
        else:
            text += f" (which has no ready pods: Services left where they are)"
    st["previewColor"] = release.get("color") if release and not release.get("abortedAt") else None
    t.set_phase("Degraded", text, reason)
    _scale_down_idle(t)
    _conditions(t)
    requeue = max(0.0, (min(t.wakeups) - now).total_seconds()) if t.wakeups else None
    return Plan(status=st, actions=_unclaimed(t, _dedupe(t.actions)), events=t.events, requeue_after=requeue)


def _dedupe(actions: list[Action]) -> list[Action]:
    """Keep the last action per target, in first-seen order (later decisions win)."""
    out: dict[tuple, Action] = {}
    for a in actions:
        key: tuple
        if isinstance(a, (DeployColor, ScaleColor)):
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


def _decide(t: _Tick) -> None:
    spec, obs, st = t.spec, t.obs, t.st

    # 1. Problems the operator cannot act around: say so, touch nothing.
    if obs.claimed:
        owners = "; ".join(f"{obj.replace('/', ' ', 1)} is claimed by Rollout {owner}"
                           for obj, owner in sorted(obs.claimed.items()))
        t.set_phase("Degraded", f"{owners} (annotation teal.dev/claimed-by); nothing was written to it",
                    "ServiceClaimed")
        return
    missing = [s for s in _service_names(spec) if not (obs.services.get(s) or ServiceObs(False)).exists]
    if missing:
        names = ", ".join(missing)
        t.set_phase("Degraded", f"Service {names} not found in the namespace; nothing was changed", "ServiceNotFound")
        return
    if obs.template_error or obs.template is None or obs.template_hash is None:
        t.set_phase("Degraded", obs.template_error or "no pod template to run", "TemplateNotFound")
        return
    if obs.router_error:
        reason = "RouterUnavailable" if obs.router_unavailable else "TrafficRouterError"
        t.set_phase("Degraded", obs.router_error, reason)
        # still keep traffic where it is and let a running abort finish below
        if not st.get("stableHash"):
            return

    want = obs.template_hash
    st["currentHash"] = want

    # 2. No stable release yet: adopt what runs, or make the first release.
    if not st.get("stableHash"):
        _first_release(t, want)
        return

    stable_color = st["stableColor"]
    release = st.get("release")

    # 3. Spec asks for what is already stable: cancel whatever release runs.
    if want == st["stableHash"]:
        st["currentRevision"] = st["stableRevision"]
        if release:
            _cancel_release(t, release, f"the template is back to stable revision {st['stableRevision']}")
        st.pop("abort", None)
        refused = _ensure_stable(t)
        if refused is not None:  # its Deployment is gone (deleted by hand) and cannot be made again
            t.set_phase("Degraded", f"stable revision {st['stableRevision']}: {_refused_text(refused)}",
                        "DeploymentRejected")
            return
        t.set_phase("Healthy", f"revision {st['stableRevision']} is live on {stable_color}", "Healthy")
        return

    # 4. A new template (or the first sight of this one): start or supersede a release.
    if not release or release.get("hash") != want:
        if _held_start(t, release, want):
            _ensure_stable(t)
            return
        release = _start_release(t, release, want)
    _ensure_stable(t)
    _run_release(t, release)


def _service_names(spec: RolloutSpec) -> list[str]:
    names = list(spec.blue_green.active_services)
    if spec.blue_green.preview_service:
        names.append(spec.blue_green.preview_service)
    return names


def _first_release(t: _Tick, want: str) -> None:
    spec, st = t.spec, t.st
    # Adoption after a lost status: every active Service already selects a colour whose
    # Deployment runs the wanted template.
    colors = {(t.obs.services.get(s) or ServiceObs()).color for s in spec.blue_green.active_services}
    if len(colors) == 1:
        (c,) = colors
        if c in COLORS and t.color(c).exists and t.color(c).hash == want:
            st.update(stableColor=c, activeColor=c, stableHash=want, stableRevision=st.get("currentRevision") or "1")
            st["currentRevision"] = st["stableRevision"]
            st["revision"] = int(st["stableRevision"])
            t.set_phase("Healthy", f"adopted {c} running revision {st['stableRevision']}", "Adopted")
            return
    color = st.get("firstColor") or BLUE
    st["firstColor"] = color
    if st.get("currentHash") != want or not st.get("currentRevision"):
        st["revision"] = int(st.get("revision") or 0) + (0 if st.get("currentRevision") else 1)
        st["currentRevision"] = str(st["revision"])
    if not st.get("firstReleaseStartedAt") or st.get("firstReleaseHash") != want:
        st["firstReleaseStartedAt"] = iso(t.now)
        st["firstReleaseHash"] = want
        t.actions.append(RecordRevision(st["currentRevision"], want, t.obs.template))
        t.event("FirstRelease", f"first release: revision {st['currentRevision']} on {color}")
    rev = st["currentRevision"]
    obs = t.color(color)
    if not (obs.exists and obs.hash == want and obs.replicas == spec.replicas):
        deploy = DeployColor(color, t.obs.template, want, rev, spec.replicas)
        refused = _refusal(t, deploy)
        if refused is None or _retry_due(t, refused):
            t.actions.append(deploy)
        if refused is not None:
            t.set_phase("Degraded", f"first release: {_refused_text(refused)}", "DeploymentRejected")
            return
    if t.color(color).available(want, spec.replicas) and (spec.replicas == 0 or t.color(color).ready > 0):
        st.update(stableColor=color, activeColor=color, stableHash=want, stableRevision=rev)
        started = parse_time(st.get("firstReleaseStartedAt"))
        for k in ("firstColor", "firstReleaseStartedAt", "firstReleaseHash"):
            st.pop(k, None)
        t.stats("releases")
        t.stats("promoted")
        if started:
            st["stats"]["lastReleaseSeconds"] = round((t.now - started).total_seconds(), 3)
        t.event("Promoted", f"revision {rev} is live on {color}")
        t.set_phase("Healthy", f"revision {rev} is live on {color}", "Healthy")
        return
    started = parse_time(st["firstReleaseStartedAt"])
    deadline = started + dt.timedelta(seconds=spec.blue_green.progress_deadline_seconds)
    c = t.color(color)
    detail = f"{c.updated_available}/{spec.replicas} available"
    if c.refused_pods(want):
        t.set_phase("Degraded", f"first release: {color} cannot create pods: {c.failure}", "DeploymentRejected")
        return
    if c.failure and c.hash == want:
        detail += f"; pods cannot be created: {c.failure}"
    if t.now >= deadline:
        t.set_phase(
            "Degraded",
            f"first release: {color} not available after {spec.blue_green.progress_deadline_seconds}s ({detail})",
            "ProgressDeadlineExceeded",
        )
        return
    t.wake_at(deadline)
    t.set_phase("Progressing", f"first release: waiting for {color} to become available ({detail})", "Deploying")


def _ensure_stable(t: _Tick) -> Mapping[str, Any] | None:
    """Keep the stable colour at full size (an HPA may change spec.replicas); the standing
    refusal of its Deployment, if it is missing and the apiserver refuses to make it again."""
    st, spec = t.st, t.spec
    c = st["stableColor"]
    obs = t.color(c)
    refused = None
    template = t.obs.template if t.obs.template_hash == st["stableHash"] else t.obs.stable_template
    if not obs.exists and template is not None:
        deploy = DeployColor(c, template, st["stableHash"], st["stableRevision"], spec.replicas)
        refused = _refusal(t, deploy)
        if refused is None or _retry_due(t, refused):
            t.actions.append(deploy)
            t.event("StableRestored", f"the Deployment of the stable colour {c} was missing: made again from "
                                      f"revision {st['stableRevision']}", warning=True)
    elif obs.exists and obs.replicas != spec.replicas:
        t.actions.append(ScaleColor(c, spec.replicas))
    if (st.get("scaleDown") or {}).get("color") == c:
        st.pop("scaleDown", None)
    return refused


def _release_at_start(t: _Tick, color: str) -> dict[str, Any]:
    """The current revision's release on `color`, at its very start (new, or retried)."""
    now = iso(t.now)
    return {
        "revision": t.st["currentRevision"],
        "hash": t.st["currentHash"],
        "color": color,
        "startedAt": now,
        "progressAt": now,
        "step": 0,
    }


def _new_release(t: _Tick, color: str) -> dict[str, Any]:
    st = t.st
    st["revision"] = int(st.get("revision") or st.get("stableRevision") or 0) + 1
    st["currentRevision"] = str(st["revision"])
    return _release_at_start(t, color)


def _start_release(t: _Tick, old: Mapping[str, Any] | None, want: str) -> dict[str, Any]:
    st, spec = t.st, t.spec
    stable = st["stableColor"]
    if old and old.get("switchedAt") and not old.get("abortedAt"):
        # The superseded release already serves all traffic: it becomes stable now.
        _complete_release(t, old, superseded=True)
        stable = st["stableColor"]
    elif old:
        t.event("Superseded", f"revision {old['revision']} superseded by a new template", warning=False)
        if old.get("abortedAt") is None:
            t.stats("superseded", at=False)
    st.pop("abort", None)
    st.pop("promote", None)
    color = other(stable)
    release = _new_release(t, color)
    t.actions.append(RecordRevision(release["revision"], want, t.obs.template))
    t.stats("releases")
    idle = t.color(color)
    if idle.available(want, spec.replicas) and idle.ready > 0:
        # Fast rollback: the warm idle colour already runs this template.
        release.update(fastRollback=True, promoted=True, prePromotionDone=True, step=len(spec.blue_green.steps))
        t.stats("rollbacks")
        t.event("FastRollback", f"{color} still runs this template: switching back at once (revision {release['revision']})")
    else:
        t.event("ReleaseStarted", f"revision {release['revision']} starts on {color}")
    st["release"] = release
    return release


def _held(t: _Tick, message: str, opens_at: dt.datetime | None) -> None:
    """Held by a release window or a freeze: still Progressing (kstatus Reconciling, never
    Stalled), woken when it opens, one Event per hold (not one per tick: the 'in 14h' changes)."""
    t.wake_at(opens_at)
    t.set_phase("Progressing", message, "HeldByPolicy")
    if t.old.get("reason") != "HeldByPolicy":
        t.event("HeldByPolicy", message)


def _held_start(t: _Tick, release: Mapping[str, Any] | None, want: str) -> bool:
    """Does a HoldBeforeStart policy or a freeze keep this new template from starting? Never a
    fast rollback (the warm idle colour already runs it), never while a release runs (it is
    superseded as before, and held at its next gate)."""
    if not t.obs.gates or (release and not release.get("abortedAt")):
        return False
    idle = t.color(other(t.st["stableColor"]))
    if idle.available(want, t.spec.replicas) and idle.ready > 0:
        return False
    h = hold(t.obs.gates, t.now, before_start=True)
    if h is None:
        return False
    _held(t, f"the new template waits: {h.message}", h.opens_at)
    return True


def _cancel_release(t: _Tick, release: Mapping[str, Any], why: str) -> None:
    st = t.st
    color = release["color"]
    st["activeColor"] = st["stableColor"]
    st["scaleDown"] = {
        "color": color,
        "at": iso(t.now + dt.timedelta(seconds=t.spec.blue_green.abort_scale_down_delay_seconds)),
    }
    st.pop("release", None)
    st.pop("promote", None)
    if release.get("switchedAt") and not release.get("abortedAt"):
        t.stats("rollbacks")
        t.event("RolledBack", f"traffic back on {st['stableColor']}: {why}", warning=True)
    else:
        t.event("ReleaseCancelled", f"revision {release['revision']} cancelled: {why}")


def _complete_release(t: _Tick, release: Mapping[str, Any], superseded: bool = False) -> None:
    st, bg = t.st, t.spec.blue_green
    old_stable = st["stableColor"]
    st.update(
        stableColor=release["color"],
        activeColor=release["color"],
        stableHash=release["hash"],
        stableRevision=release["revision"],
    )
    switched = parse_time(release.get("switchedAt")) or t.now
    at = max(switched + dt.timedelta(seconds=bg.scale_down_delay_seconds), t.now)
    st["scaleDown"] = {"color": old_stable, "at": iso(at)}
    st.pop("release", None)
    st.pop("promote", None)
    st.pop("abort", None)
    t.stats("promoted")
    started = parse_time(release.get("startedAt"))
    if started:
        st.setdefault("stats", {})["lastReleaseSeconds"] = round((t.now - started).total_seconds(), 3)
    how = " (superseded by a newer template while being verified)" if superseded else ""
    t.event("Promoted", f"revision {release['revision']} is live on {release['color']}{how}")


def _abort(t: _Tick, release: dict[str, Any], reason: str, message: str) -> None:
    """Teal's own abort: recorded in status exactly like a user's."""
    t.st["abort"] = {"revision": release["revision"], "reason": reason, "message": message, "at": iso(t.now)}


def _handle_abort(t: _Tick, release: dict[str, Any], abort: Mapping[str, Any]) -> None:
    st, bg = t.st, t.spec.blue_green
    stable = st["stableColor"]
    st["activeColor"] = stable
    if not release.get("abortedAt"):
        at = parse_time(abort.get("at")) or t.now
        release.clear()
        release.update(_release_at_start(t, other(stable)))
        release["abortedAt"] = iso(t.now)
        st["scaleDown"] = {
            "color": other(stable),
            "at": iso(max(at, t.now) + dt.timedelta(seconds=bg.abort_scale_down_delay_seconds)),
        }
        t.stats("aborted")
        t.event(
            "Aborted",
            f"revision {release['revision']} aborted ({abort.get('reason', 'Aborted')}): "
            f"{abort.get('message', '')}; all traffic on {stable}",
            warning=True,
        )
    msg = f"revision {release['revision']} aborted: {abort.get('message') or abort.get('reason')}"
    msg += f"; revision {st['stableRevision']} serves all traffic on {stable}"
    t.set_phase("Aborted", msg, str(abort.get("reason") or "Aborted"))


def _reject_release(t: _Tick, release: dict[str, Any], why: str) -> None:
    """The apiserver refuses the new colour (its Deployment or its pods): abort at once,
    traffic stays on the stable colour."""
    t.event("DeploymentRejected", f"revision {release['revision']}: {why}", warning=True)
    _abort(t, release, "DeploymentRejected", why)
    _handle_abort(t, release, t.st["abort"])


# ---------------------------------------------------------------- refused Deployments


def _note_rejection(t: _Tick) -> None:
    """Record a fresh refusal in status.rejected; forget one that no longer applies (the
    template changed, or the colour runs what was refused: it was accepted since)."""
    st, r = t.st, t.obs.rejected
    if r is not None:
        old = st.get("rejected") or {}
        again = (old.get("color"), old.get("hash"), old.get("replicas")) == (r.color, r.hash, r.replicas)
        st["rejected"] = {"color": r.color, "hash": r.hash, "replicas": r.replicas, "code": r.code,
                          "message": r.message, "at": iso(t.now),
                          "attempts": int(old.get("attempts") or 0) + 1 if again else 1}
    rej = st.get("rejected")
    if not rej:
        return
    c = t.color(rej.get("color"))
    accepted = c.exists and (c.hash, c.replicas) == (rej.get("hash"), rej.get("replicas"))
    if rej.get("hash") != t.obs.template_hash or accepted:
        st.pop("rejected", None)


def _refusal(t: _Tick, deploy: DeployColor) -> Mapping[str, Any] | None:
    """The recorded refusal of exactly this Deployment (colour, template, size), if any."""
    rej = t.st.get("rejected")
    if rej and (rej.get("color"), rej.get("hash"), rej.get("replicas")) == (deploy.color, deploy.hash, deploy.replicas):
        return rej
    return None


def _retry_due(t: _Tick, rej: Mapping[str, Any]) -> bool:
    """Only a 403 is sent again by itself, with a bounded backoff; 400/422 wait for a new template."""
    if int(rej.get("code") or 0) != 403:
        return False
    attempts = max(1, int(rej.get("attempts") or 1))
    delay = min(REJECTED_RETRY_MAX, REJECTED_RETRY_FIRST * 2 ** min(attempts - 1, 10))
    due = (parse_time(rej.get("at")) or t.now) + dt.timedelta(seconds=delay)
    if t.now >= due:
        return True
    t.wake_at(due)
    return False


def _refused_text(rej: Mapping[str, Any], then: bool = True) -> str:
    text = f"the apiserver refused the Deployment for {rej.get('color')} ({rej.get('code')}): {rej.get('message')}"
    if not then:
        return text
    if int(rej.get("code") or 0) == 403:
        return text + "; tried again with backoff (a quota or policy may be lifted)"
    return text + "; not sent again until the template changes"


def _run_release(t: _Tick, release: dict[str, Any]) -> None:
    st, spec, bg = t.st, t.spec, t.spec.blue_green
    rev, want, color = release["revision"], release["hash"], release["color"]
    stable = st["stableColor"]

    abort = t.abort_for(rev)
    if abort:
        _handle_abort(t, release, abort)
        return
    if release.get("abortedAt"):
        # Retry: the abort was withdrawn (kubectl teal retry). Start the same revision afresh.
        release.clear()
        release.update(_release_at_start(t, other(stable)))
        st.pop("promote", None)
        st.pop("rejected", None)  # a retry sends the Deployment again
        t.stats("retries", at=False)
        t.event("Retry", f"revision {rev} starts again on {release['color']}")

    def progressed(stage: str) -> None:
        if release.get("stage") != stage:
            release["stage"] = stage
            release["progressAt"] = iso(t.now)

    def deadline_passed(what: str) -> bool:
        since = parse_time(release.get("progressAt")) or t.now
        deadline = since + dt.timedelta(seconds=bg.progress_deadline_seconds)
        if t.now >= deadline:
            _abort(t, release, "ProgressDeadlineExceeded", f"{what} after {bg.progress_deadline_seconds}s")
            _handle_abort(t, release, t.st["abort"])
            return True
        t.wake_at(deadline)
        return False

    def analysis_gate(run: str, step: int | None = None) -> bool:
        """True when the analysis run `run` has passed (or none is configured)."""
        names = _analysis_names(spec, run)
        if not names:
            return True
        key = f"{rev}:{run}" if step is None else f"{rev}:{run}:{step}"
        release["analysisKey"] = key
        a = t.obs.analysis
        if a is None or a.key != key:
            progressed(f"Analysis:{run}")
            t.set_phase("Progressing", f"revision {rev}: {run} analysis starting on {color}", "Analysis")
            t.wake_at(t.now)
            return False
        if a.error:
            _abort(t, release, "AnalysisError", a.error)
            _handle_abort(t, release, t.st["abort"])
            return False
        if a.verdict == "Successful":
            release.pop("analysisKey", None)
            release.setdefault("passed", []).append(key)
            t.event("AnalysisPassed", f"revision {rev}: {run} analysis passed: {a.message}")
            return True
        if a.verdict == "Failed":
            _abort(t, release, "AnalysisFailed", f"{run} analysis failed: {a.message}")
            _handle_abort(t, release, t.st["abort"])
            return False
        if a.verdict == "Inconclusive":
            if t.promote_for(rev, step if step is not None else -1) or t.full_promote(rev):
                release.pop("analysisKey", None)
                release.setdefault("passed", []).append(key)
                t.event("AnalysisOverridden", f"revision {rev}: inconclusive {run} analysis promoted by a user")
                return True
            progressed(f"Inconclusive:{run}")
            t.set_phase(
                "Paused",
                f"revision {rev}: {run} analysis inconclusive ({a.message}); waiting for promote or abort",
                "AnalysisInconclusive",
            )
            return False
        progressed(f"Analysis:{run}")
        t.wake_at(a.next_at)
        t.set_phase("Progressing", f"revision {rev}: {run} analysis running on {color}: {a.message}", "Analysis")
        return False

    def passed(run: str, step: int | None = None) -> bool:
        key = f"{rev}:{run}" if step is None else f"{rev}:{run}:{step}"
        return key in (release.get("passed") or [])

    def held(what: str) -> bool:
        """A window or freeze holds the next move of traffic (never a fast rollback)."""
        h = None if release.get("fastRollback") else hold(t.obs.gates, t.now)
        if h is None:
            return False
        progressed("Held")
        _held(t, f"revision {rev} on {color} waits before {what}: {h.message}", h.opens_at)
        return True

    # -- after the switch: verify, then make it stable
    if release.get("switchedAt"):
        st["activeColor"] = color
        if not t.servable(color):
            _abort(t, release, "NewColorUnavailable", f"{color} lost all ready pods after the switch")
            _handle_abort(t, release, t.st["abort"])
            return
        if not passed("postPromotion") and not release.get("fastRollback"):
            if not analysis_gate("postPromotion"):
                return
        _complete_release(t, release)
        t.set_phase("Healthy", f"revision {rev} is live on {color}", "Healthy")
        return

    # -- deploy the new colour (at preview size until promoted)
    full = spec.replicas
    scaled = bool(release.get("promoted")) or bg.preview_replicas is None
    target = full if scaled else min(bg.preview_replicas, full)
    obs = t.color(color)
    if not (obs.exists and obs.hash == want and obs.replicas == target):
        deploy = DeployColor(color, t.obs.template, want, rev, target)
        refused = _refusal(t, deploy)
        if refused is not None:
            _reject_release(t, release, _refused_text(refused, then=False))
            return
        t.actions.append(deploy)
    if (st.get("scaleDown") or {}).get("color") == color:
        st.pop("scaleDown", None)
    if obs.refused_pods(want):
        _reject_release(t, release, f"{color} cannot create pods: {obs.failure}")
        return
    if not obs.available(want, target) or (target > 0 and obs.ready == 0):
        stage = "Deploying" if not scaled or not bg.preview_replicas else "ScalingUp"
        progressed(stage)
        fresh = obs.updated_available if obs.hash == want else 0
        counts = f"{fresh}/{target} pods of revision {rev} available"
        if obs.failure and obs.hash == want:
            counts += f"; pods cannot be created: {obs.failure}"
        if deadline_passed(f"{color} not available ({counts})"):
            return
        t.set_phase("Progressing", f"revision {rev}: waiting for {color} to become available ({counts})", stage)
        return
    release["previewReady"] = True

    if spec.paused:
        t.set_phase("Paused", f"revision {rev} on {color}: paused by spec.paused", "PausedBySpec")
        return

    # -- before any user traffic
    if not release.get("prePromotionDone"):
        if not analysis_gate("prePromotion"):
            return
        release["prePromotionDone"] = True

    steps = bg.steps
    if not steps and not release.get("promoted"):
        if not (bg.auto_promote or t.promote_for(rev, None)):
            progressed("AwaitingPromotion")
            t.set_phase("Paused", f"revision {rev} ready on {color}; waiting for promote", "AwaitingPromotion")
            return
        if held("promotion"):
            return
        release["promoted"] = True
        if target != full:
            return _run_release(t, release)  # scale up to full size first
    elif steps and not release.get("promoted"):
        if held("promotion"):
            return
        release["promoted"] = True  # steps gate the traffic from here on
        if target != full:
            return _run_release(t, release)

    # -- the steps (weights through a router; pauses)
    if t.full_promote(rev):
        release["step"] = len(steps)
    while release.get("step", 0) < len(steps):
        i = release["step"]
        step: Step = steps[i]
        st["currentStep"] = i + 1
        if step.set_weight is not None:
            w = step.set_weight
            if bg.traffic_routing is None:
                if w >= 100:
                    release["step"] = len(steps)
                    break
                _next_step(t, release)
                continue
            if release.get("weight", 0) != w and held(f"step {i + 1}/{len(steps)} ({w}%)"):
                return
            release["weight"] = w
            if not t.servable(color) and w > 0:
                _abort(t, release, "NewColorUnavailable", f"{color} has no ready pods at step {i + 1}")
                _handle_abort(t, release, t.st["abort"])
                return
            if w < 100 and not t.servable(stable):
                t.set_phase(
                    "Degraded",
                    f"step {i + 1}/{len(steps)}: the stable colour {stable} has no ready pods, so {100 - w}% "
                    "cannot go there; waiting for it to recover (or promote --full)",
                    "StableUnavailable",
                )
                return
            current = dict(t.obs.weights or {})
            if current.get(color, 0) != w or current.get(stable, 0) != 100 - w:
                progressed(f"Step{i + 1}")
                t.set_phase(
                    "Progressing", f"step {i + 1}/{len(steps)}: setting {w}% to {color}", "SettingWeights"
                )
                return
            if not passed("steps", i) and not analysis_gate("steps", i):
                return
            _next_step(t, release)
            continue
        # a pause
        if step.pause_seconds is None:
            if t.promote_for(rev, i + 1):
                _next_step(t, release)
                continue
            progressed(f"Step{i + 1}")
            t.set_phase(
                "Paused", f"step {i + 1}/{len(steps)}: paused until promoted; {_weight_text(t, release)}", "PausedAtStep"
            )
            return
        started = parse_time(release.get("stepStartedAt")) or t.now
        release.setdefault("stepStartedAt", iso(started))
        end = started + dt.timedelta(seconds=step.pause_seconds)
        if t.now >= end or t.promote_for(rev, i + 1):
            _next_step(t, release)
            continue
        t.wake_at(end)
        left = (end - t.now).total_seconds()
        t.set_phase(
            "Paused", f"step {i + 1}/{len(steps)}: pause {left:.0f}s left; {_weight_text(t, release)}", "PausedAtStep"
        )
        return

    # -- the switch
    release.pop("weight", None)
    if not t.servable(color):
        t.set_phase("Progressing", f"revision {rev}: {color} has no ready pods; not switching", "WaitingForPods")
        return
    if held("the switch"):
        return
    release["switchedAt"] = iso(t.now)
    release["stage"] = "Switched"
    st["activeColor"] = color
    t.event("Switched", f"all active Services now select {color} (revision {rev})")
    if release.get("fastRollback") or not _analysis_names(spec, "postPromotion"):
        _complete_release(t, release)
        t.set_phase("Healthy", f"revision {rev} is live on {color}", "Healthy")
        return
    analysis_gate("postPromotion")


def _next_step(t: _Tick, release: dict[str, Any]) -> None:
    release["step"] = release.get("step", 0) + 1
    release["stepStartedAt"] = iso(t.now)
    release["progressAt"] = iso(t.now)


def _weight_text(t: _Tick, release: Mapping[str, Any]) -> str:
    if t.spec.blue_green.traffic_routing is None:
        return f"{release['color']} gets no traffic yet"
    w = release.get("weight", 0)
    return f"{w}% to {release['color']}"


def _analysis_names(spec: RolloutSpec, run: str) -> list[str]:
    analysis = spec.analysis or {}
    return list(analysis.get(run) or [])


# ---------------------------------------------------------------- convergence


def _desired_weights(t: _Tick) -> dict[str, int] | None:
    st = t.st
    active = st.get("activeColor")
    if active is None:
        return None
    release = st.get("release") or {}
    if "weight" in release and not release.get("abortedAt") and t.abort_for(release.get("revision")) is None:
        w = int(release["weight"])
        return {release["color"]: w, active: 100 - w}
    return {active: 100, other(active): 0}


def _enforce_traffic(t: _Tick) -> None:
    """Point Services and routes where status says, but never at a colour without ready pods."""
    st, spec = t.st, t.spec
    if st.get("reason") in ("ServiceNotFound", "TemplateNotFound", "ServiceClaimed"):
        return
    active = st.get("activeColor")
    if active is None:
        return
    if not t.servable(active):
        # Nothing to switch to safely: leave every selector where it is.
        stable = st.get("stableColor")
        if stable and stable != active and t.servable(stable):
            st["activeColor"] = active = stable
        else:
            return
    for name in spec.blue_green.active_services:
        if (t.obs.services.get(name) or ServiceObs()).color != active:
            t.actions.append(SelectColor(name, active))
    preview = spec.blue_green.preview_service
    if preview:
        release = st.get("release") or {}
        target = release.get("color") if release and not release.get("abortedAt") else active
        if target and t.servable(target) and (t.obs.services.get(preview) or ServiceObs()).color != target:
            t.actions.append(SelectColor(preview, target))
    if spec.blue_green.traffic_routing is not None and not t.obs.router_error:
        want = _desired_weights(t)
        if want is not None:
            if any(w > 0 and not t.servable(c) for c, w in want.items()):
                want = {active: 100, other(active): 0}
            current = dict(t.obs.weights or {})
            if any(current.get(c, 0) != w for c, w in want.items()):
                t.actions.append(SetWeights(tuple(sorted(want.items()))))


def _honest_phase(t: _Tick) -> None:
    """Status is written before the actions run: never call a release Healthy while its
    traffic is still being moved (the next reconcile, right after the actions, will)."""
    moving = [a for a in t.actions if isinstance(a, SetWeights) or (
        isinstance(a, SelectColor) and a.service in t.spec.blue_green.active_services)]
    if moving and t.st.get("phase") == "Healthy":
        t.set_phase("Progressing", f"moving traffic to {t.st.get('activeColor')}", "Switching")


def _guard_stable(t: _Tick) -> None:
    """A release in progress (or a Healthy phase) never hides an outage of the stable colour
    that serves the traffic: with no ready pod it is Degraded/StableUnavailable (a Warning
    Event, Stalled=True) until it recovers; _ensure_stable meanwhile restores it."""
    st = t.st
    c = st.get("stableColor")
    if not c or st.get("activeColor") != c or t.spec.replicas == 0 or st.get("phase") not in (
            "Healthy", "Progressing", "Paused"):
        return
    obs = t.color(c)
    if obs.ready > 0:
        return
    if not obs.exists:
        restorable = t.obs.template_hash == st.get("stableHash") or t.obs.stable_template is not None
        how = "its Deployment is missing; " + ("it is being made again" if restorable else
                                               "its template is not in the revision history: it cannot be made again")
    else:
        how = f"0/{t.spec.replicas} pods ready"
    message = f"the stable colour {c} (revision {st.get('stableRevision')}) has no ready pods: {how}"
    if st.get("release"):
        message += f"; meanwhile: {st.get('message')}"
    t.set_phase("Degraded", message, "StableUnavailable")


def _scale_down_idle(t: _Tick) -> None:
    st = t.st
    pending = st.get("scaleDown")
    if not pending:
        return
    color = pending["color"]
    release = st.get("release") or {}
    if color == st.get("activeColor") or (release.get("color") == color and not release.get("abortedAt")):
        st.pop("scaleDown", None)
        return
    at = parse_time(pending["at"]) or t.now
    if t.now < at:
        t.wake_at(at)
        return
    if t.color(color).replicas != 0:
        t.actions.append(ScaleColor(color, 0))
        if not pending.get("announced"):
            pending["announced"] = True
            t.event("ScaledDown", f"{color} scaled to zero")
    else:
        st.pop("scaleDown", None)


def _observed_fields(t: _Tick) -> None:
    st = t.st
    release = st.get("release") or {}
    st["previewColor"] = release.get("color") if release and not release.get("abortedAt") else None
    if not release:
        st.pop("currentStep", None)
    if t.obs.weights is not None:
        st["weights"] = {c: int(t.obs.weights.get(c, 0)) for c in COLORS}
    active = st.get("activeColor")
    st["replicas"] = t.spec.replicas
    st["readyReplicas"] = t.color(active).ready if active else 0
    sel = dict(t.spec.match_labels)
    st["selector"] = ",".join(f"{k}={v}" for k, v in sorted(sel.items()))


def _condition(t: _Tick, type_: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    value = "True" if status else "False"
    old = next((c for c in (t.old.get("conditions") or []) if c.get("type") == type_), None)
    changed = not old or old.get("status") != value
    cond = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": iso(t.now) if changed else old.get("lastTransitionTime", iso(t.now)),
    }
    if "observedGeneration" in t.st:
        cond["observedGeneration"] = t.st["observedGeneration"]
    return cond


def _conditions(t: _Tick) -> None:
    st = t.st
    phase, reason, message = st.get("phase", "Progressing"), st.get("reason", ""), st.get("message", "")
    ready = phase == "Healthy"
    stalled = phase in ("Degraded", "Aborted")
    reconciling = phase in ("Progressing", "Paused")
    st["conditions"] = [
        _condition(t, "Ready", ready, reason if not ready else "Healthy", message),
        _condition(t, "Reconciling", reconciling, reason if reconciling else "Idle", message if reconciling else ""),
        _condition(t, "Stalled", stalled, reason if stalled else "NotStalled", message if stalled else ""),
    ]
    if st.get("phase") != t.old.get("phase") and phase in PHASES:
        if phase == "Degraded":
            t.event(reason or "Degraded", message, warning=True)
        elif phase == "Paused":
            t.event(reason or "Paused", message)
