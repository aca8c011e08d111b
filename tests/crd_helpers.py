"""Reading crds/rollouts.yaml and examples/ for the CRD tests (no cluster needed here)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "crds"
ROLLOUT_CRD = CRDS / "rollouts.yaml"
COPIES = (ROOT / "operator" / "teal" / "crds", ROOT / "charts" / "teal" / "files" / "crds")
EXAMPLES = ROOT / "examples"
INVALID = EXAMPLES / "invalid"

_EXPECT = re.compile(r"^# expect: (.+?)\s*$", re.M)


@functools.cache
def rollout_crd() -> Mapping[str, Any]:
    return yaml.safe_load(ROLLOUT_CRD.read_text())


def version() -> Mapping[str, Any]:
    (v,) = rollout_crd()["spec"]["versions"]
    return v


def schema() -> Mapping[str, Any]:
    return version()["schema"]["openAPIV3Schema"]


def node(path: str, root: Mapping[str, Any] | None = None) -> Mapping[str, Any] | None:
    """The schema of a dotted path such as 'spec.strategy.blueGreen.steps[].setWeight'.

    `[]` steps into array items, `{}` into a map's values. None when the path does not exist.
    """
    cur: Mapping[str, Any] | None = schema() if root is None else root
    for part in path.split("."):
        name, suffix = re.fullmatch(r"([^\[\]{}]*)((?:\[\]|\{\})*)", part).groups()
        cur = (cur.get("properties") or {}).get(name) if cur is not None else None
        for s in re.findall(r"\[\]|\{\}", suffix):
            if cur is None:
                return None
            cur = cur.get("items") if s == "[]" else cur.get("additionalProperties")
    return cur


def walk(n: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every schema node below `n` with its path in the notation of `node()`."""
    yield path, n
    for name, child in (n.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if isinstance(n.get("items"), Mapping):
        yield from walk(n["items"], path + "[]")
    if isinstance(n.get("additionalProperties"), Mapping):
        yield from walk(n["additionalProperties"], path + "{}")


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def invalid_files() -> list[Path]:
    return sorted(INVALID.glob("*.yaml"))


def rollouts(path: Path) -> list[dict[str, Any]]:
    return [d for d in docs(path) if d.get("kind") == "Rollout"]


def expectation(path: Path) -> str:
    """The `# expect: <substring>` of an invalid example (exactly one per file)."""
    found = _EXPECT.findall(path.read_text())
    assert len(found) == 1, f"{path.name}: needs exactly one '# expect: <substring of the error>' line, found {found}"
    return found[0]


def apply_defaults(n: Mapping[str, Any], value: Any) -> Any:
    """Structural defaulting as the apiserver does it (a copy of `value` with `default:`s filled in)."""
    if isinstance(value, dict):
        extra = n.get("additionalProperties")
        extra = extra if isinstance(extra, Mapping) else {}
        out = {k: apply_defaults((n.get("properties") or {}).get(k, extra), v) for k, v in value.items()}
        for name, child in (n.get("properties") or {}).items():
            if name not in out and "default" in child:
                out[name] = apply_defaults(child, child["default"])
        return out
    if isinstance(value, list):
        return [apply_defaults(n.get("items") or {}, v) for v in value]
    return value
