"""The Rollout's status, typed: parsed once from the status dict at the edge and dumped back.

The persisted format is the one the previous (dict-based) core wrote, key for key and value
for value: users, printer columns and `kubectl teal` read it, and a previous operator version
must read what this one writes. So a record keeps the dict it was read from: a field the core
did not change is written back exactly as it was read (even a value this model would spell
differently), and keys the model does not know (another component's, a newer version's)
round-trip untouched. `Status.load(d).dump() == d`, byte for byte once serialised.

A field holding None is absent from the dict (the core removes it by setting None); the one
exception is `previewColor`, which the core always writes, null when there is no preview.

Also here: `Phase` (the status.phase values, used by the core, the metrics and the CLI),
`Outcome` and `HistoryEntry` (status.history: how each finished release ended),
`Stage` (where a release is), and `RunKey` (which analysis run belongs to which revision and
step; persisted as "<revision>:<run>[:<step>]" in release.analysisKey and release.passed).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import functools
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar


class Phase(enum.StrEnum):
    """status.phase: what a user (and kstatus, through the conditions) sees."""

    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    DEGRADED = "Degraded"
    ABORTED = "Aborted"


PHASES: tuple[str, ...] = tuple(p.value for p in Phase)


class Outcome(enum.StrEnum):
    """How a release ended (status.history[].outcome, status.stats.outcomes, the metrics and
    notifications). A release "reached users" when user traffic went to it (switchedAt set)."""

    PROMOTED = "Promoted"  # all traffic on the new revision, release done
    ABORTED = "Aborted"  # stopped before user traffic reached it
    REVERTED = "Reverted"  # stopped after user traffic reached it: a change failure
    SUPERSEDED = "Superseded"  # a newer template replaced it mid-release
    ROLLED_BACK = "RolledBack"  # a release to an older revision (undo), done


OUTCOMES: tuple[str, ...] = tuple(o.value for o in Outcome)


class Stage(enum.StrEnum):
    """Where a release is. The core runs a release through these in order, within one
    decision as far as the world allows (teal.core: one handler per stage):

    Deploying -> PrePromotion -> Promotion -> Steps -> Switching -> PostPromotion -> (stable)
    and, from any of them before PostPromotion completes, Aborted (traffic on the stable colour).

    Deploying is checked again on every decision before the switch (the new colour must stay
    available at its target size); Promotion waits for a promote (or autoPromote) and scales the
    preview up to full size, going back through Deploying until it is available."""

    DEPLOYING = "Deploying"
    PRE_PROMOTION = "PrePromotion"
    PROMOTION = "Promotion"
    STEPS = "Steps"
    SWITCHING = "Switching"
    POST_PROMOTION = "PostPromotion"
    ABORTED = "Aborted"


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclasses.dataclass(frozen=True, order=True)
class RunKey:
    """One analysis run of one revision: a gate (prePromotion, steps, postPromotion), and for
    steps the index of the step."""

    revision: str
    run: str
    step: int | None = None

    def __str__(self) -> str:
        return f"{self.revision}:{self.run}" if self.step is None else f"{self.revision}:{self.run}:{self.step}"

    @classmethod
    def parse(cls, text: str) -> RunKey:
        parts = str(text).split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ValueError(f"not an analysis run key: {text!r}")
        return cls(parts[0], parts[1], int(parts[2]) if len(parts) == 3 else None)


# ---------------------------------------------------------------- records


class _Unset(enum.Enum):
    UNSET = "unset"


UNSET = _Unset.UNSET
T = TypeVar("T")
R = TypeVar("R", bound="Record")


@dataclasses.dataclass(frozen=True)
class Conv(Generic[T]):
    """How a field's value is read from (load) and written to (dump) the status dict."""

    load: Callable[[Any], T]
    dump: Callable[[T], Any]


def _same(v: Any) -> Any:
    return v


def _str(v: Any) -> str:
    if isinstance(v, (dict, list)):
        raise ValueError("not a scalar")
    return str(v)


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError("not a number")
    return int(v)


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("not a number")
    return float(v)


