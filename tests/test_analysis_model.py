"""Pure tests of teal.analysis.model: templating, the PromQL check, parsing, judging."""

from __future__ import annotations

import datetime as dt
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teal.analysis import (
    ERROR,
    FAILED,
    INCONCLUSIVE,
    SUCCESSFUL,
    AnalysisConfigError,
    Metric,
    QueryResult,
    check_promql,
    judge,
    parse_metrics,
    render,
)
from teal.analysis.expr import ExprError, compile_condition
from teal.analysis.model import with_color

NOW = dt.datetime(2030, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
VARS = {
    "namespace": "shop",
    "name": "checkout",
    "color": "green",
    "stableColor": "blue",
    "revision": "7",
    "stableRevision": "6",
    "activeService": "checkout",
    "previewService": "checkout-preview",
}
ERR_Q = (
    'sum(rate(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}",code=~"5.."}[1m]))'
    ' / sum(rate(http_requests_total{namespace="{{namespace}}",pod=~"{{podRegex}}"}[1m]))'
)


def no_templates(kind, name):
    return None


def j(metric, value, baseline=None):
    return judge(metric, value, baseline, "q", "7:prePromotion", "green", NOW)


# ---------------------------------------------------------------- render


def test_render_fills_every_variable_and_args():
    q = render(
        "{{namespace}} {{name}} {{color}} {{stableColor}} {{revision}} {{stableRevision}} "
        "{{activeService}} {{previewService}} {{ args.quantile }}",
        {**VARS, "args.quantile": "0.99"},
    )
    assert q == "shop checkout green blue 7 6 checkout checkout-preview 0.99"


def test_render_pod_variables_follow_the_colour():
    env = with_color(VARS, "green")
    q = render("{{deployment}} {{podRegex}} {{stableDeployment}} {{stablePodRegex}}", env)
    hash_, rand = "[456789bcdf]{1,10}", "[bcdfghjklmnpqrstvwxz2456789]{5}"
    assert q.split() == ["checkout-green", f"checkout-green-{hash_}-{rand}", "checkout-blue", f"checkout-blue-{hash_}-{rand}"]
    # {{color}} keeps working next to them
    assert render("{{color}}/{{stableColor}}", env) == "green/blue"
    # without a stable colour (the first release) the stable names have no value
    with pytest.raises(AnalysisConfigError, match=r"stablePodRegex.*no value"):
        render("{{stablePodRegex}}", with_color({**VARS, "stableColor": None}, "green"))


def test_render_unknown_variable_names_it():
    with pytest.raises(AnalysisConfigError, match=r"unknown variable \{\{colour\}\}.*\{\{podRegex\}\}"):
        render('x{c="{{colour}}"}', VARS)


def test_render_missing_arg_names_it():
    with pytest.raises(AnalysisConfigError, match=r"argument 'quantile'"):
        render("histogram_quantile({{args.quantile}}, x)", VARS)


def test_render_variable_without_value_is_config_error():
    with pytest.raises(AnalysisConfigError, match=r"previewService.*no value"):
        render("{{previewService}}", {**VARS, "previewService": None})


def test_render_malformed_placeholder():
    with pytest.raises(AnalysisConfigError, match="malformed placeholder"):
        render('x{c="{{color"}', VARS)


def test_render_does_not_reinterpret_values():
    # a value containing braces is inserted as it is, not rendered again
    assert render("{{args.sel}}", {"args.sel": "{{color}}"}) == "{{color}}"


# ---------------------------------------------------------------- check_promql


@pytest.mark.parametrize(
    "query",
    [
        render(ERR_Q, with_color(VARS, "green")),
        'histogram_quantile(0.99, sum by (le) (rate(x_bucket{a="}"}[5m])))',
        "vector(1) # a comment with ( unbalanced",
        'x{a=~"[a-z(]+"}',
        "x{a='single \\' quote'}",
        "label_replace(up, `dst`, `$1`, `src`, `(.*)`)",
    ],
)
def test_check_promql_accepts(query):
    check_promql(query)


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("sum(rate(x[1m])", "never closed"),
        ("sum(rate(x[1m])))", "unexpected ')'"),
        ('x{a="b}', "unterminated string"),
        ("x{a='b\"}", "unterminated string"),
        ("sum(x]", "unexpected ']'"),
        ("# only a comment", "nothing but comments"),
    ],
)
def test_check_promql_rejects(query, fragment):
    with pytest.raises(AnalysisConfigError, match=re.escape(fragment)):
        check_promql(query)


@given(st.text(alphabet="()[]{}ab\"' ", max_size=30))
def test_check_promql_never_crashes(query):
    try:
        check_promql(query)
    except AnalysisConfigError:
        pass


# ---------------------------------------------------------------- parse_metrics


