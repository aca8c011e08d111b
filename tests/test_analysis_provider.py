"""The provider and engine without a Prometheus: configuration, timeouts, dead ports,
result parsing, and `evaluate` with a scripted provider."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from analysis_helpers import Silent
from teal.analysis import (
    ERROR,
    FAILED,
    INCONCLUSIVE,
    RUNNING,
    SUCCESSFUL,
    AnalysisConfigError,
    Metric,
    QueryResult,
    measure,
)
from teal.analysis.engine import evaluate, names_for_key, rollout_variables
from teal.analysis.prometheus import (
    PrometheusProvider,
    ProviderCache,
    _http_error,
    _parse_result,
    provider_from_spec,
)
from teal_devenv.procs import free_port

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
VARS = rollout_variables(
    namespace="shop",
    name="checkout",
    color="green",
    stable_color="blue",
    revision=7,
    stable_revision=6,
    active_services=["checkout"],
    preview_service=None,
)


def secrets(values):
    def read(name, key):
        return values.get((name, key))

    return read


# ---------------------------------------------------------------- provider_from_spec


def test_missing_secret_names_it():
    spec = {"address": "http://prom:9090", "bearerTokenSecretRef": {"name": "prom-token", "key": "token"}}
    with pytest.raises(AnalysisConfigError, match=r"bearerTokenSecretRef.*Secret 'prom-token' or its key 'token' not found"):
        provider_from_spec(spec, secrets({}), None)
    spec = {"address": "http://prom:9090", "basicAuthSecretRef": {"name": "prom-basic"}}
    with pytest.raises(AnalysisConfigError, match=r"Secret 'prom-basic' or its key 'password'"):
        provider_from_spec(spec, secrets({("prom-basic", "username"): "u"}), None)
    spec = {"address": "https://prom:9090", "caSecretRef": {"name": "prom-ca"}}
    with pytest.raises(AnalysisConfigError, match=r"Secret 'prom-ca' or its key 'ca.crt'"):
        provider_from_spec(spec, secrets({}), None)


def test_address_and_timeout_settings():
    with pytest.raises(AnalysisConfigError, match="no Prometheus address"):
        provider_from_spec({}, secrets({}), None)
    with pytest.raises(AnalysisConfigError, match="not an http"):
        provider_from_spec({"address": "prom:9090"}, secrets({}), None)
    with pytest.raises(AnalysisConfigError, match="timeout"):
        provider_from_spec({"address": "http://p", "timeout": "soon"}, secrets({}), None)
    p = provider_from_spec({"timeout": "1500ms"}, secrets({}), "http://default:9090/")
    try:
        assert p.address == "http://default:9090" and p.timeout == 1.5
    finally:
        p.close()
    # the default timeout: 10 s (the library's own default is none)
    with provider_from_spec({"address": "http://p"}, secrets({}), None) as p:
        assert p.timeout == 10.0


def test_conflicting_auth_rejected():
    s = secrets({("t", "token"): "x", ("b", "username"): "u", ("b", "password"): "p"})
    with pytest.raises(AnalysisConfigError, match="not both"):
        provider_from_spec({"address": "http://p", "bearerTokenSecretRef": {"name": "t"}, "basicAuthSecretRef": {"name": "b"}}, s)
    with pytest.raises(AnalysisConfigError, match="Authorization header conflicts"):
        provider_from_spec(
            {"address": "http://p", "bearerTokenSecretRef": {"name": "t"}, "headers": [{"name": "Authorization", "value": "x"}]},
            s,
        )
    with pytest.raises(AnalysisConfigError, match="not a valid HTTP header name"):
        provider_from_spec({"address": "http://p", "headers": [{"name": "X Bad", "value": "x"}]}, s)


def test_provider_cache_reuses_and_rotates():
    cache = ProviderCache(size=2)
    values = {("t", "token"): "one"}
    spec = {"address": "http://p", "bearerTokenSecretRef": {"name": "t"}}
    a = cache.get(spec, secrets(values))
    assert cache.get(spec, secrets(values)) is a
    values[("t", "token")] = "two"  # a rotated token gives a new provider
    b = cache.get(spec, secrets(values))
    assert b is not a and b.headers["Authorization"] == "Bearer two"
    cache.get({"address": "http://q"}, secrets({}))
    assert len(cache) == 2
    cache.close()


# ---------------------------------------------------------------- transport failures


def test_timeout_is_honoured_against_a_server_that_never_answers():
    with Silent() as silent:
        p = provider_from_spec({"address": silent.url, "timeout": "500ms"}, secrets({}), None)
        t = time.monotonic()
        r = p.query("vector(1)")
        elapsed = time.monotonic() - t
        p.close()
    assert r.error_kind == "timeout" and "within 0.5s" in r.error
    assert 0.4 <= elapsed < 2.0, elapsed


def test_measure_against_a_silent_server_is_an_error_not_a_pass():
    m = Metric(name="error-rate", query="vector(0)", threshold_max=0.01, no_data="pass")
    with Silent() as silent, PrometheusProvider(silent.url, timeout=0.3) as p:
        out = measure(p, m, VARS, "7:prePromotion", "green", T0)
        assert not p.is_online()
    assert out.verdict == ERROR and out.error_kind == "timeout"


def test_nothing_listening_is_unavailable_and_fast():
    with PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout=5) as p:
        t = time.monotonic()
        r = p.query("vector(1)")
        assert time.monotonic() - t < 2.0  # no silent retries with back-off
        assert not p.is_online()
    assert r.error_kind == "unavailable" and "cannot reach" in r.error


# ---------------------------------------------------------------- parsing answers


def test_parse_results():
    assert _parse_result([1700000000.1, "0.25"]).value == 0.25
    assert _parse_result([]).empty
    assert _parse_result([{"metric": {}, "value": [1, "NaN"]}]).no_data
    assert _parse_result([{"metric": {}, "value": [1, "+Inf"]}]).value == float("inf")
    many = _parse_result([{"metric": {"pod": "a"}, "value": [1, "1"]}, {"metric": {"pod": "b"}, "value": [1, "2"]}])
    assert many.error_kind == "multiple_series" and 'pod="a"' in many.error and "sum(" in many.error
    assert _parse_result([{"metric": {}, "values": [[1, "1"]]}]).error_kind == "bad_data"
    assert _parse_result([1, "text"]).error_kind == "bad_data"


def test_http_error_reads_prometheus_error_body():
    body = '{"status":"error","errorType":"bad_data","error":"1:6: parse error: unexpected \\"(\\""}'
    status, kind, text = _http_error(400, body)
    assert (status, kind) == (400, "bad_data") and "parse error" in text
    assert _http_error(502, "<html>bad gateway</html>")[:2] == (502, None)


# ---------------------------------------------------------------- evaluate with a scripted provider


class Scripted:
    """A Provider answering from a dict of query -> QueryResult (default: value 0)."""

    def __init__(self, answers=None):
        self.answers = answers or {}
        self.asked: list[str] = []

    def query(self, promql):
        self.asked.append(promql)
        r = self.answers.get(promql, QueryResult.of(0.0))
        if isinstance(r, Exception):
            raise r
        return r

    def is_online(self):
        return True


SPEC = {
    "interval": "10s",
    "count": 2,
    "prePromotion": ["error-rate", "shadow"],
    "metrics": [
        {"name": "error-rate", "query": 'err{c="{{color}}"}', "thresholdRange": {"max": 0.01}},
        {"name": "shadow", "query": 'shadow{c="{{color}}"}', "thresholdRange": {"max": 0.01}, "dryRun": True},
    ],
}


def no_templates(kind, name):
    return None


def run_ticks(provider, spec=SPEC, key="7:prePromotion", ticks=10):
    state, history, now = None, None, T0
    evs = []
    for _ in range(ticks):
        ev = evaluate(
            spec,
            key,
            variables=VARS,
            state=state,
            history=history,
            fetch_template=no_templates,
            read_secret=secrets({}),
            now=now,
            provider=provider,
        )
        evs.append(ev)
        state, history = ev.state, ev.history
        if ev.run.next_at is None:
            break
        now = max(ev.run.next_at, now + dt.timedelta(seconds=1))
    return evs


def test_evaluate_dry_run_failure_does_not_fail_the_run():
    p = Scripted({'shadow{c="green"}': QueryResult.of(5.0)})
    evs = run_ticks(p)
    final = evs[-1]
    assert final.run.verdict == SUCCESSFUL and final.run.error is None
    assert [h["verdict"] for h in final.history if h["metric"] == "shadow"] == [FAILED]
    assert all(h.get("dryRun") for h in final.history if h["metric"] == "shadow")
    assert "error-rate 0 <= max 0.01 (2/2 passed)" in final.run.message


def test_evaluate_config_error_comes_back_as_run_error():
    spec = {**SPEC, "metrics": [{**SPEC["metrics"][0], "query": 'err{c="{{colour}}"}'}, SPEC["metrics"][1]]}
    (ev,) = run_ticks(Scripted(), spec=spec)
    assert ev.run.error and "{{colour}}" in ev.run.error and ev.config_error is not None
    assert ev.run.verdict == FAILED and ev.measurements == []


def test_evaluate_bad_data_from_provider_is_config_error():
    p = Scripted({'err{c="green"}': QueryResult.failure("bad_data", "1:5: parse error")})
    (ev,) = run_ticks(p)
    assert ev.run.error and "Prometheus rejected the query: 1:5: parse error" in ev.run.error


def test_evaluate_outage_skips_other_queries_and_ends_inconclusive():
    down = QueryResult.failure("unavailable", "cannot reach http://prom: refused")
    p = Scripted({'err{c="green"}': down, 'shadow{c="green"}': down})
    evs = run_ticks(p, ticks=20)
    assert evs[0].measurements[1].verdict == ERROR and "not queried again" in evs[0].measurements[1].message
    assert len(p.asked) == len(evs)  # one query per tick while Prometheus is down
    assert [e.run.verdict for e in evs] == [RUNNING] * 4 + [INCONCLUSIVE]
    assert "5 errors in a row, limit 4" in evs[-1].run.message and "refused" in evs[-1].run.message


def test_evaluate_provider_exception_is_an_error_measurement():
    p = Scripted({'err{c="green"}': RuntimeError("boom")})
    ev = run_ticks(p, ticks=1)[0]
    assert ev.measurements[0].verdict == ERROR and "boom" in ev.measurements[0].message


def test_baseline_is_rendered_for_the_stable_colour():
    m = Metric(name="rel", query='err{c="{{color}}"}', baseline='err{c="{{color}}",r="{{revision}}"}', max_ratio=1.2)
    p = Scripted({'err{c="green"}': QueryResult.of(0.1), 'err{c="blue",r="6"}': QueryResult.of(0.1)})
    out = measure(p, m, VARS, "7:steps:0", "green", T0)
    assert out.verdict == SUCCESSFUL and out.baseline_query == 'err{c="blue",r="6"}'
    # no data on the candidate: the baseline is not even asked
    p = Scripted({'err{c="green"}': QueryResult.nothing()})
    assert measure(p, m, VARS, "7:steps:0", "green", T0).verdict == INCONCLUSIVE and p.asked == ['err{c="green"}']


def test_baseline_pod_variables_are_the_stable_colours():
    sel = 'err{d="{{deployment}}",pod=~"{{podRegex}}"}'
    m = Metric(name="rel", query=sel, baseline=sel, max_ratio=1.2)
    p = Scripted()
    out = measure(p, m, VARS, "7:steps:0", "green", T0)
    assert out.query.startswith('err{d="checkout-green",pod=~"checkout-green-[')
    assert out.baseline_query.startswith('err{d="checkout-blue",pod=~"checkout-blue-[')
    # the measured colour overrides the one in the variables, pod names follow it
    assert 'pod=~"checkout-blue-[' in measure(p, m, VARS, "7:steps:0", "blue", T0).query


def test_unset_variable_is_config_error_at_measure_time():
    m = Metric(name="p", query='x{svc="{{previewService}}"}', threshold_max=1)
    with pytest.raises(AnalysisConfigError, match=r"metric 'p'.*previewService"):
        measure(Scripted(), m, VARS, "7:prePromotion", "green", T0)


def test_names_for_key():
    assert names_for_key(SPEC, "7:prePromotion") == ["error-rate", "shadow"]
    assert names_for_key(SPEC, "7:steps:2") == []
    with pytest.raises(AnalysisConfigError):
        names_for_key(SPEC, "7")
