"""The release-window evaluator (teal.policy), property-tested across DST changes, leap days
and zones against zoneinfo's wall clock."""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teal import policy as P

UTC = dt.UTC
ZONES = ["Europe/London", "America/New_York", "Australia/Lord_Howe", "UTC", "Asia/Kolkata"]
DST_ZONES = ZONES[:3]


@functools.cache
def transitions(zone: str) -> list[dt.datetime]:
    """UTC hours at which `zone`'s offset changes, 2024-2029 (Lord Howe moves 30 min)."""
    tz, out = zoneinfo.ZoneInfo(zone), []
    t = dt.datetime(2024, 1, 1, tzinfo=UTC)
    prev = t.astimezone(tz).utcoffset()
    while t.year < 2030:
        t += dt.timedelta(hours=1)
        off = t.astimezone(tz).utcoffset()
        if off != prev:
            out.append(t)
        prev = off
    return out


@st.composite
def instants(draw, zone: str) -> dt.datetime:
    """Times near a DST change of `zone` half of the time, anywhere in 2024-2029 otherwise."""
    if zone in DST_ZONES and draw(st.booleans()):
        base = draw(st.sampled_from(transitions(zone)))
        return base + dt.timedelta(minutes=draw(st.integers(-3 * 1440, 3 * 1440)))
    day = draw(st.integers(0, 6 * 365))
    return dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(days=day, minutes=draw(st.integers(0, 1439)))


def hhmm(h: int, m: int) -> str:
    return f"{h:02d}:{m:02d}"


@st.composite
def range_windows(draw, name: str, min_hour: int = 0) -> dict:
    days = draw(st.lists(st.sampled_from(P.DAYS), min_size=1, max_size=7, unique=True))
    start = (draw(st.integers(min_hour, 23)), draw(st.sampled_from([0, 15, 30, 45])))
    end = (draw(st.integers(min_hour, 24)), draw(st.sampled_from([0, 15, 30, 45])))
    end = (24, 0) if end[0] == 24 else end
    if end == start:
        end = (24, 0) if start != (0, 0) else (12, 0)
    return {"name": name, "days": days, "start": hhmm(*start), "end": hhmm(*end)}


@st.composite
def cron_windows(draw, name: str) -> dict:
    minute = draw(st.sampled_from(["0", "30", "0,30", "15", "*/20"]))
    hour = draw(st.sampled_from(["*", "1", "2", "9", "9-17", "22", "*/6", "0,12"]))
    mday = draw(st.sampled_from(["*", "*", "1", "15", "29", "1-7"]))
    month = draw(st.sampled_from(["*", "*", "*", "2", "3,10", "JAN-JUN"]))
    dow = draw(st.sampled_from(["*", "*", "1-5", "SAT,SUN", "0", "7"]))
    duration = draw(st.sampled_from(["1m", "30m", "1h", "2h30m", "1d", "7d"]))
    return {"name": name, "schedule": f"{minute} {hour} {mday} {month} {dow}", "duration": duration}


@st.composite
def absolute_windows(draw, name: str) -> dict:
    start = dt.datetime(2024, 1, 1) + dt.timedelta(hours=draw(st.integers(0, 6 * 365 * 24)))
    until = start + dt.timedelta(hours=draw(st.integers(1, 24 * 30)))
    return {"name": name, "from": start.isoformat(timespec="minutes"), "until": until.isoformat(timespec="minutes")}


def any_window(name: str):
    return st.one_of(range_windows(name), cron_windows(name), absolute_windows(name))


