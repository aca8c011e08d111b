"""Release windows: a pure evaluator (no I/O, no clock) of when a release may move.

A policy has allow windows and deny windows in one IANA time zone. A time is *open* when it
lies in some allow window and in no deny window (deny wins). Windows come in three kinds:

- weekday/time ranges: ``{name, days: [Mon, ...], start: "09:00", end: "16:00"}``; an end at or
  before the start runs past midnight into the next day; ``end: "24:00"`` is midnight;
- cron start plus duration: ``{name, schedule: "0 22 * * 1-5", duration: "2h"}`` (five fields,
  numbers, ``*``, ranges, lists, steps, three-letter day and month names; day-of-month and
  day-of-week are OR-ed when both are restricted, as in cron);
- absolute ranges: ``{name, from: "2026-12-24T00:00", until: "2027-01-04T00:00"}`` (local times).

Local times are wall-clock times in the policy's zone, turned into instants with zoneinfo:
a time that does not exist (the spring-forward gap) is read with the offset before the
change, so it lands as far after the gap as it was into it; a time that happens twice (the
fall-back fold) means its first occurrence. A cron duration is elapsed time, not wall time.

No cron library: croniter is not in the environment and adding it rebuilds everyone's
virtualenv; its DST handling has also been a source of bugs. The subset here is small and
fully tested (tests/test_policy.py).
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import re
import zoneinfo
from collections.abc import Iterator, Mapping
from typing import Any

UTC = dt.UTC
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
MAX_DURATION = dt.timedelta(days=7)
HORIZON = dt.timedelta(days=4 * 366)  # a 29 February window opens within four years
_CHUNK = dt.timedelta(days=31)
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$|^24:00$")
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


class PolicyError(ValueError):
    """A policy that cannot be evaluated (unknown zone, invalid cron, ...)."""


# ---------------------------------------------------------------- cron subset


@dataclasses.dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    mdays: frozenset[int]
    months: frozenset[int]
    wdays: frozenset[int]  # 0 = Monday, as datetime.weekday()
    mday_any: bool
    wday_any: bool

    def day_matches(self, d: dt.date) -> bool:
        if d.month not in self.months:
            return False
        m, w = d.day in self.mdays, d.weekday() in self.wdays
        if self.mday_any or self.wday_any:
            return m and w
        return m or w

    def times(self) -> list[dt.time]:
        return [dt.time(h, m) for h in sorted(self.hours) for m in sorted(self.minutes)]


def _field(text: str, lo: int, hi: int, names: tuple[str, ...] = (), base: int = 0) -> frozenset[int]:
    def num(s: str) -> int:
        if s.upper() in names:
            return names.index(s.upper()) + base
        if not s.isdigit():
            raise PolicyError(f"{s!r} is not a number" + (f" or one of {', '.join(names)}" if names else ""))
        return int(s)

    out: set[int] = set()
    for part in text.split(","):
        rng, _, step_s = part.partition("/")
        step = num(step_s) if step_s else 1
        if step < 1:
            raise PolicyError(f"step {step_s!r} must be at least 1")
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            a_s, b_s = rng.split("-", 1)
            a, b = num(a_s), num(b_s)
        else:
            a = b = num(rng)
            if step_s:
                b = hi
        if not (lo <= a <= hi and lo <= b <= hi) or a > b:
            raise PolicyError(f"{part!r} is outside {lo}-{hi} or an empty range")
        out.update(range(a, b + 1, step))
    return frozenset(out)


def parse_cron(expr: str) -> Cron:
    fields = expr.split()
    if len(fields) != 5:
        raise PolicyError(f"cron {expr!r}: want 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}")
    try:
        minute = _field(fields[0], 0, 59)
        hour = _field(fields[1], 0, 23)
        mday = _field(fields[2], 1, 31)
        month = _field(fields[3], 1, 12, MONTHS, 1)
        dow = _field(fields[4], 0, 7, tuple(d.upper() for d in ("Sun",) + DAYS[:6]), 0)
    except PolicyError as e:
        raise PolicyError(f"cron {expr!r}: {e}") from None
    wdays = frozenset((d - 1) % 7 for d in dow)  # cron 0/7 = Sunday -> 6
    return Cron(minute, hour, mday, month, wdays, fields[2] == "*", fields[4] == "*")


# ---------------------------------------------------------------- windows and policies


@dataclasses.dataclass(frozen=True)
class Window:
    name: str
    days: frozenset[int] = frozenset()  # weekday ranges
    start: dt.time | None = None
    end: dt.time | None = None  # None = 24:00
    cron: Cron | None = None  # cron + duration
    duration: dt.timedelta = dt.timedelta(0)
    since: dt.datetime | None = None  # absolute range, naive local times
    until: dt.datetime | None = None

    def occurrences(self, tz: dt.tzinfo, first: dt.date, last: dt.date) -> Iterator[tuple[dt.datetime, dt.datetime]]:
        """UTC intervals [start, end) of this window starting on local dates first..last."""
        if self.since is not None:
            if self.since.date() <= last and self.until.date() >= first:  # type: ignore[union-attr]
                yield _utc(self.since, tz), _utc(self.until, tz)  # type: ignore[arg-type]
            return
        d = first
        while d <= last:
            if self.cron is not None:
                if self.cron.day_matches(d):
                    for t in self.cron.times():
                        s = _utc(dt.datetime.combine(d, t), tz)
                        yield s, s + self.duration
            elif d.weekday() in self.days:
                assert self.start is not None
                end_day = d if self.end is not None and self.end > self.start else d + dt.timedelta(days=1)
                yield (
                    _utc(dt.datetime.combine(d, self.start), tz),
                    _utc(dt.datetime.combine(end_day, self.end or dt.time(0)), tz),
                )
            d += dt.timedelta(days=1)

    def describe(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    zone: str
    windows: tuple[Window, ...]
    deny: tuple[Window, ...] = ()

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.zone)


@dataclasses.dataclass(frozen=True)
class Verdict:
    open: bool
    next_opening: dt.datetime | None  # == now when open; None: not within HORIZON
    window: str  # the window that holds (a deny window's name), or that lets it through
    reason: str  # "open", "denied", "outside" (no allow window at this time)


def _utc(local: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    return local.replace(tzinfo=tz, fold=0).astimezone(UTC)


def _intervals(
    windows: tuple[Window, ...], tz: dt.tzinfo, lo: dt.datetime, hi: dt.datetime
) -> list[tuple[dt.datetime, dt.datetime, str]]:
    """Every non-empty interval of `windows` that overlaps [lo, hi), sorted by start."""
    first = (lo - MAX_DURATION - dt.timedelta(days=2)).astimezone(tz).date()
    last = (hi + dt.timedelta(days=2)).astimezone(tz).date()
    out = [(s, e, w.name) for w in windows for s, e in w.occurrences(tz, first, last) if s < e and s < hi and e > lo]
    out.sort()
    return out


class _Index:
    """Sorted intervals with a running maximum of their ends: 'is x covered' in O(log n)."""

    def __init__(self, ivs: list[tuple[dt.datetime, dt.datetime, str]]):
        self.ivs = ivs
        self.starts = [s for s, _, _ in ivs]
        self.maxend: list[tuple[dt.datetime, str]] = []
        for _, e, n in ivs:
            self.maxend.append(max(self.maxend[-1], (e, n)) if self.maxend else (e, n))

    def cover(self, x: dt.datetime) -> tuple[dt.datetime, str] | None:
        """(furthest end, name) of the intervals that started at or before x, if one still runs."""
        i = bisect.bisect_right(self.starts, x) - 1
        return self.maxend[i] if i >= 0 and self.maxend[i][0] > x else None

    def next_start(self, x: dt.datetime) -> dt.datetime | None:
        i = bisect.bisect_right(self.starts, x)
        return self.starts[i] if i < len(self.starts) else None


# The next opening, remembered per policy: the scan to it may cover years of cron intervals
# (a never-open policy with a "*/20" schedule: ~1 s), and the reconcile evaluates every tick.
# An opening T found from t0 is the answer for every now in [t0, T): nothing opened in
# between. "None within the horizon" found at t0 is reused for NONE_REUSE (the horizon then
# ends up to that much earlier than now + HORIZON). Pure: a memo of a pure function.
NONE_REUSE = dt.timedelta(hours=1)
_NEAR = dt.timedelta(days=1)
_MEMO_SIZE = 512
_memo: dict[tuple[Policy, dt.timedelta], tuple[dt.datetime, dt.datetime | None]] = {}


def evaluate(policy: Policy, now: dt.datetime, horizon: dt.timedelta = HORIZON) -> Verdict:
    """Whether `now` (aware) is open under `policy`, and the first open instant at or after it.
    The first day is scanned every time; a later opening comes from the memo when it holds."""
    if now.tzinfo is None:
        raise ValueError("evaluate() needs an aware datetime")
    now = now.astimezone(UTC)
    near = _scan(policy, now, min(horizon, _NEAR))
    if near.open or near.next_opening is not None or horizon <= _NEAR:
        return near
    key = (policy, horizon)
    hit = _memo.get(key)
    if hit is not None and hit[0] <= now and (now < hit[1] if hit[1] is not None else now < hit[0] + NONE_REUSE):
        return dataclasses.replace(near, next_opening=hit[1])
    full = _scan(policy, now, horizon)
    if len(_memo) >= _MEMO_SIZE:
        _memo.clear()
    _memo[key] = (now, full.next_opening)
    return dataclasses.replace(near, next_opening=full.next_opening)


def _scan(policy: Policy, now: dt.datetime, horizon: dt.timedelta) -> Verdict:
    """evaluate() without the memo: a walk over the windows' intervals from `now`."""
    tz, end = policy.tz, now + horizon
    first_reason: tuple[str, str] | None = None
    x = lo = now
    while lo < end:
        hi = min(lo + _CHUNK, end)
        allow = _Index(_intervals(policy.windows, tz, lo, hi))
        deny = _Index(_intervals(policy.deny, tz, lo, hi))
        while x < hi:
            d = deny.cover(x)
            if d is not None:
                first_reason = first_reason or ("denied", d[1])
                x = d[0]
                continue
            a = allow.cover(x)
            if a is not None:
                if first_reason is None:
                    return Verdict(True, x, a[1], "open")
                return Verdict(False, x, first_reason[1], first_reason[0])
            first_reason = first_reason or ("outside", "")
            nxt = allow.next_start(x)
            if nxt is None or nxt >= hi:
                x = hi
                break
            x = nxt
        lo = max(x, hi)
        x = lo
    reason = first_reason or ("outside", "")
    return Verdict(False, None, reason[1], reason[0])


