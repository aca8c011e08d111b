"""How long one analysis measurement takes against a local Prometheus.

Starts a real Prometheus (1 s scrapes) and two fake colours under load, waits for data,
then times N calls of teal.analysis.measure() for:
  * error-rate      one instant query (sum(rate(...5xx)) / sum(rate(...)))
  * errors-vs-live  two queries (the candidate and the baseline on the stable colour)
  * a whole evaluate() tick of both metrics (parse, due, measure, advance, record)
and, for Teal's own share, the same tick with a provider that answers at once.

    python bench/bench_analysis.py [--calls 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

from teal.analysis import Metric, QueryResult, measure
from teal.analysis.engine import evaluate
from teal.analysis.prometheus import PrometheusProvider
from teal_devenv.fakeapp import FakeApp, LoadGenerator, pod_names
from teal_devenv.prometheus import LocalPrometheus, pod_job

NS = "bench"
SEL = f'namespace="{NS}",pod=~"{{{{podRegex}}}}"'  # the labels Prometheus gives any pod'
ERR = f'sum(rate(http_requests_total{{{SEL},code=~"5.."}}[10s])) / sum(rate(http_requests_total{{{SEL}}}[10s]))'
VARS = {
    "namespace": NS,
    "name": "bench",
    "color": "green",
    "stableColor": "blue",
    "revision": "2",
    "stableRevision": "1",
    "activeService": "bench",
    "previewService": None,
}
SPEC = {
    "interval": "1ms",  # every tick measures again: the bench times the work, not the schedule
    "count": 1000,
    "prePromotion": ["error-rate", "errors-vs-live"],
    "metrics": [
        {"name": "error-rate", "query": ERR, "thresholdRange": {"max": 0.01}},
        {"name": "errors-vs-live", "query": ERR, "baseline": ERR, "maxRatio": 1.2, "floor": 0.01},
    ],
}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[i]


def report(name: str, secs: list[float]) -> None:
    ms = [s * 1000 for s in secs]
    print(
        f"{name:<34} n={len(ms):<4} p50={pct(ms, 50):7.2f} ms  p99={pct(ms, 99):7.2f} ms  "
        f"mean={statistics.fmean(ms):7.2f} ms  max={max(ms):7.2f} ms"
    )


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


class Instant:
    def query(self, promql: str) -> QueryResult:
        return QueryResult.of(0.0)

    def is_online(self) -> bool:
        return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args(argv)
    n = args.calls

    with (
        tempfile.TemporaryDirectory(prefix="teal-bench-") as tmp,
        LocalPrometheus(Path(tmp) / "prom") as prom,
        FakeApp("blue", NS) as blue,
        FakeApp("green", NS) as green,
    ):
        prom.set_targets(
            [pod_job(app.color, app.pod_targets(pod_names(f"bench-{app.color}", 2))) for app in (blue, green)], wait_up=True
        )
        with LoadGenerator({blue.url: 1, green.url: 1}, rps=40, duration=600):
            err = Metric(name="error-rate", query=ERR, threshold_max=0.01)
            rel = Metric(name="errors-vs-live", query=ERR, baseline=ERR, max_ratio=1.2, floor=0.01)
            with PrometheusProvider(prom.url, timeout=10) as p:
                deadline = time.monotonic() + 60
                while measure(p, err, VARS, "b", "green", dt.datetime.now(dt.UTC)).value is None:
                    if time.monotonic() > deadline:
                        print("no data from Prometheus after 60 s", file=sys.stderr)
                        return 1
                    time.sleep(0.5)
                now = lambda: dt.datetime.now(dt.UTC)  # noqa: E731
                print(f"Prometheus {prom.url}, {n} calls each (after warm-up)")
                timed(lambda: measure(p, err, VARS, "b", "green", now()), 10)
                report("measure(error-rate)  [1 query]", timed(lambda: measure(p, err, VARS, "b", "green", now()), n))
                report("measure(errors-vs-live) [2 queries]", timed(lambda: measure(p, rel, VARS, "b", "green", now()), n))

                state: dict = {"s": None, "h": None}

                def tick(provider) -> None:
                    ev = evaluate(
                        SPEC,
                        "2:prePromotion",
                        variables=VARS,
                        state=state["s"],
                        history=state["h"],
                        fetch_template=lambda k, nm: None,
                        read_secret=lambda nm, k: None,
                        now=now(),
                        provider=provider,
                    )
                    state["s"], state["h"] = ev.state, ev.history
                    assert len(ev.measurements) == 2, ev.run

                report("evaluate() tick, 2 metrics, real", timed(lambda: tick(p), n))
                state.update(s=None, h=None)
                report("evaluate() tick, instant provider", timed(lambda: tick(Instant()), n))
            cold = []
            for _ in range(min(n, 50)):
                with PrometheusProvider(prom.url, timeout=10) as fresh:
                    t = time.perf_counter()
                    measure(fresh, err, VARS, "b", "green", now())
                    cold.append(time.perf_counter() - t)
            report("measure() on a new connection", cold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