@st.composite
def policies(draw) -> tuple[P.Policy, str]:
    zone = draw(st.sampled_from(ZONES))
    allow = [draw(st.one_of(range_windows(f"w{i}"), cron_windows(f"w{i}"))) for i in range(draw(st.integers(1, 3)))]
    deny = [draw(any_window(f"d{i}")) for i in range(draw(st.integers(0, 3)))]
    return P.policy_from_spec("p", {"timeZone": zone, "windows": allow, "denyWindows": deny}), zone


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def wall_open(windows: list[dict], wall: dt.datetime) -> bool:
    """The reference: is the zoneinfo wall clock inside a weekday/time range?"""
    for w in windows:
        days = {P.DAYS.index(d) for d in w["days"]}
        start, end = dt.time.fromisoformat(w["start"]), w["end"]
        end_t = dt.time.max if end == "24:00" else dt.time.fromisoformat(end)
        now, wd = wall.time().replace(tzinfo=None), wall.weekday()
        if end_t > start:
            if wd in days and start <= now < end_t:
                return True
        elif (wd in days and now >= start) or ((wd - 1) % 7 in days and now < end_t):
            return True
    return False


@SETTINGS
@given(data=st.data())
def test_open_matches_the_zoneinfo_wall_clock(data):
    """With boundaries away from the DST hours (04:00 onwards), open(t) is exactly 'the local
    wall clock, read through zoneinfo, is inside an allow range and no deny range'."""
    zone = data.draw(st.sampled_from(ZONES))
    allow = [data.draw(range_windows(f"w{i}", min_hour=4)) for i in range(data.draw(st.integers(1, 3)))]
    deny = [data.draw(range_windows(f"d{i}", min_hour=4)) for i in range(data.draw(st.integers(0, 2)))]
    pol = P.policy_from_spec("p", {"timeZone": zone, "windows": allow, "denyWindows": deny})
    t = data.draw(instants(zone))
    wall = t.astimezone(zoneinfo.ZoneInfo(zone))
    assert P.evaluate(pol, t).open == (wall_open(allow, wall) and not wall_open(deny, wall))


@SETTINGS
@given(pz=policies(), data=st.data())
def test_next_opening_is_the_first_open_instant(pz, data):
    pol, zone = pz
    t = data.draw(instants(zone))
    v = P.evaluate(pol, t)
    assert v.open == (v.next_opening == t)
    if v.next_opening is None:
        return
    assert v.next_opening >= t
    at = P.evaluate(pol, v.next_opening)
    assert at.open and at.next_opening == v.next_opening
    tz = zoneinfo.ZoneInfo(zone)
    hi = v.next_opening + dt.timedelta(minutes=1)
    assert not any(s <= v.next_opening < e for s, e, _ in P._intervals(pol.deny, tz, v.next_opening, hi))
    if v.next_opening > t:  # nothing in between is open
        frac = data.draw(st.floats(0, 1, exclude_max=True))
        u = t + (v.next_opening - t) * frac
        if u < v.next_opening:
            assert not P.evaluate(pol, u).open
        assert not P.evaluate(pol, v.next_opening - dt.timedelta(microseconds=1)).open


@SETTINGS
@given(pz=policies(), data=st.data())
def test_next_opening_is_monotonic(pz, data):
    pol, zone = pz
    t1 = data.draw(instants(zone))
    t2 = t1 + dt.timedelta(minutes=data.draw(st.integers(0, 3 * 1440)))
    n1, n2 = P.evaluate(pol, t1).next_opening, P.evaluate(pol, t2).next_opening
    if n1 is not None and n2 is not None:
        assert n1 <= n2
        if n1 >= t2:
            assert n2 == n1


def at(zone: str, *args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=zoneinfo.ZoneInfo(zone)).astimezone(UTC)


