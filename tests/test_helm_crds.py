"""The chart installs and upgrades Teal's CRDs (`crds.install`, `crds.keep`), as argo-helm does.

Offline: the rendered CRDs are the repository's crds/ plus the chart's annotations.
On a control plane of this module's own (`own_cluster`): these tests create, replace and
delete CRDs, which in the suite's shared cluster would delete every other test's Rollouts.
* an upgrade to a chart whose Rollout CRD has a new field and printer column, while
  Rollouts exist: the CRD changes, the Rollouts keep their spec and status, the new field works;
* a CRD that exists already and is not this release's (another release, kubectl apply) is
  left as it is, so any number of releases install side by side;
* `crds.keep` keeps the CRDs (and the Rollouts) on `helm uninstall`; without it they go.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli_helpers import CHART, CRDS, ROOT, Rollouts, healthy_status, rollout_manifest, run
from teal_devenv.wait import wait_for

TEAL_CRDS = [
    "rollouts.teal.dev",
    "analysistemplates.teal.dev",
    "clusteranalysistemplates.teal.dev",
    "releasepolicies.teal.dev",
    "clusterreleasepolicies.teal.dev",
]
KEEP = "helm.sh/resource-policy"


def render(helm: str, chart: Path, *sets: str) -> list[dict[str, Any]]:
    args = [helm, "template", "teal", str(chart), "--namespace", "teal-system", "--include-crds"]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(run(args).stdout) if d]


def crds_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}


# ---------------------------------------------------------------- offline


def test_rendered_crds_are_the_repository_crds(helm, chart_dir):
    source = {
        d["metadata"]["name"]: d
        for f in sorted(CRDS.glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d and d["kind"] == "CustomResourceDefinition"
    }
    rendered = crds_of(render(helm, chart_dir))
    assert set(source) == set(TEAL_CRDS) and set(rendered) == set(TEAL_CRDS)  # no kopf peering CRDs any more
    for name, crd in source.items():
        got = rendered[name]
        assert got["metadata"].pop("annotations") == {KEEP: "keep"}  # crds.keep defaults to true
        assert got == crd, f"{name}: the chart renders something else than crds/ (run hack/sync-crds.sh)"

    rendered = crds_of(render(helm, chart_dir, "crds.keep=false", "crds.annotations.example\\.com/team=platform"))
    for name in TEAL_CRDS:
        assert rendered[name]["metadata"]["annotations"] == {"example.com/team": "platform"}

    assert not crds_of(render(helm, chart_dir, "crds.install=false"))


# ---------------------------------------------------------------- on a cluster of our own


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory) -> Iterator[Any]:
    """A second local control plane, only for this module (started in ~10-20 s)."""
    from teal_devenv.cluster import LocalCluster

    c = LocalCluster(tmp_path_factory.mktemp("own-cluster"), nodes=1)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        assert not c.leftover_processes()


class Helm:
    """helm and kubectl against one cluster."""

    def __init__(self, helm: str, kubectl: str, cluster: Any):
        self.helm, self.kubectl, self.cluster = helm, kubectl, cluster
        self.env = {"KUBECONFIG": cluster.kubeconfig}

    def __call__(self, *args: str, check: bool = True) -> Any:
        return run([self.helm, *args], env=self.env, timeout=180, check=check)

    def k(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return run([self.kubectl, *args], env=self.env, input=input, timeout=180, check=check)

    def install(self, release: str, chart: Path, namespace: str, *sets: str) -> str:
        args = ["upgrade", "--install", release, str(chart), "--namespace", namespace, "--create-namespace"]
        for s in sets:
            args += ["--set", s]
        return self(*args).stdout

    def manifest_kinds(self, release: str, namespace: str) -> list[str]:
        out = self("get", "manifest", release, "--namespace", namespace).stdout
        return [d["kind"] for d in yaml.safe_load_all(out) if d]

    def crd(self, name: str) -> dict[str, Any] | None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api = self.cluster.api_client()
        try:
            return api.sanitize_for_serialization(client.ApiextensionsV1Api(api).read_custom_resource_definition(name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        finally:
            api.close()

    def owner(self, name: str) -> str | None:
        ann = ((self.crd(name) or {}).get("metadata") or {}).get("annotations") or {}
        return ann.get("meta.helm.sh/release-name")

    def no_teal_crds(self) -> None:
        """Start from a cluster without Teal's CRDs (deleting them deletes their objects: our cluster only)."""
        self.k("delete", "crd", *TEAL_CRDS, "--ignore-not-found", "--wait", "--timeout=120s")