def is_open(policy: Policy, now: dt.datetime) -> bool:
    return evaluate(policy, now).open


# ---------------------------------------------------------------- from the API (ReleasePolicy spec)


def parse_hhmm(value: Any, what: str) -> dt.time | None:
    if not isinstance(value, str) or not _HHMM.match(value):
        raise PolicyError(f"{what}: {value!r} is not HH:MM (00:00 to 24:00)")
    return None if value == "24:00" else dt.time(int(value[:2]), int(value[3:]))


def parse_duration(value: Any, what: str) -> dt.timedelta:
    m = _DURATION.match(value) if isinstance(value, str) else None
    if not m or not value:
        raise PolicyError(f"{what}: {value!r} is not a duration like 2h, 90m, 1d12h")
    d = dt.timedelta(days=int(m[1] or 0), hours=int(m[2] or 0), minutes=int(m[3] or 0))
    if not dt.timedelta(minutes=1) <= d <= MAX_DURATION:
        raise PolicyError(f"{what}: {value} is outside 1m..7d")
    return d


def parse_zone(name: Any) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise PolicyError(f"timeZone {name!r} is not a known IANA time zone (e.g. Europe/London)") from None


def parse_window(w: Mapping[str, Any], what: str) -> Window:
    name = str(w.get("name") or what)
    what = f"{what} {name}"
    kinds = [k for k in ("days", "schedule", "from") if k in w]
    if len(kinds) != 1:
        raise PolicyError(f"{what}: give exactly one of days+start+end, schedule+duration, from+until")
    if "schedule" in w:
        return Window(name, cron=parse_cron(str(w["schedule"])), duration=parse_duration(w.get("duration"), what))
    if "from" in w:
        try:
            since, until = dt.datetime.fromisoformat(w["from"]), dt.datetime.fromisoformat(w.get("until", ""))
        except (TypeError, ValueError):
            raise PolicyError(f"{what}: from/until must be local times like 2026-12-24T00:00") from None
        if since.tzinfo or until.tzinfo or until <= since:
            raise PolicyError(f"{what}: from/until are local times without offset, until after from")
        return Window(name, since=since, until=until)
    days = w["days"]
    bad = [d for d in days or [None] if d not in DAYS]
    if bad:
        raise PolicyError(f"{what}: days {bad} are not among {', '.join(DAYS)}")
    start = parse_hhmm(w.get("start"), f"{what} start")
    if start is None:
        raise PolicyError(f"{what}: start cannot be 24:00")
    end = parse_hhmm(w.get("end"), f"{what} end")
    if end == start:
        raise PolicyError(f"{what}: start and end are equal (an empty window)")
    return Window(name, days=frozenset(DAYS.index(d) for d in days), start=start, end=end)


