"""The analysis engine against a real Prometheus scraping fake blue/green apps (issue 4)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import re
import shutil

import pytest

from analysis_helpers import (
    NS,
    VARIABLES,
    WINDOW,
    Colors,
    error_rate_query,
    now,
    self_signed,
    start_proxy,
    stop_proxy,
)
from teal.analysis import (
    ERROR,
    FAILED,
    INCONCLUSIVE,
    SUCCESSFUL,
    AnalysisConfigError,
    Metric,
    advance,
    measure,
)
from teal.analysis.engine import evaluate
from teal.analysis.prometheus import PrometheusProvider, provider_from_spec
from teal_devenv.procs import free_port
from teal_devenv.prometheus import LocalPrometheus
from teal_devenv.wait import wait_for

pytestmark = pytest.mark.prometheus

KEY = "2:prePromotion"


def err_metric(**kw) -> Metric:
    kw.setdefault("threshold_max", 0.01)
    return Metric(name="error-rate", query=error_rate_query(), **kw)


@pytest.fixture
def prom(prometheus: LocalPrometheus):
    with PrometheusProvider(prometheus.url, timeout=5) as p:
        yield p


def measure_color(provider, metric, color="green"):
    return measure(provider, metric, {**VARIABLES, "color": color}, KEY, color, now())


def settle(provider, metric, ok, color="green", timeout=45.0, what=""):
    """Measure until `ok(measurement)` (the rates have caught up with the new settings)."""
    return wait_for(
        lambda: (m := measure_color(provider, metric, color)) is not None and ok(m) and m,
        timeout=timeout,
        interval=0.5,
        what=what or f"{metric.name} on {color} to settle",
    )


def near(x, target, tol=0.03):
    return x is not None and abs(x - target) <= tol


# ---------------------------------------------------------------- verdicts on real data


def test_healthy_values_pass(colors: Colors, prom):
    colors.set(blue=0.0, green=0.0)
    m = settle(prom, err_metric(), lambda m: m.value is not None and m.value == m.value, what="green error rate data")
    assert m.verdict == SUCCESSFUL, m.message
    assert m.value == 0.0 and m.message == "error-rate 0 <= max 0.01"
    assert f'pod=~"{VARIABLES["podRegex"]}"' in m.query and 'pod=~"checkout-green-[' in m.query and "{{" not in m.query
    assert prom.is_online()


def test_green_failing_20_percent_fails_the_error_rate(colors: Colors, prom):
    colors.set(blue=0.0, green=0.2)
    try:
        metric = err_metric()
        m = settle(prom, metric, lambda m: near(m.value, 0.2), what="green error rate ~0.2")
        assert m.verdict == FAILED
        assert re.fullmatch(r"error-rate 0\.[12]\d* > max 0\.01", m.message), m.message
        assert f"{m.value:.4f}".rstrip("0") in m.message  # the measured value, as measured
        # the run fails at once and says why with the measured value
        state, run = advance(None, KEY, [metric], [m], now())
        assert run.verdict == FAILED and "> max 0.01 (1 of 1 failed, limit 0)" in run.message
        # blue, measured at the same time, still passes
        assert measure_color(prom, metric, "blue").verdict == SUCCESSFUL
    finally:
        colors.set(green=0.0)


def test_baseline_passes_when_both_colours_are_equally_bad(colors: Colors, prom):
    metric = Metric(name="errors-vs-live", query=error_rate_query(), baseline=error_rate_query(), max_ratio=1.2, floor=0.01)
    colors.set(blue=0.2, green=0.2)
    try:
        m = settle(prom, metric, lambda m: near(m.value, 0.2) and near(m.baseline, 0.2), what="both ~0.2")
        assert m.verdict == SUCCESSFUL, m.message
        assert 'pod=~"checkout-blue-[' in m.baseline_query and 'pod=~"checkout-green-[' in m.query
        # the same data judged by a fixed threshold fails: baseline comparison is what passes it
        assert measure_color(prom, err_metric()).verdict == FAILED
    finally:
        colors.set(blue=0.0, green=0.0)


def test_baseline_fails_when_only_green_is_bad(colors: Colors, prom):
    stable_form = error_rate_query().replace("{{podRegex}}", "{{stablePodRegex}}")
    metric = Metric(name="errors-vs-live", query=error_rate_query(), baseline=stable_form, max_ratio=1.2, floor=0.01)
    colors.set(blue=0.0, green=0.2)
    try:
        m = settle(prom, metric, lambda m: near(m.value, 0.2) and near(m.baseline, 0.0, 0.001), what="green ~0.2, blue 0")
        assert m.verdict == FAILED
        assert "> 1.2 x baseline 0 + 0.01 = 0.01" in m.message
    finally:
        colors.set(green=0.0)


@pytest.mark.parametrize("policy, verdict", [("inconclusive", INCONCLUSIVE), ("fail", FAILED), ("pass", SUCCESSFUL)])
def test_empty_result_follows_no_data(colors: Colors, prom, policy, verdict):
    empty = Metric(
        name="absent",
        query=f'sum(rate(http_requests_total{{namespace="{NS}",pod=~"checkout-purple-.*"}}[{WINDOW}]))',
        threshold_max=0.01,
        no_data=policy,
    )
    m = measure_color(prom, empty)
    assert m.verdict == verdict and "returned no series" in m.message and m.value is None
    # a colour that is scraped but gets no requests: 0/0 = NaN, also "no data"
    idle = settle(prom, err_metric(no_data=policy), lambda m: m.message.endswith(f"noData={policy}"), color="idle")
    assert idle.verdict == verdict and "NaN" in idle.message


def test_scalar_and_vector_results(prom):
    assert measure_color(prom, Metric(name="s", query="scalar(vector(0.5))", threshold_max=1)).value == 0.5
    assert prom.query("vector(2)").value == 2.0


def test_several_series_is_an_error_asking_to_aggregate(colors: Colors, prom):
    metric = Metric(name="per-pod", query=f'rate(http_requests_total{{namespace="{NS}"}}[{WINDOW}])', threshold_max=1e9)
    m = measure_color(prom, metric)
    assert m.verdict == ERROR and m.error_kind == "multiple_series" and "aggregate" in m.message


# ---------------------------------------------------------------- configuration errors from Prometheus


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("rate(http_requests_total)", "range vector"),  # passes the cheap check, not Prometheus's parser
        ("sum by (le http_requests_total", None),  # caught by the cheap check already
        ("http_requests_total{a=~'('}", "error parsing regexp"),
        (f"http_requests_total[{WINDOW}]", "range vector"),  # valid PromQL, but no number
    ],
)
def test_invalid_query_is_a_config_error(prom, query, fragment):
    metric = Metric(name="broken", query=query, threshold_max=1)
    with pytest.raises(AnalysisConfigError) as e:
        measure_color(prom, metric)
    assert e.value.metric == "broken"
    if fragment:
        assert fragment in str(e.value)


def test_bad_data_kind_from_provider(prom):
    r = prom.query("sum(")
    assert r.error_kind == "bad_data" and "HTTP 400" in r.error


# ---------------------------------------------------------------- Prometheus down


def test_wrong_port_is_an_error_and_the_run_never_passes():
    metric = err_metric(consecutive_error_limit=2, no_data="pass", interval_s=1.0)
    spec = {
        "prePromotion": ["error-rate"],
        "metrics": [
            {
                "name": "error-rate",
                "query": metric.query,
                "thresholdRange": {"max": 0.01},
                "noData": "pass",
                "consecutiveErrorLimit": 2,
                "interval": "1s",
            }
        ],
        "prometheus": {"address": f"http://127.0.0.1:{free_port()}", "timeout": "2s"},
    }
    state, history, t = None, None, now()
    verdicts = []
    for _ in range(5):
        ev = evaluate(
            spec,
            KEY,
            variables=VARIABLES,
            state=state,
            history=history,
            fetch_template=lambda k, n: None,
            read_secret=lambda n, k: None,
            now=t,
        )
        state, history = ev.state, ev.history
        verdicts.append(ev.run.verdict)
        assert all(m.verdict == ERROR and m.error_kind == "unavailable" for m in ev.measurements)
        if ev.run.next_at is None:
            break
        t = ev.run.next_at
    assert verdicts == ["Running", "Running", INCONCLUSIVE]
    assert "3 errors in a row, limit 2" in ev.run.message and "cannot reach" in ev.run.message


def test_stopped_prometheus_is_an_error(tmp_path):
    p = LocalPrometheus(tmp_path / "prom").start()
    try:
        provider = PrometheusProvider(p.url, timeout=3)
        assert provider.query("vector(1)").value == 1.0
    finally:
        p.stop()
    m = measure(provider, err_metric(no_data="pass"), VARIABLES, KEY, "green", now())
    assert m.verdict == ERROR and m.error_kind == "unavailable"
    assert not provider.is_online()
    provider.close()


# ---------------------------------------------------------------- headers, auth, TLS


def test_bearer_token_and_tenant_header_are_sent(prometheus: LocalPrometheus):
    proxy = start_proxy(prometheus.url)
    try:
        spec = {
            "address": proxy.url,
            "timeout": "5s",
            "headers": [{"name": "X-Scope-OrgID", "value": "tenant-a"}],
            "bearerTokenSecretRef": {"name": "prom-token", "key": "token"},
        }
        read = lambda name, key: {("prom-token", "token"): "s3cret\n"}.get((name, key))  # noqa: E731
        with provider_from_spec(spec, read, None) as p:
            assert p.query("vector(3)").value == 3.0
        h = proxy.last()
        assert h["authorization"] == "Bearer s3cret"
        assert h["x-scope-orgid"] == "tenant-a"
        assert "/api/v1/query" not in h  # (headers only)
    finally:
        stop_proxy(proxy)


def test_basic_auth_is_sent(prometheus: LocalPrometheus):
    proxy = start_proxy(prometheus.url)
    try:
        values = {("prom-basic", "username"): "teal", ("prom-basic", "password"): "pa:ss"}
        spec = {"address": proxy.url, "basicAuthSecretRef": {"name": "prom-basic"}}
        with provider_from_spec(spec, lambda n, k: values.get((n, k)), None) as p:
            assert p.query("vector(1)").value == 1.0
        assert proxy.last()["authorization"] == "Basic " + base64.b64encode(b"teal:pa:ss").decode()
    finally:
        stop_proxy(proxy)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_tls_with_ca_bundle_or_insecure(prometheus: LocalPrometheus, tmp_path):
    cert, key, pem = self_signed(tmp_path)
    proxy = start_proxy(prometheus.url, tls=(cert, key))
    try:
        read = lambda n, k: {("prom-ca", "ca.crt"): pem}.get((n, k))  # noqa: E731
        with provider_from_spec({"address": proxy.url, "caSecretRef": {"name": "prom-ca"}}, read, None) as p:
            assert p.query("vector(1)").value == 1.0
        with provider_from_spec({"address": proxy.url}, read, None) as p:
            r = p.query("vector(1)")
            assert r.error_kind == "tls" and "certificate" in r.error.lower()
        with provider_from_spec({"address": proxy.url, "insecureSkipVerify": True}, read, None) as p:
            assert p.query("vector(1)").value == 1.0
    finally:
        stop_proxy(proxy)


# ---------------------------------------------------------------- a whole run, end to end


def test_evaluate_runs_to_success_while_a_failing_dry_run_metric_is_only_reported(colors: Colors, prometheus):
    colors.set(blue=0.0, green=0.0)
    settle(PrometheusProvider(prometheus.url, timeout=5), err_metric(), lambda m: m.verdict == SUCCESSFUL)
    spec = {
        "prometheus": {"address": prometheus.url, "timeout": "5s"},
        "interval": "1s",
        "count": 3,
        "prePromotion": ["error-rate", "strict-latency"],
        "metrics": [
            {"name": "error-rate", "query": error_rate_query(), "thresholdRange": {"max": 0.01}},
            {
                "name": "strict-latency",
                "dryRun": True,
                "query": f'histogram_quantile(0.5, sum by (le) (rate(http_request_duration_seconds_bucket{{namespace="{NS}",pod=~"{{{{podRegex}}}}"}}[{WINDOW}])))',
                "thresholdRange": {"max": 0.000001},  # nothing is that fast: always fails
            },
        ],
    }
    state, history = None, None

    def tick():
        nonlocal state, history
        ev = evaluate(
            spec,
            KEY,
            variables=VARIABLES,
            state=state,
            history=history,
            fetch_template=lambda k, n: None,
            read_secret=lambda n, k: None,
            now=now(),
        )
        state, history = ev.state, ev.history
        return ev if ev.run.verdict != "Running" else None

    ev = wait_for(tick, timeout=30, interval=0.3, what="the analysis run to finish")
    assert ev.run.verdict == SUCCESSFUL, ev.run.message
    assert state["metrics"]["error-rate"]["successful"] == 3
    assert state["metrics"]["strict-latency"]["phase"] == FAILED
    assert any(h["metric"] == "strict-latency" and h["verdict"] == FAILED and h.get("dryRun") for h in history)
    assert ev.run.message.startswith("error-rate 0 <= max 0.01 (3/3 passed)")


def test_measurement_times_are_utc(prom):
    m = measure_color(prom, Metric(name="s", query="vector(0)", threshold_max=1))
    assert dt.datetime.fromisoformat(m.at.replace("Z", "+00:00")).tzinfo is not None
    assert dataclasses.asdict(m)["query"] == "vector(0)"
