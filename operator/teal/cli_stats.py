"""`kubectl teal stats [ROLLOUT] [-n NS | -A] [--since 30d] [-o json] [--prometheus URL]`.

Reads the Rollouts with one request (a LIST, or a GET for one Rollout) and prints the release
statistics teal.stats computes from their status.history: releases and releases per day, the
busiest day, change-failure rate, time to restore, lead time and time in analysis, with a
per-day sparkline (Unicode blocks and colour on a terminal; ASCII without colour when piped or
NO_COLOR is set). No Prometheus is needed; with --prometheus URL it also asks the operator's
metrics (teal_release_outcomes_total, teal_releases_reached_users_total,
teal_time_to_restore_seconds, teal_lead_time_seconds) for the same window, which reach back
further than the 25 releases a Rollout's status keeps.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TextIO

from . import client as kclient
from . import stats as st
from .cli_cluster import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, Cluster
from .status import OUTCOMES, Outcome

PROMETHEUS_TIMEOUT = 10.0


def run(
    client: kclient.Client,
    namespace: str | None,
    all_namespaces: bool,
    rollout: str | None,
    since: str = "30d",
    output: str = "table",
    prometheus: str | None = None,
    out: TextIO | None = None,
    color: bool | None = None,
    now: dt.datetime | None = None,
) -> int:
    """Print the statistics to `out` (sys.stdout as it is at the call); the exit code (0, or 3
    when the Rollout or the API is missing, ...)."""
    out = out if out is not None else sys.stdout
    try:
        window = st.parse_window(since)
    except ValueError as exc:
        print(f"error: --since: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if output not in ("table", "json", "text", "wide"):
        print(f"error: -o {output}: one of table, json", file=sys.stderr)
        return EXIT_USAGE
    end = now or dt.datetime.now(dt.UTC)
    start = end - window
    try:
        rollouts = read_rollouts(client, namespace, all_namespaces, rollout)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    result = st.compute((st.RolloutHistory.of(r) for r in rollouts), start, end)
    prom, prom_error = None, None
    if prometheus:
        try:
            prom = from_prometheus(prometheus, None if all_namespaces else namespace, rollout, start, end)
        except (OSError, ValueError, KeyError) as exc:
            prom_error = f"Prometheus at {prometheus}: {exc}"
    if output == "json":
        doc = result.as_json()
        doc["scope"] = _scope(namespace, all_namespaces, rollout)
        doc["source"] = "status.history"
        if prometheus:
            doc["prometheus"] = prom if prom is not None else {"error": prom_error}
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        plain = _plain(out) if color is None else not color
        out.write(table(result, _scope(namespace, all_namespaces, rollout), since, plain, prom))
    if prom_error:
        print(f"error: {prom_error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def read_rollouts(client: kclient.Client, namespace: str | None, all_namespaces: bool, rollout: str | None) -> list[Any]:
    """One request: the named Rollout (GET), or every Rollout of the namespace or cluster (LIST)."""
    cluster = Cluster(client, namespace or "default")
    if rollout:
        return [cluster.get_rollout(rollout)]
    return cluster.list_rollouts(all_namespaces=all_namespaces)


def _scope(namespace: str | None, all_namespaces: bool, rollout: str | None) -> str:
    if rollout:
        return f"rollout {namespace or 'default'}/{rollout}"
    return "all namespaces" if all_namespaces else f"namespace {namespace or 'default'}"


def _plain(out: TextIO) -> bool:
    """ASCII without colour when NO_COLOR is set, TERM is dumb, or the output is not a terminal."""
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return True
    isatty = getattr(out, "isatty", None)
    return not (callable(isatty) and isatty())


# ---------------------------------------------------------------- the table


def duration(seconds: float | None) -> str:
    """1.2s, 42s, 3m05s, 1h02m, 2d03h."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _dist(d: st.Distribution, what: str) -> str:
    if not d.count:
        return f"- (no {what})"
    return f"median {duration(d.median)}, p90 {duration(d.p90)} ({d.count} {what})"


def _rate(r: st.Stats) -> str:
    cfr = r.change_failure_rate
    reverted = r.outcomes.get(Outcome.REVERTED.value, 0)
    if cfr is None:
        return "- (no release reached users)"
    return f"{cfr * 100:.1f}% ({reverted} reverted of {r.reached_users} that reached users)"


