"""What a release ships, built by hack/build-dist.sh (`make dist`) and used as a user would.

* dist/install.yaml and dist/install-namespaced.yaml: `kubectl apply --server-side -f` on a
  control plane of this module's own (deleting them deletes Teal's CRDs), the operator's
  Deployment turns Ready (kwok), its ServiceAccount may do what it needs; `kubectl delete -f`.
* the packaged chart: `helm lint` and `helm install` from the .tgz.
* .github/workflows/release.yaml: actionlint (with shellcheck on its run: blocks when installed).
* the wheel: `pipx install` puts `kubectl-teal` on PATH and kubectl finds the plugin;
  `pip install .` from the repository does the same. Offline after the first run: the
  dependencies' wheels are downloaded once into the cache (${TEAL_CACHE}/wheelhouse-...).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli_helpers import ROOT, run
from test_helm_crds import TEAL_CRDS, Helm, own_cluster  # noqa: F401 (a fixture)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
APP_VERSION = yaml.safe_load((ROOT / "charts" / "teal" / "Chart.yaml").read_text())["appVersion"]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yaml"
PIPX = "pipx==1.18.4"


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """A fresh `hack/build-dist.sh` into a temporary folder: exactly what a release ships."""
    out = tmp_path_factory.mktemp("dist")
    proc = run(["bash", str(ROOT / "hack" / "build-dist.sh"), "--out", str(out)], timeout=600)
    print(proc.stdout, proc.stderr)
    return out


def docs_of(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# ---------------------------------------------------------------- what is in dist/


def test_dist_has_what_a_release_ships(dist):
    names = sorted(p.name for p in dist.iterdir())
    assert names == sorted(
        ["install.yaml", "install-namespaced.yaml", f"teal-{VERSION}.tgz", f"teal_operator-{VERSION}-py3-none-any.whl"]
    ), names
    for variant, args in (("install.yaml", "--all-namespaces"), ("install-namespaced.yaml", "--namespace=teal-system")):
        docs = docs_of(dist / variant)
        assert (docs[0]["kind"], docs[0]["metadata"]["name"]) == ("Namespace", "teal-system")
        crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
        assert crds == set(TEAL_CRDS), crds
        for d in docs:
            if d["kind"] in ("Deployment", "ServiceAccount", "Service", "Role", "RoleBinding"):
                assert d["metadata"]["namespace"] == "teal-system", d["metadata"]
        (dep,) = [d for d in docs if d["kind"] == "Deployment"]
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert c["image"] == f"ghcr.io/teal-dev/teal:{APP_VERSION}" and args in c["args"], c
        aggregated = [d for d in docs if d["kind"] == "ClusterRole" and "aggregate-to-edit" in d["metadata"]["name"]]
        assert len(aggregated) == 1
    namespaced = docs_of(dist / "install-namespaced.yaml")
    assert [d["metadata"]["name"] for d in namespaced if d["kind"] == "Role"] == ["teal"]


def test_the_chart_readme_renders_other_namespaces(helm):
    """The chart README's `helm template` line for a namespaced install.yaml of one's own, run as written."""
    readme = (ROOT / "charts" / "teal" / "README.md").read_text()
    (line,) = re.findall(r"`(helm template teal charts/teal [^`]+)`", readme)
    argv = shlex.split(line)
    proc = subprocess.run([helm, *argv[1:]], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "Role") == ["payments", "shop"]
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"} == set(TEAL_CRDS)


@pytest.mark.cluster
@pytest.mark.parametrize("variant", ["install.yaml", "install-namespaced.yaml"])
def test_install_yaml_applies_and_deletes(dist, helm, kubectl, own_cluster, variant):
    h = Helm(helm, kubectl, own_cluster)
    h.no_teal_crds()
    path = str(dist / variant)
    out = h.k("apply", "--server-side", "-f", path).stdout
    try:
        assert "deployment.apps/teal serverside-applied" in out, out
        for name in TEAL_CRDS:
            h.k("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
        h.k("-n", "teal-system", "rollout", "status", "deployment/teal", "--timeout=120s")
        sa = "system:serviceaccount:teal-system:teal"
        assert (
            h.k(
                "auth", "can-i", "patch", "rollouts.teal.dev", "--subresource=status", "-n", "teal-system", "--as", sa
            ).stdout.strip()
            == "yes"
        )
        elsewhere = h.k("auth", "can-i", "list", "rollouts.teal.dev", "-n", "default", "--as", sa, check=False)
        assert elsewhere.stdout.strip() == ("no" if "namespaced" in variant else "yes")
    finally:
        h.k("delete", "-f", path, "--wait", "--timeout=120s", "--ignore-not-found")
    assert h.k("get", "namespace", "teal-system", check=False).returncode != 0
    assert not any(h.crd(name) for name in TEAL_CRDS)


@pytest.mark.cluster
def test_packaged_chart_lints_and_installs(dist, helm, kubectl, own_cluster):
    tgz = str(dist / f"teal-{VERSION}.tgz")
    assert "0 chart(s) failed" in run([helm, "lint", "--strict", tgz]).stdout
    h = Helm(helm, kubectl, own_cluster)
    h.no_teal_crds()
    out = h("install", "teal", tgz, "--namespace", "teal-pkg", "--create-namespace", "--wait", "--timeout", "120s").stdout
    try:
        assert "STATUS: deployed" in out
        listed = h("list", "--namespace", "teal-pkg", "-o", "yaml").stdout
        (release,) = yaml.safe_load(listed)
        assert release["chart"] == f"teal-{VERSION}" and release["app_version"] == APP_VERSION
        assert h.owner("rollouts.teal.dev") == "teal"  # installed by the packaged chart
    finally:
        h("uninstall", "teal", "--namespace", "teal-pkg", "--wait")


# ---------------------------------------------------------------- the release workflow


def test_release_workflow_passes_actionlint():
    actionlint = shutil.which("actionlint")
    assert actionlint, "actionlint is not on PATH (hack/build-binaries.sh installs it; run through hack/test.sh)"
    proc = run([actionlint, "-color=false", str(WORKFLOW)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if not shutil.which("shellcheck"):
        print("shellcheck is not installed: actionlint checked the workflow without it")


def test_release_workflow_uses_the_repository_pins():
    text = WORKFLOW.read_text()
    flow = yaml.safe_load(text)
    versions = dict(
        line.split("=", 1)
        for line in (ROOT / "hack" / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    # the pins come from versions.env, loaded in every job that uses one
    for pin in ("HELM_VERSION", "CRANE_VERSION"):
        assert pin in versions and pin in text, pin
    for name, job in flow["jobs"].items():
        uses_pin = "_VERSION" in yaml.safe_dump(job["steps"])
        loads = any("hack/versions.env" in str(step.get("run", "")) for step in job["steps"])
        assert loads or not uses_pin, name
    assert flow[True]["push"]["tags"]  # `on:` is YAML 1.1's true
    scripts = {
        w
        for job in flow["jobs"].values()
        for step in job["steps"]
        for w in str(step.get("run", "")).split()
        if w.startswith("hack/") and w.endswith(".sh")
    }
    assert scripts == {"hack/build-dist.sh", "hack/build-image.sh"}, scripts
    for script in scripts:
        assert (ROOT / script).exists(), f"the release workflow runs {script}, which does not exist"
    for job in flow["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:  # every action pinned by commit
                ref = step["uses"].split("@", 1)[1]
                assert len(ref) == 40 and all(ch in "0123456789abcdef" for ch in ref), step["uses"]


# ---------------------------------------------------------------- the plugin, installed


def wheelhouse() -> Path:
    """Wheels for an offline install of the plugin (its dependencies, pip, pipx, the build backend),
    downloaded once per dependency list into the cache."""
    reqs = sorted(PYPROJECT["project"]["dependencies"] + PYPROJECT["build-system"]["requires"] + ["pip", PIPX])
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("TEAL_CACHE") or Path.home() / ".cache" / "teal")
    path = cache / f"wheelhouse-py{sys.version_info[0]}{sys.version_info[1]}-{key}"
    if not (path / ".complete").exists():
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(tmp), *reqs], timeout=600)
        (tmp / ".complete").touch()
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    return path


def offline_env(tmp_path: Path, bin_dir: Path, kubectl: str) -> dict[str, str]:
    """PATH with the new install and kubectl only (not the test virtualenv, which has kubectl-teal too)."""
    path = os.pathsep.join([str(bin_dir), str(Path(kubectl).parent), "/usr/local/bin", "/usr/bin", "/bin"])
    return {
        "PATH": path,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheelhouse()),
        "HOME": str(tmp_path),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_COMPILE": "1",
        "VIRTUAL_ENV": "",
        "PYTHONPATH": "",
    }


def check_plugin(kubectl: str, env: dict[str, str], bin_dir: Path) -> None:
    """kubectl finds kubectl-teal in bin_dir, and the plugin runs (lint uses the CRDs shipped in the package)."""
    plugins = run([kubectl, "plugin", "list"], env=env).stdout
    assert str(bin_dir / "kubectl-teal") in plugins, plugins
    out = run([kubectl, "teal", "--help"], env=env).stdout
    assert out.startswith("Usage: kubectl teal") and "promote" in out, out
    assert (bin_dir / "kubectl_complete-teal").exists(), "kubectl's plugin completion helper is installed beside it"
    run([kubectl, "teal", "lint", "-f", str(ROOT / "examples" / "minimal.yaml")], env=env)  # exit 0: valid


def _base_python() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


def test_pipx_installs_the_plugin_from_the_wheel(dist, kubectl, tmp_path):
    tools = tmp_path / "tools"  # pipx itself, in a virtualenv of its own
    run([_base_python(), "-m", "venv", str(tools)])
    env = offline_env(tmp_path, tmp_path / "bin", kubectl)
    run([str(tools / "bin" / "pip"), "install", "--quiet", PIPX], env=env, timeout=300)
    env.update(PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"), PIPX_MAN_DIR=str(tmp_path / "man"))
    wheel = dist / f"teal_operator-{VERSION}-py3-none-any.whl"
    # the documented line: pipx install ./dist/teal_operator-<version>-py3-none-any.whl
    run([str(tools / "bin" / "pipx"), "install", str(wheel)], env=env, timeout=600)
    check_plugin(kubectl, env, tmp_path / "bin")


def test_pip_installs_the_plugin_from_the_repository(kubectl, tmp_path):
    venv = tmp_path / "venv"
    # the documented lines: python3 -m venv .venv && .venv/bin/pip install .   (in a checkout)
    run([_base_python(), "-m", "venv", str(venv)])
    env = offline_env(tmp_path, venv / "bin", kubectl)
    src = tmp_path / "src"  # a clean copy, so the build leaves nothing in the work tree
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "dist", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", ".venv", ".teal"
        ),
    )
    run([str(venv / "bin" / "pip"), "install", "--quiet", str(src)], env=env, timeout=600)
    check_plugin(kubectl, env, venv / "bin")