def _bool(v: Any) -> bool:
    return bool(v)


def _time(v: Any) -> dt.datetime:
    t = parse_time(_str(v))
    if t is None:
        raise ValueError("empty time")
    return t


def _phase(v: Any) -> Phase:
    return Phase(v)


def _keys(v: Any) -> list[RunKey]:
    if not isinstance(v, list):
        raise ValueError("not a list")
    return [RunKey.parse(x) for x in v]


STR: Conv[str] = Conv(_str, _same)
NUM: Conv[float] = Conv(_num, _same)  # seconds: written as computed (rounded by the writer)
INT: Conv[int] = Conv(_int, _same)
BOOL: Conv[bool] = Conv(_bool, _same)
TIME: Conv[dt.datetime] = Conv(_time, iso)
PHASE: Conv[Phase] = Conv(_phase, str)
KEY: Conv[RunKey] = Conv(RunKey.parse, str)
OUTCOME: Conv[Outcome] = Conv(Outcome, str)
KEYS: Conv[list[RunKey]] = Conv(_keys, lambda ks: [str(k) for k in ks])
DICT: Conv[dict[str, Any]] = Conv(lambda v: dict(v), _same)  # Record.copy() isolates what it changes
LIST: Conv[list[Any]] = Conv(lambda v: list(v), _same)


def _record(cls: type[R]) -> Conv[R]:
    def load(v: Any) -> R:
        if not isinstance(v, Mapping) or not v:
            raise ValueError("not an object (or an empty one: read as absent, as before)")
        return cls.read(v)

    return Conv(load, lambda r: r.shallow_dump())


def persisted(name: str, conv: Conv[Any], default: Any = None, *, nullable: bool = False) -> Any:
    """A field persisted under `name` (see Record)."""
    meta = {"key": name, "conv": conv, "nullable": nullable}
    if isinstance(default, (list, dict)):
        raise TypeError("mutable default")
    return dataclasses.field(default=default, metadata=meta)


@functools.cache
def _keyed_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    """The fields of a record that map to a status key (fixed per class, so computed once)."""
    return [f for f in dataclasses.fields(cls) if "key" in f.metadata]


@dataclasses.dataclass(kw_only=True)
class Record:
    """A typed view of one status object that writes back what it read (see the module doc)."""

    _raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    _loaded: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def _fields(cls) -> list[dataclasses.Field[Any]]:
        return _keyed_fields(cls)  # type: ignore[arg-type]  # a class is hashable; mypy checks the instances

    @classmethod
    def load(cls: type[R], d: Mapping[str, Any]) -> R:
        """A record of `d` to read and change (`d` itself is never changed)."""
        return cls.read(d).copy()

    @classmethod
    def read(cls: type[R], d: Mapping[str, Any]) -> R:
        """A read-only record of `d`: its values are what it remembers as read, so it must not
        be changed (in place); `copy()` gives one that may be."""
        values: dict[str, Any] = {}
        for f in cls._fields():
            raw = d.get(f.metadata["key"])
            if raw is None:
                continue
            try:
                values[f.name] = f.metadata["conv"].load(raw)
            except (TypeError, ValueError, KeyError):
                continue  # unreadable: the default here, written back as it was
        obj = cls(**values)
        obj._raw = d if isinstance(d, dict) else dict(d)  # never changed: dump() starts from a copy
        obj._loaded = values
        return obj

    def copy(self: R) -> R:
        """A working copy: changing it, in place too, leaves this record and what it read alone."""
        new = copy.copy(self)
        for f in self._fields():
            v = getattr(self, f.name)
            if isinstance(v, Record):
                setattr(new, f.name, v.copy())
            elif isinstance(v, dict | list):
                setattr(new, f.name, copy.deepcopy(v))
        return new

    def dump(self) -> dict[str, Any]:
        """The status dict: what was read, with what changed (shares nothing with the input)."""
        return copy.deepcopy(self.shallow_dump())

    def shallow_dump(self) -> dict[str, Any]:
        out = dict(self._raw)
        for f in self._fields():
            cur = getattr(self, f.name)
            if cur == self._loaded.get(f.name, f.default):
                continue  # unchanged: as it was read (present or absent)
            name = f.metadata["key"]
            if cur is UNSET or (cur is None and not f.metadata["nullable"]):
                out.pop(name, None)
            else:
                out[name] = None if cur is None else f.metadata["conv"].dump(cur)
        return out