def table(r: st.Stats, scope: str, since: str, plain: bool, prom: dict[str, Any] | None = None) -> str:
    bold = (lambda s: s) if plain else (lambda s: f"\x1b[1m{s}\x1b[0m")
    busiest = r.busiest_day
    counts = [n for _, n in r.per_day]
    days = f"{r.per_day[0][0].isoformat()} .. {r.per_day[-1][0].isoformat()}" if r.per_day else ""
    outcomes = ", ".join(f"{k} {v}" for k, v in r.outcomes.items())
    rows = [
        ("Scope", f"{scope}: {r.rollouts} Rollout{'s' if r.rollouts != 1 else ''}, last {since} ({days}), from status.history"),
        ("Releases", f"{r.releases} ({r.per_day_mean:.2f}/day" + (f"; busiest {busiest[0]}: {busiest[1]})" if busiest else ")")),
        ("Outcomes", outcomes),
        ("Change failure rate", _rate(r)),
        ("Time to restore", _dist(r.time_to_restore, "restores")),
        ("Lead time", _dist(r.lead_time, "with teal.dev/source-time")),
        (
            "Time in analysis",
            _dist(r.analysis, "analysed") + (f", {duration(r.analysis.total)} in all" if r.analysis.count else ""),
        ),
        ("Per day", st.sparkline(counts, ascii_only=plain) + f"  (max {max(counts, default=0)})"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{bold(k.ljust(width))}  {v}" for k, v in rows]
    if r.truncated:
        names = ", ".join(r.truncated[:5]) + (" ..." if len(r.truncated) > 5 else "")
        lines.append(f"note: the window reaches past the history kept in status for {names}: use --prometheus for all")
    if r.rollouts > 1 and r.releases:
        lines += ["", _per_rollout(r, bold)]
    if prom is not None:
        lines += ["", _prometheus_lines(prom, bold)]
    return "\n".join(lines) + "\n"


def _per_rollout(r: st.Stats, bold: Any, limit: int = 20) -> str:
    head = ("NAMESPACE", "ROLLOUT", "RELEASES", "REACHED USERS", "REVERTED")
    body = [(x.namespace, x.name, str(x.releases), str(x.reached_users), str(x.reverted)) for x in r.lines if x.releases][:limit]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    fmt = "   ".join(f"{{:<{w}}}" for w in widths)
    out = [bold(fmt.format(*head).rstrip()), *(fmt.format(*row).rstrip() for row in body)]
    more = sum(1 for x in r.lines if x.releases) - len(body)
    return "\n".join(out + ([f"... and {more} more"] if more > 0 else []))


# ---------------------------------------------------------------- Prometheus


def _query(base: str, promql: str, at: dt.datetime) -> list[dict[str, Any]]:
    url = base.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql, "time": f"{at.timestamp():.3f}"})
    try:
        with urllib.request.urlopen(url, timeout=PROMETHEUS_TIMEOUT) as answer:  # noqa: S310 (a URL the user gave)
            doc = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise ValueError(f"{exc.code}: {exc.read()[:300].decode(errors='replace')}") from None
    if doc.get("status") != "success":
        raise ValueError(str(doc.get("error") or doc))
    return list(doc["data"]["result"])


def _value(series: list[dict[str, Any]]) -> float | None:
    if not series:
        return None
    v = float(series[0]["value"][1])
    return None if math.isnan(v) else v


def window_count(series: str, win: str) -> str:
    """PromQL for how much the counter `series` (a selector) grew over the window `win`, a
    series born inside the window counted whole: increase() sees no growth in a series whose
    first sample is already 1 (the operator creates a series at its first increment), so a
    series absent `win` ago counts its highest value in the window (max_over_time rather than
    its value now, so a series removed since, with its Rollout, still counts); the others
    their increase. The pattern of docs/metrics.md, `(X unless X offset W) or increase(X[W])`."""
    return f"((max_over_time({series}[{win}]) unless {series} offset {win}) or increase({series}[{win}]))"


