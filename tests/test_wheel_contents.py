"""The operator's wheel -- what `make dist` ships (hack/build-dist.sh), what `pipx install` puts on a
user's machine and what the image installs -- carries what the operator and the kubectl-teal plugin
run, and nothing else: no development environment (teal_devenv: the local control plane,
Prometheus, fake apps, the sandbox, all in devenv/ and installed by the dev virtualenv only), no
test code, and still the CRDs that `kubectl teal lint` reads."""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
DIST_INFO = f"teal_operator-{VERSION}.dist-info"
# what must never be in it: the dev environment (today's and its old place inside teal), tests
DEV_OR_TEST = re.compile(r"(^|/)(teal_devenv|devenv|sandbox\.py|tests?|conftest\.py|test_[^/]*\.py)(/|$)")
DEV_MODULES = ("teal_devenv", "teal_devenv", "teal_devenv.sandbox", "pytest", "hypothesis", "kmock")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-dist.sh"), "--out", str(out), "wheel"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("teal_operator-*.whl")
    with zipfile.ZipFile(path) as whl:
        yield whl


def test_the_wheel_holds_the_teal_package_and_nothing_of_the_dev_environment_or_the_tests(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    assert {n.split("/", 1)[0] for n in names} == {"teal", DIST_INFO}, sorted({n.split("/", 1)[0] for n in names})
    assert [n for n in names if DEV_OR_TEST.search(n)] == []
    modules = [n for n in names if n.endswith(".py")]
    assert "teal/main.py" in modules and "teal/cli.py" in modules and "teal/core.py" in modules


def test_no_module_of_the_wheel_imports_the_dev_environment_or_test_tools(wheel: zipfile.ZipFile) -> None:
    offending = []
    for name in (n for n in wheel.namelist() if n.endswith(".py")):
        for node in ast.walk(ast.parse(wheel.read(name), name)):
            if isinstance(node, ast.Import):
                imported = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            offending += [f"{name}: {m}" for m in imported if m.startswith(DEV_MODULES)]
    assert offending == []


def test_the_wheel_installs_the_operator_and_the_plugin_only(wheel: zipfile.ZipFile) -> None:
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read(f"{DIST_INFO}/entry_points.txt").decode())
    assert dict(entry_points["console_scripts"]) == {
        "teal": "teal.main:main",
        "kubectl-teal": "teal.cli:main",
        "kubectl_complete-teal": "teal.cli:complete_main",
    }


def test_the_wheel_still_ships_the_crds(wheel: zipfile.ZipFile) -> None:
    shipped = {n.rsplit("/", 1)[1]: wheel.read(n) for n in wheel.namelist() if re.fullmatch(r"teal/crds/[^/]+\.yaml", n)}
    source = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    assert sorted(shipped) == sorted(source)
    assert shipped == source  # the same bytes as crds/ (hack/sync-crds.sh copies them into the package)
    kinds = {(d["kind"], d["metadata"]["name"]) for text in shipped.values() for d in yaml.safe_load_all(text) if d}
    assert ("CustomResourceDefinition", "rollouts.teal.dev") in kinds
    assert ("CustomResourceDefinition", "analysistemplates.teal.dev") in kinds


def test_the_wheel_ships_the_dashboards_bundle(wheel: zipfile.ZipFile) -> None:
    """`kubectl teal dashboard` serves teal/dashboard/ from the installed package (the image installs this wheel too)."""
    shipped = {n.rsplit("/", 1)[1]: wheel.read(n) for n in wheel.namelist() if n.startswith("teal/dashboard/")}
    source = {p.name: p.read_bytes() for p in (ROOT / "operator" / "teal" / "dashboard").iterdir() if p.is_file()}
    assert sorted(shipped) == ["app.css", "app.js", "index.html"] and shipped == source
    assert "teal/cli_dashboard.py" in wheel.namelist()
