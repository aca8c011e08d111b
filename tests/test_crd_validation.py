"""The Rollout CRD in a real kube-apiserver: accepted, Established, and validating as documented.

* every examples/*.yaml is created (strict field validation, like kubectl) and reads back
  exactly as written plus the schema's defaults -- nothing pruned;
* every examples/invalid/*.yaml is rejected with its `# expect:` text;
* defaults, the scale subresource, printer columns, and statuses produced by teal.core
  (through the in-memory simulator) surviving the status subresource unpruned.
"""

from __future__ import annotations

import copy
import json
import subprocess

import kubernetes.client as k
import pytest
from kubernetes.client.rest import ApiException

import sim
from crd_helpers import (
    ROLLOUT_CRD,
    apply_defaults,
    docs,
    example_files,
    expectation,
    invalid_files,
    node,
    rollout_crd,
    rollouts,
)
from teal import api, core
from teal_devenv.binaries import find_binaries
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_operator")]  # statuses written by hand

G, V, P = api.GROUP, api.VERSION, api.PLURAL
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


@pytest.fixture(scope="module")
def crd(k8s) -> dict:
    """crds/rollouts.yaml, server-side applied and Established (its CEL rules passed the cost estimator)."""
    ext = k.ApiextensionsV1Api(k8s)
    body = rollout_crd()
    ext.patch_custom_resource_definition(
        body["metadata"]["name"],
        body,
        field_manager="teal-crd-tests",
        force=True,
        _content_type="application/apply-patch+yaml",
    )

    def established():
        got = ext.read_custom_resource_definition(body["metadata"]["name"])
        conds = {c.type: c.status for c in got.status.conditions or []}
        return conds.get("Established") == "True" and conds.get("NamesAccepted") == "True" and got

    got = wait_for(established, timeout=30, what="the Rollout CRD to be Established")
    # Established can come a moment before the endpoint serves; wait until a list works
    wait_for(
        lambda: k.CustomObjectsApi(k8s).list_cluster_custom_object(G, V, P) is not None, timeout=30, what="rollouts to be served"
    )
    return k8s.sanitize_for_serialization(got)


@pytest.fixture
def objects(k8s, crd):
    return k.CustomObjectsApi(k8s)


def create(k8s, namespace: str, doc: dict) -> dict:
    """Create one manifest with strict field validation (what kubectl does by default)."""
    if doc["kind"] == "Service":
        return k8s.sanitize_for_serialization(
            k.CoreV1Api(k8s).create_namespaced_service(namespace, doc, field_validation="Strict")
        )
    assert doc["apiVersion"] == api.API_VERSION and doc["kind"] == api.KIND, doc["kind"]
    return k.CustomObjectsApi(k8s).create_namespaced_custom_object(G, V, namespace, P, doc, field_validation="Strict")


def error_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(exc.body)


def make_rollout(k8s, namespace: str, example: str = "minimal.yaml") -> dict:
    (doc,) = rollouts(next(p for p in example_files() if p.name == example))
    return create(k8s, namespace, doc)


# ---------------------------------------------------------------- the CRD


def test_crd_is_established_with_its_names(crd):
    assert crd["status"]["acceptedNames"]["shortNames"] == ["tro"]
    assert crd["status"]["acceptedNames"]["categories"] == ["all", "teal"]
    assert [v["name"] for v in crd["spec"]["versions"]] == [api.VERSION]


def test_kubectl_reads_the_crd_file_as_python_does(cluster):
    """The file uses YAML anchors and merge keys: Go's YAML (kubectl, Helm) must resolve them like PyYAML."""
    kubectl = find_binaries().kubectl
    out = subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            cluster.kubeconfig,
            "create",
            "--dry-run=client",
            "--validate=false",
            "-o",
            "json",
            "-f",
            str(ROLLOUT_CRD),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout)["spec"] == rollout_crd()["spec"]


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_example_is_accepted_and_not_pruned(k8s, objects, namespace, path):
    for doc in docs(path):
        got = create(k8s, namespace, doc)
        if doc["kind"] == api.KIND:
            # what was written comes back, plus exactly the defaults the schema declares
            assert got["spec"] == apply_defaults(node("spec"), doc["spec"])
            api.parse_spec(got["spec"])


