"""The AnalysisTemplate / ClusterAnalysisTemplate CRDs: consistent with the Rollout CRD and
teal.analysis, installed into a real kube-apiserver, rejecting bad objects with clear messages,
and read back by teal.analysis.kube for parse_metrics / provider_from_spec."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path

import kubernetes.client as k
import pytest
import yaml
from kubernetes.client.rest import ApiException

from teal import api
from teal.analysis import AnalysisConfigError, parse_metrics
from teal.analysis.kube import secret_reader, template_fetcher
from teal.analysis.model import _METRIC_FIELDS
from teal.analysis.prometheus import provider_from_spec
from teal_devenv.wait import wait_for

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "analysistemplates.yaml"
G, V = api.GROUP, api.VERSION
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def crds() -> dict[str, dict]:
    return {d["spec"]["names"]["kind"]: d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d}


def spec_schema(kind: str) -> dict:
    (v,) = crds()[kind]["spec"]["versions"]
    return v["schema"]["openAPIV3Schema"]["properties"]["spec"]


# ---------------------------------------------------------------- no cluster needed


def test_both_kinds_share_one_schema_and_columns():
    c = crds()
    assert set(c) == {"AnalysisTemplate", "ClusterAnalysisTemplate"}
    assert c["AnalysisTemplate"]["spec"]["scope"] == "Namespaced"
    assert c["ClusterAnalysisTemplate"]["spec"]["scope"] == "Cluster"
    assert spec_schema("AnalysisTemplate") == spec_schema("ClusterAnalysisTemplate")
    cols = [v["additionalPrinterColumns"] for d in c.values() for v in d["spec"]["versions"]]
    assert cols[0] == cols[1]


def test_template_fields_match_the_rollout_metric_and_the_parser():
    rollout = yaml.safe_load((ROOT / "crds" / "rollouts.yaml").read_text())
    (v,) = rollout["spec"]["versions"]
    metric = v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["analysis"]["properties"]["metrics"]["items"]
    template = spec_schema("AnalysisTemplate")["properties"]
    assert set(template) == set(metric["properties"]) - {"name", "templateRef"}
    assert set(template) == set(_METRIC_FIELDS)
    for name in set(template) - {"args", "query", "baseline", "successCondition", "failureCondition"}:
        # same types and bounds as the Rollout's inline metric
        strip = lambda n: {kk: vv for kk, vv in n.items() if kk not in ("description", "x-kubernetes-validations")}  # noqa: E731
        assert strip(template[name]) == strip(metric["properties"][name]), name

    def keys(n):
        if isinstance(n, dict):
            for kk, vv in n.items():
                yield kk
                yield from keys(vv)
        elif isinstance(n, list):
            for vv in n:
                yield from keys(vv)

    assert "default" not in set(keys(spec_schema("AnalysisTemplate")))  # see the CRD file's header


# ---------------------------------------------------------------- in the apiserver

cluster = pytest.mark.cluster


@pytest.fixture(scope="module")
def installed(k8s):
    ext = k.ApiextensionsV1Api(k8s)
    for body in crds().values():
        ext.patch_custom_resource_definition(
            body["metadata"]["name"],
            body,
            field_manager="teal-analysis-tests",
            force=True,
            _content_type="application/apply-patch+yaml",
        )
    for body in crds().values():
        name = body["metadata"]["name"]

        def established(name=name):
            got = ext.read_custom_resource_definition(name)
            conds = {c.type: c.status for c in got.status.conditions or []}
            return conds.get("Established") == "True" and conds.get("NamesAccepted") == "True"

        wait_for(established, timeout=30, what=f"{name} to be Established")
    co = k.CustomObjectsApi(k8s)
    wait_for(
        lambda: co.list_cluster_custom_object(G, V, "analysistemplates") is not None,
        timeout=30,
        what="analysistemplates to be served",
    )
    wait_for(
        lambda: co.list_cluster_custom_object(G, V, "clusteranalysistemplates") is not None,
        timeout=30,
        what="clusteranalysistemplates to be served",
    )
    return co


def template(name="latency", **spec) -> dict:
    body = {
        "query": 'histogram_quantile({{args.quantile}}, sum by (le) (rate(http_request_duration_seconds_bucket{namespace="{{namespace}}",pod=~"{{podRegex}}"}[1m])))',
        "thresholdRange": {"max": 0.5},
        "args": [{"name": "quantile", "value": "0.99"}],
    }
    body.update(spec)
    body = {k_: v for k_, v in body.items() if v is not None}
    return {"apiVersion": api.API_VERSION, "kind": "AnalysisTemplate", "metadata": {"name": name}, "spec": body}


def create(co, namespace, doc):
    return co.create_namespaced_custom_object(G, V, namespace, "analysistemplates", doc, field_validation="Strict")


def message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(exc.body)


GOOD = {
    "threshold": {},
    "conditions": {"thresholdRange": None, "successCondition": "result < 0.5", "failureCondition": "result > 2"},
    "baseline": {
        "thresholdRange": None,
        "baseline": 'sum(rate(x{namespace="{{namespace}}",pod=~"{{stablePodRegex}}"}[1m]))',
        "maxRatio": 1.2,
        "floor": 0.01,
    },
    "baseline-condition": {"thresholdRange": None, "baseline": "{{args.quantile}}", "successCondition": "result <= baseline * 2"},
    "everything": {
        "failureLimit": 1,
        "inconclusiveLimit": 2,
        "consecutiveErrorLimit": 3,
        "noData": "fail",
        "dryRun": True,
        "interval": "1m30s",
        "count": 5,
        "initialDelay": "0s",
        "args": [{"name": "quantile"}, {"name": "service", "value": "checkout"}],
    },
}


@cluster
@pytest.mark.parametrize("case", sorted(GOOD))
def test_valid_templates_are_accepted_unpruned(installed, namespace, case):
    doc = template(**GOOD[case])
    got = create(installed, namespace, doc)
    assert got["spec"] == doc["spec"]  # nothing pruned, nothing defaulted


BAD = [
    ({"thresholdRange": None}, "needs thresholdRange, successCondition, failureCondition or baseline"),
    ({"baseline": "x"}, "thresholdRange cannot be combined"),
    ({"thresholdRange": None, "baseline": "x"}, "baseline needs maxRatio greater than 0"),
    ({"thresholdRange": None, "baseline": "x", "maxRatio": 0}, "baseline needs maxRatio greater than 0"),
    ({"maxRatio": 1.5}, "maxRatio and floor only apply to a baseline"),
    ({"failureLimit": 3, "count": 3}, "failureLimit must be less than count"),
    (
        {"thresholdRange": None, "successCondition": "result < baseline"},
        "successCondition uses baseline, but the template has no baseline query",
    ),
    ({"query": 'x{c="{{colour}}"}'}, "unknown {{variable}}"),
    ({"query": "   "}, "must not be blank"),
    ({"query": None}, "spec.query: Required value"),
    ({"noData": "maybe"}, 'spec.noData: Unsupported value: "maybe"'),
    ({"interval": "0s"}, "must be longer than 0"),
    ({"interval": "soon"}, "must be a duration like"),
    ({"count": 0}, "spec.count: Invalid value: 0"),
    ({"args": [{"name": "q"}, {"name": "q", "value": "1"}]}, "args must not repeat a name"),
    ({"args": [{"name": "bad-name"}]}, "spec.args[0].name"),
    ({"thresholdRange": {}}, "thresholdRange needs min, max or both"),
    ({"thresholdRange": {"min": 2, "max": 1}}, "thresholdRange.min must not be greater than thresholdRange.max"),
    ({"floor": -1}, "spec.floor: Invalid value"),
    ({"unknownField": 1}, 'unknown field "spec.unknownField"'),
]


@cluster
@pytest.mark.parametrize("spec, expected", BAD, ids=[e for _, e in BAD])
def test_bad_templates_are_rejected_with_clear_messages(installed, namespace, spec, expected):
    with pytest.raises(ApiException) as e:
        create(installed, namespace, template(name="bad", **spec))
    assert e.value.status in (400, 422)
    assert expected in message(e.value), message(e.value)


@cluster
def test_cluster_template_is_cluster_scoped_and_validated(installed):
    name = f"errors-{uuid.uuid4().hex[:6]}"
    doc = template(name=name)
    doc["kind"] = "ClusterAnalysisTemplate"
    got = installed.create_cluster_custom_object(G, V, "clusteranalysistemplates", doc, field_validation="Strict")
    try:
        assert "namespace" not in got["metadata"] and got["spec"] == doc["spec"]
        bad = copy.deepcopy(doc)
        bad["metadata"]["name"] = name + "-bad"
        bad["spec"]["noData"] = "maybe"
        with pytest.raises(ApiException) as e:
            installed.create_cluster_custom_object(G, V, "clusteranalysistemplates", bad)
        assert "spec.noData" in message(e.value)
    finally:
        installed.delete_cluster_custom_object(G, V, "clusteranalysistemplates", name)


@cluster
def test_printer_columns(installed, k8s, namespace):
    create(installed, namespace, template(name="rel", **GOOD["baseline"], noData="fail"))
    data = installed.get_namespaced_custom_object(G, V, namespace, "analysistemplates", "rel", _headers={"Accept": TABLE})
    assert data["kind"] == "Table"
    names = [c["name"] for c in data["columnDefinitions"]]
    assert names[:1] == ["Name"] and {"Min", "Max", "Max-Ratio", "No-Data", "Dry-Run", "Query", "Age"} <= set(names)
    row = dict(zip(names, data["rows"][0]["cells"], strict=False))
    assert row["Max-Ratio"] == 1.2 and row["No-Data"] == "fail" and "{{args.quantile}}" in row["Query"]


@cluster
def test_templates_and_secrets_are_read_for_parse_metrics(installed, k8s, namespace):
    create(installed, namespace, template(name="latency"))
    cname = f"up-{uuid.uuid4().hex[:6]}"
    cdoc = template(name=cname, query='sum(up{namespace="{{namespace}}"})', thresholdRange={"min": 1}, args=None)
    cdoc["kind"] = "ClusterAnalysisTemplate"
    installed.create_cluster_custom_object(G, V, "clusteranalysistemplates", cdoc)
    k.CoreV1Api(k8s).create_namespaced_secret(
        namespace, k.V1Secret(metadata=k.V1ObjectMeta(name="prom-token"), data={"token": base64.b64encode(b"s3cret").decode()})
    )
    try:
        spec = {
            "metrics": [
                {"name": "p99", "templateRef": {"name": "latency"}},
                {"name": "up", "templateRef": {"name": cname, "kind": "ClusterAnalysisTemplate"}},
                {"name": "gone", "templateRef": {"name": "no-such-template"}},
            ]
        }
        fetch = template_fetcher(k8s, namespace)
        p99, up = parse_metrics(spec, ["p99", "up"], fetch)
        assert p99.template == "AnalysisTemplate/latency" and p99.args == {"quantile": "0.99"} and p99.threshold_max == 0.5
        assert up.template == f"ClusterAnalysisTemplate/{cname}" and up.threshold_min == 1
        with pytest.raises(AnalysisConfigError, match="AnalysisTemplate 'no-such-template' not found"):
            parse_metrics(spec, ["gone"], fetch)

        read = secret_reader(k8s, namespace)
        assert read("prom-token", "token") == "s3cret"
        assert read("prom-token", "other") is None and read("missing", "token") is None
        with provider_from_spec({"address": "http://p", "bearerTokenSecretRef": {"name": "prom-token"}}, read) as p:
            assert p.headers["Authorization"] == "Bearer s3cret"
        with pytest.raises(AnalysisConfigError, match="Secret 'missing'"):
            provider_from_spec({"address": "http://p", "bearerTokenSecretRef": {"name": "missing"}}, read)
    finally:
        installed.delete_cluster_custom_object(G, V, "clusteranalysistemplates", cname)