@pytest.fixture
def h(helm, kubectl, own_cluster) -> Helm:
    h = Helm(helm, kubectl, own_cluster)
    h.no_teal_crds()
    return h


def old_chart(chart_dir: Path, tmp_path: Path) -> Path:
    """The chart as an earlier version: its Rollout CRD lacks status.stats.superseded and the Step column."""
    old = tmp_path / "teal"
    shutil.copytree(chart_dir, old)
    meta = yaml.safe_load((old / "Chart.yaml").read_text())
    (old / "Chart.yaml").write_text(yaml.safe_dump({**meta, "version": "0.0.1"}, sort_keys=False))
    path = old / "files" / "crds" / "rollouts.yaml"
    (crd,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (version,) = crd["spec"]["versions"]
    del version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["stats"]["properties"]["superseded"]
    version["additionalPrinterColumns"] = [c for c in version["additionalPrinterColumns"] if c["name"] != "Step"]
    path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return old


def _namespace(cluster: Any, name: str) -> str:
    from kubernetes import client

    api = cluster.api_client()
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    finally:
        api.close()
    return name


def _columns(crd: dict[str, Any]) -> list[str]:
    return [c["name"] for c in crd["spec"]["versions"][0].get("additionalPrinterColumns") or []]


def _stats_fields(crd: dict[str, Any]) -> set[str]:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return set(schema["properties"]["status"]["properties"]["stats"]["properties"])


@pytest.mark.cluster
def test_upgrade_changes_the_crd_and_loses_no_rollout(h, chart_dir, tmp_path):
    h.install("teal", old_chart(chart_dir, tmp_path), "teal-system")
    crd = h.crd("rollouts.teal.dev")
    assert crd["metadata"]["annotations"][KEEP] == "keep" and h.owner("rollouts.teal.dev") == "teal"
    assert "Step" not in _columns(crd) and "superseded" not in _stats_fields(crd)

    api = h.cluster.api_client()
    ros = Rollouts(api, _namespace(h.cluster, "shop-upgrade"))
    before = {}
    for name in ("checkout", "cart"):
        ros.create(rollout_manifest(name, previewService=f"{name}-preview"))
        status = {**healthy_status("green", "3"), "stats": {"releases": 3, "promoted": 2, "superseded": 1}}
        ro = ros.set_status(name, status)
        assert "superseded" not in ro["status"]["stats"]  # the old CRD really lacks it: pruned
        before[name] = ro

    out = h("upgrade", "teal", str(chart_dir), "--namespace", "teal-system").stdout
    assert "STATUS: deployed" in out
    crd = h.crd("rollouts.teal.dev")
    assert "Step" in _columns(crd) and "superseded" in _stats_fields(crd)
    assert crd["metadata"]["annotations"][KEEP] == "keep"
    for name, old in before.items():
        ro = ros.get(name)
        assert ro["spec"] == old["spec"] and ro["status"] == old["status"], name
        assert ro["metadata"]["generation"] == old["metadata"]["generation"]

    def superseded_is_kept() -> bool:  # the apiserver takes the new schema up within a moment
        ro = ros.set_status(
            "checkout", {**before["checkout"]["status"], "stats": {"releases": 3, "promoted": 2, "superseded": 1}}
        )
        return ro["status"]["stats"].get("superseded") == 1

    wait_for(superseded_is_kept, timeout=30, what="status.stats.superseded to be kept by the upgraded CRD")
    table = h.k("get", "tro", "-n", "shop-upgrade", "-o", "wide").stdout
    assert table.split("\n")[0].split()[:6] == ["NAME", "PHASE", "ACTIVE", "PREVIEW", "REVISION", "STEP"], table
    api.close()
    h("uninstall", "teal", "--namespace", "teal-system", "--wait")


@pytest.mark.cluster
def test_crds_of_someone_else_are_left_alone(h, chart_dir, tmp_path):
    # the first release makes the CRDs and owns them; a second one installs beside it
    h.install("first", chart_dir, "team-a", "rbac.scope=namespaced", "watchNamespaces={team-a}")
    assert h.owner("rollouts.teal.dev") == "first"
    assert "CustomResourceDefinition" in h.manifest_kinds("first", "team-a")
    h.install("second", chart_dir, "team-b", "rbac.scope=namespaced", "watchNamespaces={team-b}")
    assert "CustomResourceDefinition" not in h.manifest_kinds("second", "team-b")
    h.install("second", chart_dir, "team-b", "rbac.scope=namespaced", "watchNamespaces={team-b}")  # an upgrade too
    assert h.owner("rollouts.teal.dev") == "first"
    h.install("first", chart_dir, "team-a", "rbac.scope=namespaced", "watchNamespaces={team-a}")
    assert "CustomResourceDefinition" in h.manifest_kinds("first", "team-a")  # the owner still upgrades them
    for release, ns in (("first", "team-a"), ("second", "team-b")):
        h("uninstall", release, "--namespace", ns, "--wait")

    # CRDs applied with kubectl (install.yaml, the suite's fixtures): a release does not take them
    h.no_teal_crds()
    h.k("apply", "--server-side", "--field-manager", "teal-tests", "-f", str(CRDS))
    h.install("third", chart_dir, "team-c")
    assert "CustomResourceDefinition" not in h.manifest_kinds("third", "team-c")
    assert h.owner("rollouts.teal.dev") is None
    h("uninstall", "third", "--namespace", "team-c", "--wait")
    assert foreign_crds(h, chart_dir, tmp_path) == ", ".join(sorted(TEAL_CRDS))  # for NOTES.txt to say so


def foreign_crds(h: Helm, chart_dir: Path, tmp_path: Path) -> str:
    """What the chart's `teal.crd.foreign` helper says in a real install (lookup needs the cluster)."""
    copy = tmp_path / "probe" / "teal"
    shutil.copytree(chart_dir, copy)
    (copy / "templates" / "zz-probe.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\ndata: {foreign: {{ include "teal.crd.foreign" . | quote }}}\n'
    )
    out = h("install", "probe", str(copy), "--namespace", "default", "--dry-run=server").stdout
    (probe,) = [
        d
        for d in yaml.safe_load_all(out.split("NOTES:")[0].split("MANIFEST:", 1)[1])
        if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "probe"
    ]
    return probe["data"]["foreign"]


@pytest.mark.cluster
def test_keep_on_uninstall_and_delete_without_keep(h, chart_dir):
    h.install("kept", chart_dir, "teal-keep")
    api = h.cluster.api_client()
    ros = Rollouts(api, _namespace(h.cluster, "shop-keep"))
    ros.create(rollout_manifest("checkout"))
    out = h("uninstall", "kept", "--namespace", "teal-keep", "--wait").stdout
    assert all(h.crd(name) for name in TEAL_CRDS), out
    assert ros.get("checkout")["spec"]["replicas"] == 2  # the Rollouts stay with them

    # the same release again adopts its kept CRDs; with crds.keep=false they go with it
    h.install("kept", chart_dir, "teal-keep", "crds.keep=false")
    manifest = yaml.safe_load_all(h("get", "manifest", "kept", "--namespace", "teal-keep").stdout)
    crds = [d for d in manifest if d and d["kind"] == "CustomResourceDefinition"]
    assert len(crds) == len(TEAL_CRDS) and not any(KEEP in (d["metadata"].get("annotations") or {}) for d in crds)
    h("uninstall", "kept", "--namespace", "teal-keep", "--wait")
    wait_for(lambda: not any(h.crd(name) for name in TEAL_CRDS), timeout=60, what="Teal's CRDs to be deleted")
    api.close()


@pytest.mark.cluster
def test_the_readme_adopts_crds_applied_with_kubectl(h, chart_dir):
    """The chart README's commands that make CRDs applied with kubectl the release's own, run as written."""
    h.k("apply", "--server-side", "--field-manager", "teal-tests", "-f", str(CRDS))
    h.install("teal", chart_dir, "teal-system")
    assert "CustomResourceDefinition" not in h.manifest_kinds("teal", "teal-system") and not h.owner("rollouts.teal.dev")
    readme = (CHART / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", readme, re.S) if "kubectl annotate crd" in b]
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=ROOT,
        check=True,
        timeout=180,
        env={
            **os.environ,
            **h.env,
            "PATH": os.pathsep.join([str(Path(h.kubectl).parent), str(Path(h.helm).parent), os.environ["PATH"]]),
        },
    )
    assert h.owner("rollouts.teal.dev") == "teal"
    assert h.manifest_kinds("teal", "teal-system").count("CustomResourceDefinition") == len(TEAL_CRDS)
    assert h.crd("rollouts.teal.dev")["metadata"]["annotations"][KEEP] == "keep"
    h("uninstall", "teal", "--namespace", "teal-system", "--wait")
    assert all(h.crd(name) for name in TEAL_CRDS)