@pytest.mark.parametrize("path", invalid_files(), ids=lambda p: p.stem)
def test_invalid_example_is_rejected(k8s, objects, namespace, path):
    expect = expectation(path)
    (doc,) = docs(path)
    with pytest.raises(ApiException) as err:
        create(k8s, namespace, doc)
    assert err.value.status in (400, 422), err.value
    message = error_message(err.value)
    assert expect in message, f"{path.name}: expected {expect!r} in the apiserver's answer:\n{message}"
    assert not objects.list_namespaced_custom_object(G, V, namespace, P)["items"]


# ---------------------------------------------------------------- defaults


def test_defaults_are_applied(k8s, objects, namespace):
    got = create(
        k8s,
        namespace,
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": "defaults"},
            "spec": {
                "selector": {"matchLabels": {"app": "d"}},
                "workloadRef": {"name": "d"},
                "strategy": {"blueGreen": {"activeServices": ["d"]}},
                "analysis": {
                    "prometheus": {
                        "address": "http://p:9090",
                        "bearerTokenSecretRef": {"name": "t"},
                        "caSecretRef": {"name": "ca"},
                    },
                    "metrics": [{"name": "m", "templateRef": {"name": "m"}}],
                },
            },
        },
    )
    spec = got["spec"]
    assert spec["replicas"] == 1 and spec["paused"] is False and spec["revisionHistoryLimit"] == 10
    assert spec["workloadRef"] == {"name": "d", "kind": "Deployment", "apiVersion": "apps/v1"}
    assert spec["strategy"]["blueGreen"] == {
        "activeServices": ["d"],
        "autoPromote": True,
        "scaleDownDelaySeconds": 30,
        "abortScaleDownDelaySeconds": 30,
        "progressDeadlineSeconds": 600,
    }
    prom = spec["analysis"]["prometheus"]
    assert prom["insecureSkipVerify"] is False
    assert prom["bearerTokenSecretRef"] == {"name": "t", "key": "token"}
    assert prom["caSecretRef"] == {"name": "ca", "key": "ca.crt"}
    # a templateRef metric gets no defaults that would hide its template's settings
    assert spec["analysis"]["metrics"] == [{"name": "m", "templateRef": {"name": "m", "kind": "AnalysisTemplate"}}]
    parsed = api.parse_spec(spec)
    assert parsed.workload_ref == api.WorkloadRef(name="d") and parsed.blue_green.auto_promote


# ---------------------------------------------------------------- scale subresource


def test_scale_subresource(k8s, objects, namespace):
    name = make_rollout(k8s, namespace, "full.yaml")["metadata"]["name"]  # replicas 4, previewReplicas 2
    objects.patch_namespaced_custom_object_scale(G, V, namespace, P, name, {"spec": {"replicas": 6}})
    assert objects.get_namespaced_custom_object(G, V, namespace, P, name)["spec"]["replicas"] == 6

    objects.patch_namespaced_custom_object_status(
        G, V, namespace, P, name, {"status": {"replicas": 6, "selector": "app=checkout"}}
    )
    scale = objects.get_namespaced_custom_object_scale(G, V, namespace, P, name)
    assert scale["spec"]["replicas"] == 6
    assert scale["status"] == {"replicas": 6, "selector": "app=checkout"}


def test_scaling_below_preview_replicas_is_allowed_but_setting_it_is_not(k8s, objects, namespace):
    """An HPA may scale under previewReplicas (Teal caps the preview); a user may not write it that way."""
    name = make_rollout(k8s, namespace, "full.yaml")["metadata"]["name"]  # replicas 4, previewReplicas 2
    objects.patch_namespaced_custom_object_scale(G, V, namespace, P, name, {"spec": {"replicas": 1}})
    # other edits still work while replicas < previewReplicas
    objects.patch_namespaced_custom_object(G, V, namespace, P, name, {"spec": {"revisionHistoryLimit": 3}})
    got = objects.get_namespaced_custom_object(G, V, namespace, P, name)["spec"]
    assert (got["replicas"], got["strategy"]["blueGreen"]["previewReplicas"], got["revisionHistoryLimit"]) == (1, 2, 3)
    with pytest.raises(ApiException) as err:
        objects.patch_namespaced_custom_object(
            G, V, namespace, P, name, {"spec": {"strategy": {"blueGreen": {"previewReplicas": 3}}}}
        )
    assert "previewReplicas must not be larger than spec.replicas" in error_message(err.value)


# ---------------------------------------------------------------- printer columns