@dataclasses.dataclass(kw_only=True)
class Abort(Record):
    """status.abort: an abort of `revision`, by a user (kubectl teal abort) or by Teal."""

    revision: str | None = persisted("revision", STR)
    reason: str | None = persisted("reason", STR)
    message: str | None = persisted("message", STR)
    at: dt.datetime | None = persisted("at", TIME)


@dataclasses.dataclass(kw_only=True)
class Promote(Record):
    """status.promote: a promote request (written by the CLI): one step, the next gate, or full."""

    revision: str | None = persisted("revision", STR)
    step: int | None = persisted("step", INT)
    full: bool = persisted("full", BOOL, False)


@dataclasses.dataclass(kw_only=True)
class ScaleDown(Record):
    """status.scaleDown: the idle colour's pending scale-down."""

    color: str | None = persisted("color", STR)
    at: dt.datetime | None = persisted("at", TIME)
    announced: bool = persisted("announced", BOOL, False)


@dataclasses.dataclass(kw_only=True)
class Rejected(Record):
    """status.rejected: the apiserver's refusal of a colour's Deployment."""

    color: str | None = persisted("color", STR)
    hash: str | None = persisted("hash", STR)
    replicas: int | None = persisted("replicas", INT)
    code: int | None = persisted("code", INT)
    message: str | None = persisted("message", STR)
    at: dt.datetime | None = persisted("at", TIME)
    attempts: int | None = persisted("attempts", INT)


@dataclasses.dataclass(kw_only=True)
class Release(Record):
    """status.release: the release in progress. Its stage is derived from what it has done
    (switchedAt, abortedAt, promoted, prePromotionDone, step), the flags that earlier versions
    persist; `progress` is the last point of progress (the deadline counts from progressAt)."""

    revision: str = persisted("revision", STR, "")
    hash: str = persisted("hash", STR, "")
    color: str = persisted("color", STR, "")
    started_at: dt.datetime | None = persisted("startedAt", TIME)
    progress_at: dt.datetime | None = persisted("progressAt", TIME)
    step: int | None = persisted("step", INT)
    progress: str | None = persisted("stage", STR)  # "Deploying", "Analysis:prePromotion", "Step2", "Switched", ...
    analysis_key: RunKey | None = persisted("analysisKey", KEY)
    passed: list[RunKey] | None = persisted("passed", KEYS)
    preview_ready: bool = persisted("previewReady", BOOL, False)
    pre_promotion_done: bool = persisted("prePromotionDone", BOOL, False)
    promoted: bool = persisted("promoted", BOOL, False)
    fast_rollback: bool = persisted("fastRollback", BOOL, False)
    weight: int | None = persisted("weight", INT)
    step_started_at: dt.datetime | None = persisted("stepStartedAt", TIME)
    # for its history entry (status.history): the images and the template's teal.dev/source-time
    # as the release started, when user traffic first reached it (a weight > 0 or the switch),
    # and the time its analysis runs took so far
    images: list[str] | None = persisted("images", LIST)
    source_time: dt.datetime | None = persisted("sourceTime", TIME)
    traffic_at: dt.datetime | None = persisted("trafficAt", TIME)
    analysis_seconds: float | None = persisted("analysisSeconds", NUM)
    switched_at: dt.datetime | None = persisted("switchedAt", TIME)
    aborted_at: dt.datetime | None = persisted("abortedAt", TIME)
    # time held by a release window or a freeze (teal.policy): since when, and the total of
    # holds that ended; not counted in the release's duration (stats.lastReleaseSeconds)
    held_since: dt.datetime | None = persisted("heldSince", TIME)
    held_seconds: int | None = persisted("heldSeconds", INT)

    @property
    def stage(self) -> Stage:
        """The furthest stage this release reached (the core re-checks Deploying before it)."""
        if self.aborted_at is not None:
            return Stage.ABORTED
        if self.switched_at is not None:
            return Stage.POST_PROMOTION
        if not self.preview_ready:
            return Stage.DEPLOYING
        if not self.pre_promotion_done:
            return Stage.PRE_PROMOTION
        if not self.promoted:
            return Stage.PROMOTION
        return Stage.STEPS

    def has_passed(self, run: RunKey) -> bool:
        return run in (self.passed or [])


