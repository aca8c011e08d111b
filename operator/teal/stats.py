"""Release statistics over a window, from the Rollouts' release history (status.history).

Pure: Rollout objects (or their history entries) in, numbers out; `kubectl teal stats`
(teal.cli_stats) reads the cluster and prints them. The four keys, per the DORA definitions
as Teal can measure them:

- releases: finished releases (any outcome) in the window, per day, and the busiest day
  (UTC dates);
- change-failure rate: Reverted releases over the releases that reached users (switchedAt
  set: Promoted, RolledBack, Reverted, and Superseded ones that had a weight);
- time to restore: restoreSeconds of Reverted releases (fault detected -> all traffic
  observed back on stable), median and p90;
- lead time: leadTimeSeconds (the template's teal.dev/source-time -> user traffic), median
  and p90; plus the time releases spent in analysis.

A release counts in the window its finishedAt falls in. p90 is the nearest-rank percentile
(the smallest value with at least 90% of the values at or below it); the median is the
middle value (the mean of the two middle ones for an even count).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .status import OUTCOMES, HistoryEntry, Outcome, history_of, iso

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
BLOCKS = "▁▂▃▄▅▆▇█"
ASCII_LEVELS = "_.-:=+*#"


def parse_window(text: str) -> dt.timedelta:
    """`30d`, `12h`, `2w`, `90m`, `45s` (one number and one unit) as a duration > 0."""
    m = _DURATION.match(text or "")
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"not a window: {text!r} (a number and one of s, m, h, d, w: e.g. 30d)")
    return dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


@dataclasses.dataclass(frozen=True)
class Distribution:
    """Median and p90 of a set of seconds (None when empty)."""

    count: int
    median: float | None
    p90: float | None
    total: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Distribution:
        xs = sorted(float(v) for v in values)
        if not xs:
            return cls(0, None, None, 0.0)
        return cls(len(xs), round(statistics.median(xs), 3), round(percentile(xs, 90), 3), round(sum(xs), 3))

    def as_json(self) -> dict[str, Any]:
        return {"count": self.count, "median": self.median, "p90": self.p90, "total": self.total}


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile of values sorted ascending (not empty)."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclasses.dataclass(frozen=True)
class RolloutHistory:
    namespace: str
    name: str
    entries: tuple[HistoryEntry, ...]
    totals: Mapping[str, int]  # status.stats.outcomes: every release ever recorded

    @classmethod
    def of(cls, rollout: Mapping[str, Any]) -> RolloutHistory:
        meta, status = rollout.get("metadata") or {}, rollout.get("status") or {}
        outcomes = (status.get("stats") or {}).get("outcomes") or {}
        totals = {k: int(v) for k, v in outcomes.items() if isinstance(v, int) and not isinstance(v, bool)}
        return cls(str(meta.get("namespace") or ""), str(meta.get("name") or ""), tuple(history_of(status)), totals)


@dataclasses.dataclass(frozen=True)
class RolloutLine:
    """One Rollout's share of the window."""

    namespace: str
    name: str
    releases: int
    reached_users: int
    reverted: int
    truncated: bool  # its history is full and starts inside the window: older releases are not counted