def analysis(**over):
    spec = {
        "interval": "10s",
        "count": 3,
        "metrics": [{"name": "error-rate", "query": ERR_Q, "thresholdRange": {"max": 0.01}}],
    }
    spec.update(over)
    return spec


def test_parse_defaults_from_analysis():
    (m,) = parse_metrics(analysis(initialDelay="5s"), ["error-rate"], no_templates)
    assert (m.interval_s, m.count, m.initial_delay_s) == (10.0, 3, 5.0)
    assert (m.failure_limit, m.inconclusive_limit, m.consecutive_error_limit) == (0, 0, 4)
    assert m.no_data == "inconclusive" and not m.dry_run and m.threshold_max == 0.01


def test_parse_metric_overrides_analysis_defaults():
    spec = analysis()
    spec["metrics"][0].update(interval="1m", count=5, initialDelay="30s", failureLimit=2, noData="fail", dryRun=True)
    (m,) = parse_metrics(spec, ["error-rate"], no_templates)
    assert (m.interval_s, m.count, m.initial_delay_s, m.failure_limit, m.no_data, m.dry_run) == (
        60.0,
        5,
        30.0,
        2,
        "fail",
        True,
    )


def test_parse_unknown_metric_name():
    with pytest.raises(AnalysisConfigError, match=r"'latency' is named for analysis but not defined.*error-rate"):
        parse_metrics(analysis(), ["error-rate", "latency"], no_templates)


def test_parse_keeps_order_and_dedupes():
    spec = analysis()
    spec["metrics"].append({"name": "b", "query": "vector(1)", "thresholdRange": {"min": 1}})
    assert [m.name for m in parse_metrics(spec, ["b", "error-rate", "b"], no_templates)] == ["b", "error-rate"]


def test_parse_invalid_promql_is_config_error_naming_metric():
    spec = analysis(metrics=[{"name": "broken", "query": "sum(rate(x[1m])", "thresholdRange": {"max": 1}}])
    with pytest.raises(AnalysisConfigError, match=r"metric 'broken'.*never closed") as e:
        parse_metrics(spec, ["broken"], no_templates)
    assert e.value.metric == "broken" and e.value.field == "query"


def test_parse_needs_exactly_one_judgement():
    spec = analysis(metrics=[{"name": "a", "query": "vector(1)"}])
    with pytest.raises(AnalysisConfigError, match="exactly one of thresholdRange"):
        parse_metrics(spec, ["a"], no_templates)
    spec = analysis(metrics=[{"name": "a", "query": "vector(1)", "thresholdRange": {"max": 1}, "successCondition": "result < 1"}])
    with pytest.raises(AnalysisConfigError, match="exactly one of thresholdRange"):
        parse_metrics(spec, ["a"], no_templates)


def test_parse_rejects_failure_limit_not_below_count():
    spec = analysis(metrics=[{"name": "a", "query": "vector(1)", "thresholdRange": {"max": 1}, "failureLimit": 3}])
    with pytest.raises(AnalysisConfigError, match="could never fail"):
        parse_metrics(spec, ["a"], no_templates)


def test_parse_bad_condition_is_config_error():
    spec = analysis(metrics=[{"name": "a", "query": "vector(1)", "successCondition": "result <"}])
    with pytest.raises(AnalysisConfigError, match=r"metric 'a'.*successCondition.*not a valid expression"):
        parse_metrics(spec, ["a"], no_templates)
    spec = analysis(metrics=[{"name": "a", "query": "vector(1)", "successCondition": "__import__('os')"}])
    with pytest.raises(AnalysisConfigError, match="not allowed"):
        parse_metrics(spec, ["a"], no_templates)


def test_parse_baseline_defaults_ratio_one():
    spec = analysis(metrics=[{"name": "rel", "query": "x", "baseline": "y"}])
    (m,) = parse_metrics(spec, ["rel"], no_templates)
    assert m.ratio == 1.0 and m.floor == 0.0 and m.describe() == "<= 1 x baseline + 0"


def test_parse_bad_duration_is_config_error():
    with pytest.raises(AnalysisConfigError, match="interval"):
        parse_metrics(analysis(interval="soon"), ["error-rate"], no_templates)


TEMPLATE = {
    "apiVersion": "teal.dev/v1alpha1",
    "kind": "AnalysisTemplate",
    "metadata": {"name": "latency"},
    "spec": {
        "query": 'histogram_quantile({{args.quantile}}, sum by (le) (rate(h_bucket{svc="{{args.service}}",pod=~"{{podRegex}}"}[1m])))',
        "thresholdRange": {"max": 0.5},
        "failureLimit": 1,
        "count": 4,
        "args": [{"name": "quantile", "value": "0.9"}, {"name": "service"}],
    },
}


def fetch_latency(kind, name):
    return TEMPLATE if (kind, name) == ("AnalysisTemplate", "latency") else None