TRADING = {
    "timeZone": "Europe/London",
    "windows": [{"name": "trading-hours", "days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "09:00", "end": "16:00"}],
}


def test_trading_hours_message_across_the_spring_change():
    pol = P.policy_from_spec("trading-hours", TRADING)
    now = at("Europe/London", 2026, 3, 27, 19, 0)  # Friday evening; clocks go forward Sunday
    v = P.evaluate(pol, now)
    assert not v.open and v.reason == "outside"
    assert v.next_opening == at("Europe/London", 2026, 3, 30, 9, 0) == dt.datetime(2026, 3, 30, 8, 0, tzinfo=UTC)
    assert P.describe(pol, v, now) == "held by window trading-hours (Europe/London): opens Mon 09:00, in 2d13h"


def test_a_deny_window_wins_and_is_named():
    spec = dict(TRADING, denyWindows=[{"name": "quarter-close", "from": "2026-03-30T00:00", "until": "2026-04-01T12:00"}])
    pol = P.policy_from_spec("trading-hours", spec)
    v = P.evaluate(pol, at("Europe/London", 2026, 3, 30, 10, 0))
    assert (v.open, v.reason, v.window) == (False, "denied", "quarter-close")
    assert v.next_opening == at("Europe/London", 2026, 4, 1, 12, 0)


def test_leap_day_cron_opens_four_years_on():
    pol = P.policy_from_spec(
        "leap", {"timeZone": "America/New_York", "windows": [{"name": "leap", "schedule": "0 9 29 2 *", "duration": "1h"}]}
    )
    v = P.evaluate(pol, at("America/New_York", 2024, 2, 29, 10, 0))
    assert v.next_opening == at("America/New_York", 2028, 2, 29, 9, 0)
    assert P.evaluate(pol, at("America/New_York", 2028, 2, 29, 9, 59)).open


def test_lord_howe_half_hour_gap():
    """Lord Howe springs 02:00 -> 02:30 (first Sunday of October): a window starting at 02:10,
    which does not exist that day, starts at 02:40 (as far past the gap as it was into it)."""
    pol = P.policy_from_spec(
        "lh", {"timeZone": "Australia/Lord_Howe", "windows": [{"name": "n", "days": ["Sun"], "start": "02:10", "end": "03:00"}]}
    )
    v = P.evaluate(pol, at("Australia/Lord_Howe", 2026, 10, 4, 0, 0))
    local = v.next_opening.astimezone(zoneinfo.ZoneInfo("Australia/Lord_Howe"))
    assert (local.hour, local.minute) == (2, 40)


def test_never_open_within_the_horizon():
    pol = P.policy_from_spec(
        "x", dict(TRADING, denyWindows=[{"name": "all", "days": list(P.DAYS), "start": "00:00", "end": "24:00"}])
    )
    v = P.evaluate(pol, at("Europe/London", 2026, 1, 1, 0, 0))
    assert (v.open, v.next_opening, v.window) == (False, None, "all")


@pytest.mark.parametrize(
    "spec, error",
    [
        ({"timeZone": "Europe/Londn", "windows": TRADING["windows"]}, "not a known IANA time zone"),
        ({"timeZone": "UTC", "windows": [{"name": "c", "schedule": "61 * * * *", "duration": "1h"}]}, "outside 0-59"),
        ({"timeZone": "UTC", "windows": [{"name": "c", "schedule": "0 9 * *", "duration": "1h"}]}, "want 5 fields"),
        ({"timeZone": "UTC", "windows": [{"name": "c", "schedule": "0 9 * * Fun", "duration": "1h"}]}, "not a number"),
        ({"timeZone": "UTC", "windows": [{"name": "c", "schedule": "0 9 * * *", "duration": "8d"}]}, "outside 1m..7d"),
        ({"timeZone": "UTC", "windows": [{"name": "r", "days": ["Mon"], "start": "09:00", "end": "09:00"}]}, "empty"),
        ({"timeZone": "UTC", "windows": [{"name": "r", "days": ["Monday"], "start": "09:00", "end": "10:00"}]}, "not among"),
        ({"timeZone": "UTC", "windows": [{"name": "r", "days": ["Mon"], "start": "9:00", "end": "10:00"}]}, "not HH:MM"),
        ({"timeZone": "UTC", "windows": []}, "at least one window"),
    ],
)
def test_bad_policies_are_refused_with_the_reason(spec, error):
    with pytest.raises(P.PolicyError, match=error):
        P.policy_from_spec("bad", spec)


# ---------------------------------------------------------------- the memo bounds a reconcile's cost

NEVER = {
    "timeZone": "Europe/London",
    "windows": [{"name": "every-20", "schedule": "*/20 * * * *", "duration": "5m"}],
    "denyWindows": [{"name": "all", "days": list(P.DAYS), "start": "00:00", "end": "24:00"}],
}


def test_a_never_open_policy_is_scanned_in_full_once_per_memo_period(monkeypatch):
    """The worst case (a */20 cron that never opens: 4 years of intervals, ~1 s) is scanned
    to the horizon once; later ticks scan one day (a bounded number of intervals)."""
    pol = P.policy_from_spec("never", NEVER)
    P._memo.clear()
    built: list[int] = []
    real = P._Index.__init__

    def counting(self, ivs):
        built.append(len(ivs))
        real(self, ivs)

    monkeypatch.setattr(P._Index, "__init__", counting)
    t0 = at("Europe/London", 2026, 12, 1, 12, 0)
    assert P.evaluate(pol, t0).next_opening is None
    full = sum(built)
    assert full > 100_000  # the whole horizon
    built.clear()
    for i in range(1, 30):  # a reconcile every 2 minutes for an hour
        v = P.evaluate(pol, t0 + dt.timedelta(minutes=2 * i))
        assert (v.open, v.next_opening, v.window) == (False, None, "all")
    assert sum(built) <= 29 * 2000  # one day (plus the look-back) per tick, never the horizon again
    built.clear()
    P.evaluate(pol, t0 + P.NONE_REUSE)  # the memo's "none" is not reused beyond its period
    assert sum(built) >= full // 2


# each example scans up to four years four times over: 60 examples, not 300 (the memo's cases are few)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pz=policies(), data=st.data())
def test_the_memo_gives_what_a_fresh_scan_gives(pz, data):
    """A sequence of evaluations (as reconciles make them, time moving forward) equals the
    memo-free scan at each time, except that "none within the horizon" may be reused for
    NONE_REUSE."""
    pol, zone = pz
    P._memo.clear()
    t = data.draw(instants(zone))
    for _ in range(4):
        t += dt.timedelta(minutes=data.draw(st.integers(0, 3 * 1440)))
        got, fresh = P.evaluate(pol, t), P._scan(pol, t, P.HORIZON)
        assert (got.open, got.window, got.reason) == (fresh.open, fresh.window, fresh.reason)
        assert got.next_opening == fresh.next_opening or (
            got.next_opening is None and fresh.next_opening and fresh.next_opening - t > P.HORIZON - P.NONE_REUSE
        )


# ---------------------------------------------------------------- overlapping windows are reported


@pytest.mark.parametrize(
    "windows, deny, found",
    [
        (
            [
                {"name": "a", "days": ["Mon"], "start": "09:00", "end": "12:00"},
                {"name": "b", "days": ["Mon", "Tue"], "start": "11:00", "end": "13:00"},
            ],
            [],
            ["windows: a and b overlap"],
        ),
        (
            [
                {"name": "late", "days": ["Fri"], "start": "22:00", "end": "02:00"},
                {"name": "sat", "days": ["Sat"], "start": "01:00", "end": "03:00"},
            ],
            [],
            ["windows: late and sat overlap"],
        ),
        ([{"name": "c", "schedule": "*/20 * * * *", "duration": "30m"}], [], ["windows: window c overlaps itself"]),
        (
            [
                {"name": "a", "days": ["Mon"], "start": "09:00", "end": "12:00"},
                {"name": "b", "days": ["Mon"], "start": "12:00", "end": "13:00"},
            ],
            [],
            [],
        ),  # touching is not overlapping
        (
            TRADING["windows"],
            [
                {"name": "x", "from": "2027-06-01T00:00", "until": "2027-06-03T00:00"},
                {"name": "y", "from": "2027-06-02T00:00", "until": "2027-06-04T00:00"},
            ],
            ["denyWindows: x and y overlap"],
        ),
    ],
)
def test_overlapping_windows_are_found(windows, deny, found):
    pol = P.policy_from_spec("p", {"timeZone": "Europe/London", "windows": windows, "denyWindows": deny})
    got = P.overlaps(pol, at("Europe/London", 2026, 12, 1, 0, 0))
    assert [g.split(" at ")[0] for g in got] == found