def policy_from_spec(name: str, spec: Mapping[str, Any]) -> Policy:
    """A Policy from a ReleasePolicy's spec; PolicyError names the first thing wrong."""
    zone = spec.get("timeZone", "UTC")
    parse_zone(zone)
    windows = tuple(parse_window(w, "window") for w in spec.get("windows") or [])
    deny = tuple(parse_window(w, "denyWindow") for w in spec.get("denyWindows") or [])
    if not windows and not spec.get("freeze"):
        raise PolicyError("a policy needs at least one window (or a freeze)")
    return Policy(name, zone, windows, deny)


OVERLAP_SPAN = dt.timedelta(days=15)  # two weeks of weekday ranges and cron starts, and more


def overlaps(policy: Policy, now: dt.datetime) -> list[str]:
    """Windows of one list (windows, or denyWindows) that overlap one another, or a cron window
    that overlaps itself (a duration longer than its period): "windows a and b overlap at
    <local time>". Looked for over the next OVERLAP_SPAN and over each from/until range."""
    tz, out = policy.tz, []
    for kind, windows in (("windows", policy.windows), ("denyWindows", policy.deny)):
        spans = [(now, now + OVERLAP_SPAN)]
        spans += [(_utc(w.since, tz), _utc(w.until, tz)) for w in windows if w.since is not None and w.until is not None]
        found: set[tuple[str, str]] = set()
        for lo, hi in spans:
            ivs = _intervals(windows, tz, lo, hi)
            run_end, run_name = None, ""
            for s, e, name in ivs:
                if run_end is not None and s < run_end:
                    pair = (min(run_name, name), max(run_name, name))
                    if pair not in found:
                        found.add(pair)
                        what = f"window {name} overlaps itself" if pair[0] == pair[1] else f"{pair[0]} and {pair[1]} overlap"
                        out.append(f"{kind}: {what} at {s.astimezone(tz):%Y-%m-%d %H:%M} ({policy.zone})")
                if run_end is None or e > run_end:
                    run_end, run_name = e, name
    return out