def test_template_resolution_and_arg_precedence():
    spec = {
        "args": [{"name": "service", "value": "checkout"}, {"name": "quantile", "value": "0.5"}],
        "metrics": [{"name": "p", "templateRef": {"name": "latency"}}],
    }
    (m,) = parse_metrics(spec, ["p"], fetch_latency)
    # rollout args < template defaults
    assert m.args == {"service": "checkout", "quantile": "0.9"}
    assert (m.threshold_max, m.failure_limit, m.count, m.template) == (0.5, 1, 4, "AnalysisTemplate/latency")
    # < metric args
    spec["metrics"][0]["args"] = [{"name": "quantile", "value": "0.99"}]
    (m,) = parse_metrics(spec, ["p"], fetch_latency)
    assert m.args["quantile"] == "0.99"


def test_template_missing_arg():
    spec = {"metrics": [{"name": "p", "templateRef": {"name": "latency"}}]}
    with pytest.raises(AnalysisConfigError, match=r"template AnalysisTemplate/latency.*needs argument\(s\) service"):
        parse_metrics(spec, ["p"], fetch_latency)


def test_unknown_template():
    spec = {"metrics": [{"name": "p", "templateRef": {"name": "nope", "kind": "ClusterAnalysisTemplate"}}]}
    with pytest.raises(AnalysisConfigError, match="ClusterAnalysisTemplate 'nope' not found in the cluster"):
        parse_metrics(spec, ["p"], fetch_latency)


def test_cluster_template_is_fetched_by_kind():
    asked = []

    def fetch(kind, name):
        asked.append((kind, name))
        return {"spec": {"query": "vector(1)", "thresholdRange": {"min": 1}}}

    spec = {"metrics": [{"name": "p", "templateRef": {"name": "up", "kind": "ClusterAnalysisTemplate"}}]}
    (m,) = parse_metrics(spec, ["p"], fetch)
    assert asked == [("ClusterAnalysisTemplate", "up")] and m.template == "ClusterAnalysisTemplate/up"


def test_metric_judgement_replaces_template_judgement():
    spec = {
        "args": [{"name": "service", "value": "checkout"}],
        "metrics": [{"name": "p", "templateRef": {"name": "latency"}, "successCondition": "result < 0.3", "dryRun": True}],
    }
    (m,) = parse_metrics(spec, ["p"], fetch_latency)
    assert m.threshold_max is None and m.success_condition == "result < 0.3" and m.dry_run


def test_query_and_template_ref_together_rejected():
    spec = {"metrics": [{"name": "p", "query": "x", "templateRef": {"name": "latency"}}]}
    with pytest.raises(AnalysisConfigError, match="either query or templateRef"):
        parse_metrics(spec, ["p"], fetch_latency)


# ---------------------------------------------------------------- judge


def threshold(**kw):
    return Metric(name="error-rate", query="q", threshold_max=0.01, **kw)


def test_threshold_pass_and_fail_messages():
    ok = j(threshold(), QueryResult.of(0.002))
    assert ok.verdict == SUCCESSFUL and ok.message == "error-rate 0.002 <= max 0.01" and ok.value == 0.002
    bad = j(threshold(), QueryResult.of(0.213))
    assert bad.verdict == FAILED and bad.message == "error-rate 0.213 > max 0.01"
    assert bad.run == "7:prePromotion" and bad.color == "green" and bad.at.startswith("2030-01-01T12:00:00")


def test_threshold_min_and_range():
    m = Metric(name="success", query="q", threshold_min=0.99, threshold_max=1)
    assert j(m, QueryResult.of(0.95)).message == "success 0.95 < min 0.99"
    assert j(m, QueryResult.of(0.995)).verdict == SUCCESSFUL


@pytest.mark.parametrize("policy, verdict", [("inconclusive", INCONCLUSIVE), ("fail", FAILED), ("pass", SUCCESSFUL)])
@pytest.mark.parametrize("result", [QueryResult.nothing(), QueryResult(value=float("nan"))])
def test_no_data_policy(policy, verdict, result):
    m = j(threshold(no_data=policy), result)
    assert m.verdict == verdict and "no data" in m.message and f"noData={policy}" in m.message


def test_infinities_are_numbers():
    assert j(threshold(), QueryResult.of(math.inf)).verdict == FAILED
    assert j(Metric(name="m", query="q", threshold_min=0), QueryResult.of(math.inf)).verdict == SUCCESSFUL
    d = j(threshold(), QueryResult.of(math.inf)).as_dict()
    assert d["value"] is None and "+Inf" in d["message"]


def test_errors_are_errors():
    m = j(threshold(), QueryResult.failure("unavailable", "cannot reach http://x: refused"))
    assert m.verdict == ERROR and m.error_kind == "unavailable" and "refused" in m.message