def test_printer_columns(k8s, objects, namespace):
    name = make_rollout(k8s, namespace)["metadata"]["name"]
    objects.patch_namespaced_custom_object_status(
        G,
        V,
        namespace,
        P,
        name,
        {
            "status": {
                "phase": "Paused",
                "activeColor": "blue",
                "previewColor": "green",
                "currentRevision": "7",
                "currentStep": 2,
                "message": "step 2/4: paused until promoted",
            }
        },
    )
    table = objects.get_namespaced_custom_object(G, V, namespace, P, name, _headers={"Accept": TABLE})
    assert table["kind"] == "Table"
    columns = [(c["name"], c.get("priority", 0)) for c in table["columnDefinitions"]]
    assert columns == [
        ("Name", 0),
        ("Phase", 0),
        ("Active", 0),
        ("Preview", 0),
        ("Revision", 0),
        ("Step", 1),
        ("Held", 1),
        ("Message", 1),
        ("Age", 0),
    ]
    (row,) = table["rows"]
    assert row["cells"][:8] == [name, "Paused", "blue", "green", "7", 2, None, "step 2/4: paused until promoted"]


# ---------------------------------------------------------------- statuses teal.core writes


def simulated_statuses() -> list[dict]:
    """Every distinct status of teal.core through a weighted release with analysis, a promote and an abort."""
    spec = sim.rollout_spec(
        trafficRouting={"gatewayAPI": {"httpRoute": "app", "port": 80}},
        steps=[{"setWeight": 20}, {"pause": {"duration": "10s"}}, {"setWeight": 50}, {"pause": {}}],
    )
    m = {"name": "errors", "query": "sum(up)", "thresholdRange": {"max": 1}}
    spec["analysis"] = {"prePromotion": ["errors"], "steps": ["errors"], "postPromotion": ["errors"], "metrics": [m]}
    w = sim.World(spec)
    seen: dict[str, dict] = {}
    verdict = "Successful"

    def tick(_w=None) -> bool:
        key = (w.status.get("release") or {}).get("analysisKey")
        w.analysis = core.AnalysisRun(key=key, verdict=verdict, message="errors 0 <= 1") if key else None
        st = w.status
        step = st.get("currentStep")
        if st.get("reason") == "PausedAtStep" and spec["strategy"]["blueGreen"]["steps"][step - 1] == {"pause": {}}:
            st["promote"] = {"revision": st["currentRevision"], "step": step, "full": False}  # kubectl teal promote
        seen[json.dumps(w.status, sort_keys=True)] = copy.deepcopy(w.status)
        return False

    def run_until(phase: str) -> None:
        w.until(lambda _: tick() or (w.status.get("phase") == phase and not w.status.get("release")), n=300, seconds=5)
        tick()

    run_until("Healthy")  # the first release
    w.set_image("v2")
    run_until("Healthy")  # weighted steps, analysis at each, a pause promoted by a user
    w.until(lambda _: tick() or (w.status.get("scaleDown") or {}).get("announced"), n=100, seconds=5)  # blue scales down
    w.set_image("v3")
    verdict = "Failed"
    w.until(lambda _: tick() or w.status.get("phase") == "Aborted", n=300, seconds=5)
    tick()
    return list(seen.values())


def _keys(value, prefix="") -> set[str]:
    out = set()
    if isinstance(value, dict):
        for key, v in value.items():
            out.add(prefix + key)
            out |= _keys(v, prefix + key + ".")
    return out


def test_statuses_from_core_are_stored_unpruned(k8s, objects, namespace):
    statuses = simulated_statuses()
    covered = set().union(*(_keys(s) for s in statuses))
    assert {
        "release.analysisKey",
        "release.passed",
        "release.weight",
        "release.stepStartedAt",
        "promote.step",
        "abort.reason",
        "scaleDown.announced",
        "stats.lastPromotedAt",
        "weights.green",
        "currentStep",
        "release.abortedAt",
    } <= covered, "the simulation no longer reaches every part of the status"
    name = make_rollout(k8s, namespace)["metadata"]["name"]
    for status in statuses:
        obj = objects.get_namespaced_custom_object(G, V, namespace, P, name)
        obj["status"] = status
        objects.replace_namespaced_custom_object_status(G, V, namespace, P, name, obj)
        got = objects.get_namespaced_custom_object(G, V, namespace, P, name)["status"]
        assert got == json.loads(json.dumps(status)), "the apiserver changed (pruned) a status teal.core wrote"
