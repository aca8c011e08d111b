"""The code's own health: lint, types, function sizes, import graph, the Makefile's promises.

`make lint` and this module run the same hack/lint.sh (ruff check, ruff format --check, mypy strict on the
core, the API and the Kubernetes client, mypy's defaults on the rest of the package).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "operator" / "teal"
MAX_FUNCTION_LINES = 80
MAX_CORE_FUNCTION_LINES = 60


def _functions(path: Path) -> Iterator[tuple[str, int]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield f"{path.relative_to(REPO)}:{node.lineno} {node.name}", (node.end_lineno or node.lineno) - node.lineno + 1


def test_lint_and_types_pass() -> None:
    env = {**os.environ, "VIRTUAL_ENV": os.environ.get("VIRTUAL_ENV") or sys.prefix}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    res = subprocess.run(["bash", str(REPO / "hack" / "lint.sh")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"hack/lint.sh failed:\n{res.stdout[-6000:]}\n{res.stderr[-3000:]}"


def test_functions_fit_on_a_screen() -> None:
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        limit = MAX_CORE_FUNCTION_LINES if path.name == "core.py" else MAX_FUNCTION_LINES
        too_long += [f"{where}: {n} lines (limit {limit})" for where, n in _functions(path) if n > limit]
    assert not too_long, "functions too long:\n" + "\n".join(too_long)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The teal modules `path` imports, anywhere in the file (a function-local import closes a circle too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle() -> None:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph = {_module_name(p): _imports(p, modules) for p in paths}
    # a package's __init__ re-exporting its submodules, and the submodules importing their siblings, is not a circle
    for mod, deps in graph.items():
        graph[mod] = {d for d in deps if not (mod.startswith(d + ".") and d in modules)}
    assert graph["teal.controller"], "the import graph found nothing: the parser is broken"
    assert not _cycles(graph), f"import circles: {_cycles(graph)}"


def test_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


def test_makefile_targets_exist() -> None:
    targets = _make_targets()
    text = (REPO / "Makefile").read_text()
    phony = set(" ".join(re.findall(r"^\.PHONY:(.*)$", text, re.M)).split())
    assert phony <= targets, f".PHONY names targets without a rule: {sorted(phony - targets)}"
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "charts" / "teal" / "README.md"]
    named = {(d.name, t) for d in docs if d.exists() for t in re.findall(r"\bmake ([a-z][\w-]*)", d.read_text())}
    missing = sorted(f"{doc}: make {t}" for doc, t in named if t not in targets)
    assert not missing, f"documents name make targets that do not exist: {missing}"


@pytest.mark.parametrize("target", ["test", "sandbox", "lint"])
def test_core_targets_present(target: str) -> None:
    assert target in _make_targets()


def test_one_kubernetes_client() -> None:
    """Only teal.client talks to the kubernetes package (config loading) or to urllib3; everything else
    in the operator and the plugin goes through it (issue 11: one client, one error taxonomy)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "client.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            offenders += [
                f"{path.relative_to(REPO)}:{node.lineno} imports {n}"
                for n in names
                if n.split(".")[0] in ("kubernetes", "urllib3")
            ]
    assert not offenders, "\n".join(offenders)