@dataclasses.dataclass(frozen=True)
class Stats:
    start: dt.datetime
    end: dt.datetime
    rollouts: int
    releases: int
    outcomes: dict[str, int]
    reached_users: int
    per_day: list[tuple[dt.date, int]]
    time_to_restore: Distribution
    lead_time: Distribution
    analysis: Distribution
    lines: list[RolloutLine]

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / 86400

    @property
    def per_day_mean(self) -> float:
        return round(self.releases / self.days, 3) if self.days > 0 else 0.0

    @property
    def busiest_day(self) -> tuple[dt.date, int] | None:
        """The day with the most releases (the latest of equal ones); None without releases."""
        best = max(self.per_day, key=lambda d: (d[1], d[0]), default=None)
        return best if best is not None and best[1] > 0 else None

    @property
    def change_failure_rate(self) -> float | None:
        reverted = self.outcomes.get(Outcome.REVERTED.value, 0)
        return round(reverted / self.reached_users, 4) if self.reached_users else None

    @property
    def truncated(self) -> list[str]:
        return [f"{line.namespace}/{line.name}" for line in self.lines if line.truncated]

    def as_json(self) -> dict[str, Any]:
        busiest = self.busiest_day
        return {
            "window": {"start": iso(self.start), "end": iso(self.end), "days": round(self.days, 3)},
            "rollouts": self.rollouts,
            "releases": self.releases,
            "releasesPerDay": self.per_day_mean,
            "busiestDay": {"date": busiest[0].isoformat(), "releases": busiest[1]} if busiest else None,
            "outcomes": self.outcomes,
            "reachedUsers": self.reached_users,
            "changeFailureRate": self.change_failure_rate,
            "timeToRestoreSeconds": self.time_to_restore.as_json(),
            "leadTimeSeconds": self.lead_time.as_json(),
            "analysisSeconds": self.analysis.as_json(),
            "perDay": [{"date": d.isoformat(), "releases": n} for d, n in self.per_day],
            "truncated": self.truncated,
            "perRollout": [
                {
                    "namespace": line.namespace,
                    "name": line.name,
                    "releases": line.releases,
                    "reachedUsers": line.reached_users,
                    "reverted": line.reverted,
                }
                for line in self.lines
            ],
        }


def _in_window(e: HistoryEntry, start: dt.datetime, end: dt.datetime) -> bool:
    return e.finished_at is not None and start <= e.finished_at <= end and e.outcome is not None


def _line(h: RolloutHistory, entries: list[HistoryEntry], start: dt.datetime, limit: int) -> RolloutLine:
    oldest = min((e.finished_at for e in h.entries if e.finished_at is not None), default=None)
    full = len(h.entries) >= limit and sum(h.totals.values()) > len(h.entries)
    return RolloutLine(
        namespace=h.namespace,
        name=h.name,
        releases=len(entries),
        reached_users=sum(1 for e in entries if e.reached_users),
        reverted=sum(1 for e in entries if e.outcome == Outcome.REVERTED),
        truncated=full and oldest is not None and oldest > start,
    )


def compute(histories: Iterable[RolloutHistory], start: dt.datetime, end: dt.datetime, limit: int = 25) -> Stats:
    """Statistics of the releases that finished in [start, end] (`limit`: the history's bound)."""
    chosen: list[HistoryEntry] = []
    lines: list[RolloutLine] = []
    for h in histories:
        entries = [e for e in h.entries if _in_window(e, start, end)]
        chosen += entries
        lines.append(_line(h, entries, start, limit))
    outcomes = dict.fromkeys(OUTCOMES, 0)
    outcomes.update(Counter(str(e.outcome) for e in chosen))
    days = Counter(e.finished_at.date() for e in chosen if e.finished_at is not None)
    first, last = start.astimezone(dt.UTC).date(), end.astimezone(dt.UTC).date()
    per_day = [(first + dt.timedelta(days=i), days.get(first + dt.timedelta(days=i), 0)) for i in range((last - first).days + 1)]
    reverted = [e for e in chosen if e.outcome == Outcome.REVERTED]
    return Stats(
        start=start,
        end=end,
        rollouts=len(lines),
        releases=len(chosen),
        outcomes=outcomes,
        reached_users=sum(1 for e in chosen if e.reached_users),
        per_day=per_day,
        time_to_restore=Distribution.of(e.restore_seconds for e in reverted if e.restore_seconds is not None),
        lead_time=Distribution.of(e.lead_time_seconds for e in chosen if e.lead_time_seconds is not None),
        analysis=Distribution.of(e.analysis_seconds for e in chosen if e.analysis_seconds is not None),
        lines=sorted(lines, key=lambda x: (-x.releases, x.namespace, x.name)),
    )


def sparkline(counts: Sequence[int], ascii_only: bool = False) -> str:
    """One character per count, its height relative to the largest; a day without releases is
    the lowest mark of its own (a blank would hide the axis)."""
    levels = ASCII_LEVELS if ascii_only else BLOCKS
    top = max(counts, default=0)
    if top <= 0:
        return levels[0] * len(counts)
    return "".join(levels[0] if n <= 0 else levels[max(1, math.ceil(n / top * (len(levels) - 1)))] for n in counts)
