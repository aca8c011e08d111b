"""teal.stats from a scripted history (exact counts and durations) and the table and JSON of
`kubectl teal stats` (teal.cli_stats) on it. Pure: no cluster."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from teal import cli_stats, stats
from teal.status import iso

NOW = dt.datetime(2026, 3, 31, 12, 0, tzinfo=dt.UTC)


def ago(days: float, seconds: float = 0) -> str:
    return iso(NOW - dt.timedelta(days=days) + dt.timedelta(seconds=seconds))


def entry(rev: int, outcome: str, days: float, **extra) -> dict:
    e = {"revision": str(rev), "startedAt": ago(days, -600), "finishedAt": ago(days), "outcome": outcome, "reason": "x"}
    if outcome in ("Promoted", "Reverted", "RolledBack"):
        e["switchedAt"] = ago(days, -60)
    e.update(extra)
    return e


def rollout(ns: str, name: str, history: list[dict], totals: dict | None = None) -> dict:
    return {"metadata": {"namespace": ns, "name": name}, "status": {"history": history, "stats": {"outcomes": totals or {}}}}


# checkout: 6 releases in the window (one more 40 days ago, outside it); search: 3
CHECKOUT = [
    entry(8, "Promoted", 0.1, leadTimeSeconds=1800, analysisSeconds=90),
    entry(7, "Reverted", 0.2, restoreSeconds=2.0, detectedAt=ago(0.2), restoredAt=ago(0.2, 2), analysisSeconds=60),
    entry(6, "Promoted", 0.3, leadTimeSeconds=600, analysisSeconds=30),
    entry(5, "Aborted", 3, analysisSeconds=45),
    entry(4, "Reverted", 3.2, restoreSeconds=10.0),
    entry(3, "Superseded", 10),
    entry(2, "Promoted", 40, leadTimeSeconds=99999),
]
SEARCH = [
    entry(3, "RolledBack", 1, leadTimeSeconds=3600),
    entry(2, "Reverted", 1.1, restoreSeconds=4.0, switchedAt=ago(1.1, -5)),
    entry(1, "Superseded", 1.2, switchedAt=ago(1.2, -30)),  # it had a weight: it reached users
]


def compute() -> stats.Stats:
    histories = [
        stats.RolloutHistory.of(rollout("shop", "checkout", CHECKOUT)),
        stats.RolloutHistory.of(rollout("shop", "search", SEARCH)),
    ]
    return stats.compute(histories, NOW - dt.timedelta(days=30), NOW)


def test_counts_rates_and_durations_are_exact() -> None:
    s = compute()
    assert s.releases == 9 and s.rollouts == 2
    assert s.outcomes == {"Promoted": 2, "Aborted": 1, "Reverted": 3, "Superseded": 2, "RolledBack": 1}
    assert s.reached_users == 7  # 2 promoted + 3 reverted + 1 rolled back + the superseded one with a weight
    assert s.change_failure_rate == round(3 / 7, 4)
    assert s.per_day_mean == 0.3  # 9 in 30 days
    assert s.time_to_restore == stats.Distribution(count=3, median=4.0, p90=10.0, total=16.0)
    assert s.lead_time == stats.Distribution(count=3, median=1800.0, p90=3600.0, total=6000.0)  # not the 40-day-old one
    assert s.analysis == stats.Distribution(count=4, median=52.5, p90=90.0, total=225.0)
    # per day: 31 UTC dates from 30 days ago to today; 3 today, 1 at 1 day ago, 2 at 1.1/1.2 days, ...
    assert len(s.per_day) == 31 and s.per_day[0][0] == dt.date(2026, 3, 1) and s.per_day[-1][0] == dt.date(2026, 3, 31)
    by_day = dict(s.per_day)
    assert by_day[dt.date(2026, 3, 31)] == 3 and by_day[dt.date(2026, 3, 30)] == 3 and by_day[dt.date(2026, 3, 28)] == 2
    assert sum(by_day.values()) == 9
    assert s.busiest_day == (dt.date(2026, 3, 31), 3)  # ties: the latest
    lines = {(x.name, x.releases, x.reached_users, x.reverted) for x in s.lines}
    assert lines == {("checkout", 6, 4, 2), ("search", 3, 3, 1)}
    assert s.truncated == []


def test_a_window_past_a_full_history_says_so() -> None:
    full = [entry(100 - i, "Promoted", 1 + i * 0.1) for i in range(25)]  # the oldest kept is 3.4 days old
    h = stats.RolloutHistory.of(rollout("shop", "busy", full, totals={"Promoted": 60}))
    assert stats.compute([h], NOW - dt.timedelta(days=30), NOW).truncated == ["shop/busy"]
    assert stats.compute([h], NOW - dt.timedelta(days=2), NOW).truncated == []  # the window is all kept
    exactly = stats.RolloutHistory.of(rollout("shop", "busy", full, totals={"Promoted": 25}))
    assert stats.compute([exactly], NOW - dt.timedelta(days=30), NOW).truncated == []  # nothing was dropped


def test_empty_and_unreadable_histories() -> None:
    s = stats.compute(
        [stats.RolloutHistory.of({"metadata": {"name": "x", "namespace": "y"}}), stats.RolloutHistory.of(rollout("y", "z", []))],
        NOW - dt.timedelta(days=7),
        NOW,
    )
    assert (s.releases, s.change_failure_rate, s.busiest_day, s.time_to_restore.median) == (0, None, None, None)
    assert stats.RolloutHistory.of({"metadata": {}, "status": {"history": "garbage"}}).entries == ()


@pytest.mark.parametrize(
    "text,seconds", [("30d", 30 * 86400), ("12h", 43200), ("2w", 14 * 86400), ("90m", 5400), ("45s", 45), ("1.5d", 129600)]
)
def test_window(text: str, seconds: float) -> None:
    assert stats.parse_window(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "-1d", "0d", "3 days", "1d2h"])
def test_bad_window(text: str) -> None:
    with pytest.raises(ValueError):
        stats.parse_window(text)


def test_percentiles_and_sparkline() -> None:
    assert stats.Distribution.of([5, 1, 3, 2, 4, 6, 7, 8, 9, 10]) == stats.Distribution(10, 5.5, 9.0, 55.0)
    assert stats.Distribution.of([7]) == stats.Distribution(1, 7.0, 7.0, 7.0)
    assert stats.sparkline([0, 1, 2, 4, 8]) == "▁▂▃▅█"
    assert stats.sparkline([0, 1, 2, 4, 8], ascii_only=True) == "_.-=#"
    assert stats.sparkline([0, 0]) == "▁▁" and stats.sparkline([]) == ""


def test_table_and_json_of_kubectl_teal_stats() -> None:
    s = compute()
    text = cli_stats.table(s, "namespace shop", "30d", plain=True)
    assert text.isascii() and "\x1b[" not in text
    rows = {k: v for k, v in (re.split(r"\s{2,}", line, maxsplit=1) for line in text.splitlines()[:8])}
    assert rows["Releases"] == "9 (0.30/day; busiest 2026-03-31: 3)"
    assert rows["Change failure rate"] == "42.9% (3 reverted of 7 that reached users)"
    assert rows["Time to restore"] == "median 4.0s, p90 10s (3 restores)"
    assert rows["Lead time"] == "median 30m00s, p90 1h00m (3 with teal.dev/source-time)"
    assert rows["Per day"] == "____________________:______+_##  (max 3)"
    assert "checkout" in text and "NAMESPACE" in text
    fancy = cli_stats.table(s, "namespace shop", "30d", plain=False)
    assert "\x1b[1m" in fancy and "█" in fancy
    doc = json.loads(json.dumps(s.as_json()))
    assert (
        doc["releases"] == 9 and doc["changeFailureRate"] == 0.4286 and doc["busiestDay"] == {"date": "2026-03-31", "releases": 3}
    )
    assert doc["timeToRestoreSeconds"] == {"count": 3, "median": 4.0, "p90": 10.0, "total": 16.0}
    assert len(doc["perDay"]) == 31 and doc["perDay"][-1] == {"date": "2026-03-31", "releases": 3}


def test_durations_read_well() -> None:
    assert [cli_stats.duration(x) for x in (None, 1.24, 42, 185, 3720, 183600)] == ["-", "1.2s", "42s", "3m05s", "1h02m", "2d03h"]