@dataclasses.dataclass(kw_only=True)
class AnalysisState(Record):
    """status.analysisRun: teal.analysis's state of the run the release waits for. The engine
    owns its format; what says which run it belongs to is typed, the rest is kept as written."""

    key: RunKey | None = persisted("key", KEY)
    started_at: dt.datetime | None = persisted("startedAt", TIME)
    verdict: str | None = persisted("verdict", STR)
    message: str | None = persisted("message", STR)
    metrics: dict[str, Any] | None = persisted("metrics", DICT)  # per metric: its measurements so far

    def is_for(self, run: RunKey | None) -> bool:
        return run is not None and self.key == run


@dataclasses.dataclass(kw_only=True)
class HistoryEntry(Record):
    """One finished release in status.history (newest first, bounded; status.stats.outcomes
    counts every one ever recorded). Written once, when the release ends; a Reverted entry
    gets restoredAt/restoreSeconds later, once all traffic is observed back on stable.

    switchedAt: user traffic first reached it (a weight > 0, or the switch); None if never.
    detectedAt -> restoredAt (Reverted): the fault detected (the abort) -> all traffic
    observed back on the stable colour. leadTimeSeconds: switchedAt minus the template's
    annotation teal.dev/source-time (RFC 3339, set by CI from the commit time)."""

    revision: str = persisted("revision", STR, "")
    hash: str | None = persisted("hash", STR)
    images: list[str] | None = persisted("images", LIST)
    started_at: dt.datetime | None = persisted("startedAt", TIME)
    switched_at: dt.datetime | None = persisted("switchedAt", TIME)
    finished_at: dt.datetime | None = persisted("finishedAt", TIME)
    outcome: Outcome | None = persisted("outcome", OUTCOME)
    reason: str | None = persisted("reason", STR)
    message: str | None = persisted("message", STR)
    detected_at: dt.datetime | None = persisted("detectedAt", TIME)
    restored_at: dt.datetime | None = persisted("restoredAt", TIME)
    restore_seconds: float | None = persisted("restoreSeconds", NUM)
    lead_time_seconds: float | None = persisted("leadTimeSeconds", NUM)
    analysis_seconds: float | None = persisted("analysisSeconds", NUM)

    @property
    def key(self) -> str:
        """Identifies the entry (a retried revision has several): "<revision>@<startedAt>"."""
        return f"{self.revision}@{iso(self.started_at) if self.started_at else ''}"

    @property
    def reached_users(self) -> bool:
        return self.switched_at is not None


def _history(v: Any) -> list[HistoryEntry]:
    if not isinstance(v, list) or not all(isinstance(e, Mapping) for e in v):
        raise ValueError("not a list of objects")
    return [HistoryEntry.read(e) for e in v]


HISTORY: Conv[list[HistoryEntry]] = Conv(_history, lambda es: [e.shallow_dump() for e in es])


def history_of(status: Mapping[str, Any] | None) -> list[HistoryEntry]:
    """status.history, read (newest first; [] when absent or unreadable)."""
    try:
        return _history((status or {}).get("history") or [])
    except ValueError:
        return []