SOURCES = {
    "releases": "teal_release_outcomes_total",
    "outcomes": "teal_release_outcomes_total",
    "reachedUsers": "teal_releases_reached_users_total",
    "changeFailureRate": "teal_release_outcomes_total{outcome=Reverted} / teal_releases_reached_users_total",
    "timeToRestoreSeconds": "histogram_quantile over teal_time_to_restore_seconds_bucket",
    "leadTimeSeconds": "histogram_quantile over teal_lead_time_seconds_bucket",
}


def from_prometheus(
    base: str, namespace: str | None, rollout: str | None, start: dt.datetime, end: dt.datetime
) -> dict[str, Any]:
    """The same window from the operator's metrics (counters survive the 25-entry history)."""
    sel = ",".join(f'{k}="{v}"' for k, v in (("namespace", namespace), ("rollout", rollout)) if v)
    ns_sel = f'namespace="{namespace}"' if namespace else ""
    win = f"{max(1, round((end - start).total_seconds()))}s"
    grown = _query(base, f"sum by (outcome) {window_count(f'teal_release_outcomes_total{{{sel}}}', win)}", end)
    outcomes = {str(s["metric"].get("outcome", "")): round(float(s["value"][1])) for s in grown}
    reached = _value(_query(base, f"sum {window_count(f'teal_releases_reached_users_total{{{sel}}}', win)}", end))
    out: dict[str, Any] = {
        "source": f"Prometheus at {base}",
        "releases": sum(outcomes.values()),
        "outcomes": {k: outcomes.get(k, 0) for k in OUTCOMES},
        "reachedUsers": round(reached) if reached is not None else None,
    }
    reverted = outcomes.get(Outcome.REVERTED.value, 0)
    out["changeFailureRate"] = round(reverted / out["reachedUsers"], 4) if out["reachedUsers"] else None
    for key, metric in (("timeToRestoreSeconds", "teal_time_to_restore_seconds"), ("leadTimeSeconds", "teal_lead_time_seconds")):
        buckets = f"sum by (le) {window_count(f'{metric}_bucket{{{ns_sel}}}', win)}"
        quantiles: dict[str, Any] = {"count": _count(base, f"sum {window_count(f'{metric}_count{{{ns_sel}}}', win)}", end)}
        for name, q in (("median", 0.5), ("p90", 0.9)):
            v = _value(_query(base, f"histogram_quantile({q}, {buckets})", end))
            quantiles[name] = round(v, 3) if v is not None else None
        out[key] = quantiles
    out["sources"] = SOURCES
    if rollout:
        out["note"] = "time to restore and lead time are per namespace (the histograms have no rollout label)"
    return out


def _count(base: str, promql: str, at: dt.datetime) -> int:
    v = _value(_query(base, promql, at))
    return round(v) if v is not None else 0


def _prometheus_lines(prom: dict[str, Any], bold: Any) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in prom["outcomes"].items())
    cfr, reached = prom.get("changeFailureRate"), prom.get("reachedUsers")
    ttr, lead = prom["timeToRestoreSeconds"], prom["leadTimeSeconds"]
    rows = [
        f"{bold('From Prometheus')}  {prom['source']} (teal_release_outcomes_total, teal_releases_reached_users_total,"
        " and the histograms teal_time_to_restore_seconds, teal_lead_time_seconds: quantiles estimated from their buckets)",
        f"  {prom['releases']} releases: {outcomes}",
        f"  change failure rate {'-' if cfr is None else f'{cfr * 100:.1f}%'} (of {reached or 0} that reached users); "
        f"time to restore median {duration(ttr['median'])}, p90 {duration(ttr['p90'])} ({ttr.get('count', 0)} restores); "
        f"lead time median {duration(lead['median'])}, p90 {duration(lead['p90'])} ({lead.get('count', 0)} with source time)",
    ]
    if prom.get("note"):
        rows.append(f"  ({prom['note']})")
    return "\n".join(rows)


def cmd_stats(cluster: Cluster, args: Any) -> int:
    """For the command line: `args` as teal.cli parses it (name, all_namespaces, since, output, prometheus)."""
    return run(
        cluster.client,
        cluster.namespace,
        bool(getattr(args, "all_namespaces", False)),
        getattr(args, "name", None),
        since=getattr(args, "since", None) or "30d",
        output=getattr(args, "output", None) or "table",
        prometheus=getattr(args, "prometheus", None),
    )