def describe(policy: Policy, v: Verdict, now: dt.datetime) -> str:
    """'held by window trading-hours (Europe/London): opens Mon 09:00, in 14h'."""
    who = f"deny window {v.window}" if v.reason == "denied" else f"window {policy.name}"
    if v.next_opening is None:
        return f"held by {who} ({policy.zone}): no opening in the next {HORIZON.days} days"
    local = v.next_opening.astimezone(policy.tz)
    return f"held by {who} ({policy.zone}): opens {local:%a %H:%M}, in {_human(v.next_opening - now)}"


def _human(d: dt.timedelta) -> str:
    s = int(d.total_seconds())
    if s >= 86400:
        return f"{s // 86400}d{(s % 86400) // 3600}h" if s % 86400 >= 3600 else f"{s // 86400}d"
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60}m" if s % 3600 >= 60 else f"{s // 3600}h"
    return f"{max(1, -(-s // 60))}m"


# ---------------------------------------------------------------- gates: what decide() is given


HOLD_BEFORE_START, HOLD_BEFORE_PROMOTION = "HoldBeforeStart", "HoldBeforePromotion"


@dataclasses.dataclass(frozen=True)
class Freeze:
    reason: str
    by: str = ""
    until: dt.datetime | None = None  # aware; None: until unfrozen


@dataclasses.dataclass(frozen=True)
class Gate:
    """One policy that applies to a Rollout (selected by the controller; evaluated by the core)."""

    source: str  # "ReleasePolicy shop/trading-hours", "Rollout annotation teal.dev/freeze"
    policy: Policy | None = None  # None: a freeze only
    behaviour: str = HOLD_BEFORE_PROMOTION
    freeze: Freeze | None = None


@dataclasses.dataclass(frozen=True)
class Hold:
    source: str
    message: str
    opens_at: dt.datetime | None  # None: when someone unfreezes, or beyond the horizon


def hold(gates: tuple[Gate, ...], now: dt.datetime, before_start: bool = False) -> Hold | None:
    """The first gate that holds a release at `now` (a freeze first), or None when all are open.
    `before_start`: only gates whose behaviour is HoldBeforeStart (and freezes) hold a start."""
    for g in sorted(gates, key=lambda g: g.freeze is None):
        if before_start and g.freeze is None and g.behaviour != HOLD_BEFORE_START:
            continue
        if g.freeze is not None and (g.freeze.until is None or now < g.freeze.until):
            f = g.freeze
            who = f" by {f.by}" if f.by else ""
            until = f"until {f.until.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if f.until else "until unfrozen"
            return Hold(g.source, f"frozen{who} ({g.source}): {f.reason}; {until}", f.until)
        if g.policy is not None and g.policy.windows:
            v = evaluate(g.policy, now)
            if not v.open:
                return Hold(g.source, describe(g.policy, v, now), v.next_opening)
    return None
