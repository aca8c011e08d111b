"""What Argo CD and Flux compute from a Rollout, run here for real:

* ``doc_health_script``: the Argo CD health check exactly as docs/gitops.md shows it
  (the ``argocd-cm`` key a user copies).
* ``argocd_health``: runs it the way Argo CD runs a custom health check (util/lua in
  argo-cd): a fresh Lua state with only the libraries Argo CD opens for custom scripts
  (base, table, package, an ``os`` with ``time``/``date``; no ``string``, ``math``, ``io``),
  the object as the global ``obj``, the chunk's return value as the result, and a status
  outside Argo CD's six turned into ``Unknown``. Three interpreters: gopher-lua, the one
  Argo CD embeds (hack/gitops-tools/argocd-lua), and the reference Lua 5.1 and 5.4 (lupa),
  so a script that works only by an accident of one of them fails.
* ``kstatus``: sigs.k8s.io/cli-utils' ``status.Compute`` (what Flux's health checks use
  for a custom resource), hack/gitops-tools/kstatus.

Both Go programs are built by hack/build-binaries.sh into a cache folder named after a
hash of their sources.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
GITOPS_DOC = ROOT / "docs" / "gitops.md"
HEALTH_KEY = "resource.customizations.health.teal.dev_Rollout"
ARGOCD_STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
LUA_RUNTIMES = ("gopher-lua", "lua51", "lua54")
TOOLS = ROOT / "hack" / "gitops-tools"

_FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)


def doc_health_script(path: Path = GITOPS_DOC) -> str:
    """The Lua script under ``HEALTH_KEY`` in the one YAML block of the doc that has it."""
    found = []
    for block in _FENCE.findall(path.read_text()):
        try:
            doc = yaml.safe_load(block)
        except yaml.YAMLError:
            continue
        data = doc.get("data") if isinstance(doc, dict) else None
        if isinstance(data, dict) and HEALTH_KEY in data:
            found.append(data[HEALTH_KEY])
    if len(found) != 1:
        raise AssertionError(f"{path} must show exactly one argocd-cm block with {HEALTH_KEY}; found {len(found)}")
    return found[0]


def _argocd_lua_state(runtime: str) -> Any:
    """A Lua state with only what Argo CD gives a custom (non-built-in) health script."""
    lua = _lupa(runtime).LuaRuntime(register_eval=False, register_builtins=False)
    lua.execute(
        """
        debug.setmetatable("", nil)   -- no ("x"):upper(): the string library is not opened
        local time, date = os.time, os.date
        os = {time = time, date = date}
        string, math, io, debug, coroutine, utf8, bit32 = nil, nil, nil, nil, nil, nil, nil
        python = nil
        """
    )
    return lua


def argocd_health(script: str, obj: dict[str, Any], runtime: str = "gopher-lua") -> dict[str, Any]:
    """{"status", "message"} as Argo CD would show them for ``obj``."""
    hs = _gopher_lua(script, obj) if runtime == "gopher-lua" else _lupa_lua(script, obj, runtime)
    if hs.get("status") not in ARGOCD_STATUSES:
        return {"status": "Unknown", "message": "Lua returned an invalid health status"}
    return hs


def _lupa(runtime: str) -> Any:
    if runtime not in LUA_RUNTIMES[1:]:
        raise ValueError(f"Lua runtime {runtime!r}: use one of {LUA_RUNTIMES}")
    return importlib.import_module(f"lupa.{runtime}")


def _lupa_lua(script: str, obj: dict[str, Any], runtime: str) -> dict[str, Any]:
    lua = _argocd_lua_state(runtime)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    if _lupa(runtime).lua_type(result) != "table":
        raise AssertionError(f"the health script returned {result!r}, not a table (Argo CD reports an error)")
    return dict(result.items())


def _gopher_lua(script: str, obj: dict[str, Any]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(script)
        f.flush()
        proc = subprocess.run(
            [str(tool("argocd-lua")), f.name], input=json.dumps(obj), capture_output=True, text=True, timeout=30
        )
    if proc.returncode != 0:
        raise AssertionError(f"the health script failed in gopher-lua: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def tool(name: str) -> Path:
    """A program of hack/gitops-tools, where hack/build-binaries.sh builds it (keyed like there)."""
    sources = [TOOLS / "go.mod", TOOLS / "go.sum", *sorted(TOOLS.glob("*/main.go"))]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    cache = Path(os.environ.get("TEAL_CACHE", Path.home() / ".cache" / "teal"))
    path = cache / "bin" / f"gitops-tools-{key}" / name
    if not os.access(path, os.X_OK):
        raise AssertionError(f"{path} is missing: run hack/build-binaries.sh (hack/test.sh does)")
    return path


def kstatus(obj: dict[str, Any]) -> dict[str, str]:
    """{"status": Current | InProgress | Failed | ..., "message"} for one object."""
    out = subprocess.run(
        [str(tool("kstatus"))], input=json.dumps(obj), capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return json.loads(out)
