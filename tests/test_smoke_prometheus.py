"""Smoke tests of the local Prometheus, the fake app and the load generator."""

from __future__ import annotations

import pytest
from prometheus_api_client import PrometheusConnect

from teal_devenv.fakeapp import FakeApp, LoadGenerator, pod_names, run_fakeapp
from teal_devenv.prometheus import LocalPrometheus, pod_job
from teal_devenv.wait import wait_for

pytestmark = pytest.mark.prometheus

RPS = 10.0


def scalar(prom: PrometheusConnect, query: str) -> float | None:
    result = prom.custom_query(query, timeout=5)
    return float(result[0]["value"][1]) if result else None


def test_fakeapp_scraped_and_rate_queried(prometheus: LocalPrometheus) -> None:
    with run_fakeapp("green", "smoke") as app:
        prometheus.set_targets([pod_job("smoke-green", app.pod_targets(pod_names("smoke-green", 2)))], wait_up=True)
        prom = PrometheusConnect(url=prometheus.url, disable_ssl=True, timeout=5)
        assert prom.check_prometheus_connection()
        sel = 'namespace="smoke",pod=~"smoke-green-.+"'  # labels Prometheus attaches, as to a pod
        rate_q = f"sum(rate(http_requests_total{{{sel}}}[10s]))"

        with LoadGenerator({app.url: 1}, rps=RPS, duration=60) as load:
            rate = wait_for(
                lambda: (v := scalar(prom, rate_q)) is not None and abs(v - RPS) <= 0.15 * RPS and v,
                timeout=40,
                interval=1,
                what=f"{rate_q} to reach ~{RPS}",
            )
            assert abs(rate - RPS) <= 0.15 * RPS

            # 20 % of answers fail: the error ratio follows
            app.set(error_rate=0.2)
            ratio_q = f'sum(rate(http_requests_total{{{sel},code="500"}}[5s])) / sum(rate(http_requests_total{{{sel}}}[5s]))'
            ratio = wait_for(
                lambda: (v := scalar(prom, ratio_q)) is not None and abs(v - 0.2) <= 0.03 and v,
                timeout=40,
                interval=1,
                what=f"{ratio_q} to reach ~0.2",
            )
            assert abs(ratio - 0.2) <= 0.03

            # slower answers show in the latency histogram
            app.set(error_rate=0.0, latency=0.2)
            lat_q = (
                f"sum(rate(http_request_duration_seconds_sum{{{sel}}}[5s]))"
                f" / sum(rate(http_request_duration_seconds_count{{{sel}}}[5s]))"
            )
            latency = wait_for(
                lambda: (v := scalar(prom, lat_q)) is not None and 0.19 <= v <= 0.35 and v,
                timeout=40,
                interval=1,
                what=f"{lat_q} to reach ~0.2 s",
            )
            assert 0.19 <= latency <= 0.35
        assert load.totals()["200"] > 0
        assert set(load.totals()) <= {"200", "500"}


def test_set_targets_replaces_jobs(prometheus: LocalPrometheus) -> None:
    with FakeApp("blue", "smoke") as blue, FakeApp("green", "smoke") as green:
        prometheus.set_targets({"a": [blue.target], "b": [green.target]})
        prometheus.set_targets([{"job_name": "b", "static_configs": [{"targets": [green.target]}]}], wait_up=True)
        assert pools(prometheus) == {"b"}
        assert prometheus.wait_for('up{job="b"}', lambda v: v == 1, timeout=10) == 1
        prometheus.add_targets({"c": [blue.target]})
        assert pools(prometheus) == {"b", "c"}
        prometheus.remove_jobs("c")
        assert pools(prometheus) == {"b"}


def pools(prometheus: LocalPrometheus) -> set[str]:
    return {t["scrapePool"] for t in prometheus.api("/api/v1/targets")["activeTargets"]}


def test_load_generator_is_bounded_and_weighted() -> None:
    with FakeApp("blue") as blue, FakeApp("green") as green:
        load = LoadGenerator({blue.url: 3, green.url: 1}, rps=200, duration=10, max_requests=40).start()
        assert load.join(timeout=20), "the generator should stop by itself"
        assert load.sent == 40
        totals = {url: sum(c.values()) for url, c in load.stats.items()}
        assert totals == {blue.url + "/": 30, green.url + "/": 10}
    with pytest.raises(ValueError):
        LoadGenerator({"http://10.1.2.3:80/": 1})
    with pytest.raises(ValueError):
        LoadGenerator({"http://example.com/": 1})