def rel(**kw):
    return Metric(name="errors-vs-live", query="q", baseline="b", max_ratio=1.2, floor=0.001, **kw)


def test_baseline_comparison():
    both_bad = j(rel(), QueryResult.of(0.2), QueryResult.of(0.2))
    assert both_bad.verdict == SUCCESSFUL and both_bad.baseline == 0.2
    only_green = j(rel(), QueryResult.of(0.2), QueryResult.of(0.001))
    assert only_green.verdict == FAILED
    assert only_green.message == "errors-vs-live 0.2 > 1.2 x baseline 0.001 + 0.001 = 0.0022"
    # the floor lets a tiny absolute difference pass when the baseline is zero
    assert j(rel(), QueryResult.of(0.0009), QueryResult.of(0.0)).verdict == SUCCESSFUL


def test_baseline_missing_follows_no_data_and_errors():
    assert j(rel(), QueryResult.of(0.1), QueryResult.nothing()).verdict == INCONCLUSIVE
    assert j(rel(no_data="fail"), QueryResult.of(0.1), QueryResult(value=float("nan"))).verdict == FAILED
    assert j(rel(), QueryResult.of(0.1), QueryResult.failure("timeout", "slow")).verdict == ERROR
    assert j(rel(), QueryResult.of(0.1), None).verdict == ERROR
    assert j(rel(), QueryResult.of(0.1), QueryResult.of(math.inf)).verdict == INCONCLUSIVE


def test_conditions():
    both = Metric(name="m", query="q", success_condition="result[0] < 0.01", failure_condition="result > 0.05")
    assert j(both, QueryResult.of(0.001)).verdict == SUCCESSFUL
    assert j(both, QueryResult.of(0.1)).verdict == FAILED
    assert j(both, QueryResult.of(0.03)).verdict == INCONCLUSIVE
    only_success = Metric(name="m", query="q", success_condition="result < 0.01 && !isNaN(result)")
    assert j(only_success, QueryResult.of(0.03)).verdict == FAILED
    only_failure = Metric(name="m", query="q", failure_condition="result >= 0.05 || result < 0")
    assert j(only_failure, QueryResult.of(0.03)).verdict == SUCCESSFUL
    with_baseline = Metric(name="m", query="q", baseline="b", success_condition="result <= 2 * baseline")
    assert j(with_baseline, QueryResult.of(0.3), QueryResult.of(0.2)).verdict == SUCCESSFUL
    assert j(with_baseline, QueryResult.of(0.5), QueryResult.of(0.2)).verdict == FAILED


def test_condition_evaluation_error_is_error_not_pass():
    m = Metric(name="m", query="q", success_condition="result / 0 < 1")
    out = j(m, QueryResult.of(1.0))
    assert out.verdict == ERROR and "cannot evaluate" in out.message


def test_condition_needs_baseline_to_use_it():
    with pytest.raises(AnalysisConfigError, match="unknown name 'baseline'"):
        Metric(name="m", query="q", success_condition="result < baseline")


@pytest.mark.parametrize("bad", ["result", "1 + 1", "os.system('x')", "result.real < 1", "[1][0] < 1", "'a' < 'b'"])
def test_expr_rejects(bad):
    with pytest.raises(ExprError):
        compile_condition(bad)


@given(
    value=st.floats(allow_nan=True, allow_infinity=True),
    lo=st.none() | st.floats(-10, 10),
    hi=st.none() | st.floats(-10, 10),
    policy=st.sampled_from(["inconclusive", "fail", "pass"]),
)
def test_judge_threshold_total(value, lo, hi, policy):
    """Every value gets a verdict; NaN is never judged as a number; pass means inside the range."""
    if lo is None and hi is None:
        hi = 1.0
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    m = Metric(name="m", query="q", threshold_min=lo, threshold_max=hi, no_data=policy)
    out = j(m, QueryResult(value=value))
    if math.isnan(value):
        assert out.verdict == {"inconclusive": INCONCLUSIVE, "fail": FAILED, "pass": SUCCESSFUL}[policy]
        assert "no data" in out.message
    elif out.verdict == SUCCESSFUL:
        assert (lo is None or value >= lo) and (hi is None or value <= hi)
    else:
        assert out.verdict == FAILED
        assert (lo is not None and value < lo) or (hi is not None and value > hi)
    assert out.as_dict()["value"] is None or math.isfinite(out.as_dict()["value"])


@given(
    v=st.floats(0, 1),
    b=st.floats(0, 1),
    ratio=st.floats(0.01, 3),
    floor=st.floats(0, 0.1),
)
def test_judge_baseline_formula(v, b, ratio, floor):
    m = Metric(name="m", query="q", baseline="b", max_ratio=ratio, floor=floor)
    out = j(m, QueryResult.of(v), QueryResult.of(b))
    assert (out.verdict == SUCCESSFUL) == (v <= b * ratio + floor)