def history_added(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[HistoryEntry]:
    """The entries a status write adds (oldest first): for metrics and notifications, which
    compare the status before and after a reconcile."""
    seen = {e.key for e in history_of(old)}
    return [e for e in reversed(history_of(new)) if e.key not in seen]


def history_restored(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[HistoryEntry]:
    """Reverted entries whose restore (restoredAt, restoreSeconds) this status write records."""
    done = {e.key for e in history_of(old) if e.restored_at is not None}
    return [e for e in reversed(history_of(new)) if e.restored_at is not None and e.key not in done]


@dataclasses.dataclass(kw_only=True)
class Status(Record):
    """The Rollout's status (the CRD schema and docs/status-and-api.md describe every field)."""

    observed_generation: int | None = persisted("observedGeneration", INT)
    phase: Phase | None = persisted("phase", PHASE)
    message: str | None = persisted("message", STR)
    reason: str | None = persisted("reason", STR)
    # what serves traffic and what is proven
    active_color: str | None = persisted("activeColor", STR)
    stable_color: str | None = persisted("stableColor", STR)
    stable_hash: str | None = persisted("stableHash", STR)
    stable_revision: str | None = persisted("stableRevision", STR)
    # what the spec asks for
    current_revision: str | None = persisted("currentRevision", STR)
    current_hash: str | None = persisted("currentHash", STR)
    revision: int | None = persisted("revision", INT)  # the last revision number given out
    # the first release, before anything is stable
    first_color: str | None = persisted("firstColor", STR)
    first_release_started_at: dt.datetime | None = persisted("firstReleaseStartedAt", TIME)
    first_release_hash: str | None = persisted("firstReleaseHash", STR)
    release: Release | None = persisted("release", _record(Release))
    abort: Abort | None = persisted("abort", _record(Abort))
    promote: Promote | None = persisted("promote", _record(Promote))
    scale_down: ScaleDown | None = persisted("scaleDown", _record(ScaleDown))
    rejected: Rejected | None = persisted("rejected", _record(Rejected))
    stats: dict[str, Any] | None = persisted("stats", DICT)
    history: list[HistoryEntry] | None = persisted("history", HISTORY)  # finished releases, newest first
    # observed, for users and printer columns
    preview_color: str | None | _Unset = persisted("previewColor", STR, UNSET, nullable=True)
    current_step: int | None = persisted("currentStep", INT)
    weights: dict[str, Any] | None = persisted("weights", DICT)
    replicas: int | None = persisted("replicas", INT)
    ready_replicas: int | None = persisted("readyReplicas", INT)
    selector: str | None = persisted("selector", STR)
    conditions: list[Any] | None = persisted("conditions", LIST)
    # the analysis engine's state of the running analysis (teal.analysis), and its measurements
    analysis_run: AnalysisState | None = persisted("analysisRun", _record(AnalysisState))
    analysis: list[Any] | None = persisted("analysis", LIST)

    def condition(self, type_: str) -> Mapping[str, Any] | None:
        return next((c for c in self.conditions or [] if isinstance(c, Mapping) and c.get("type") == type_), None)


def persisted_paths(cls: type[Record] = Status, prefix: str = "status") -> set[str]:
    """Every status path the typed status can write ("status.release.analysisKey", ...)."""
    out: set[str] = set()
    hints: dict[str, type[Record]] = {
        "release": Release,
        "abort": Abort,
        "promote": Promote,
        "scaleDown": ScaleDown,
        "rejected": Rejected,
        "history[]": HistoryEntry,
    }
    for f in cls._fields():
        path = f"{prefix}.{f.metadata['key']}"
        out.add(path)
        if cls is not Status:
            continue
        if f.metadata["key"] in hints:
            out |= persisted_paths(hints[f.metadata["key"]], path)
        elif f"{f.metadata['key']}[]" in hints:
            out |= persisted_paths(hints[f"{f.metadata['key']}[]"], f"{path}[]")
    return out
