"""Find the binaries of the local control plane and Prometheus.

Where they are looked up, in order:

1. ``TEAL_BIN_DIRS`` (``os.pathsep``-separated folders), when set: only there
   (and on ``PATH`` / ``/usr/bin`` for etcd and prometheus, which come from
   Debian's packages).
2. The cache that ``hack/build-binaries.sh`` fills,
   ``${TEAL_CACHE:-~/.cache/teal}/bin/<component>-<version>/``, with the
   versions read from ``hack/versions.env`` -- used as is when complete.
3. Otherwise ``hack/build-binaries.sh`` is run (when the repository is found;
   it builds what is missing -- minutes on a cold cache -- and prints the bin
   folders), under a file lock so two Python callers never build at once.
   Beware: that script also runs ``pkill -x etcd`` and ``pkill -x prometheus``
   (for Debian's services), which is why LocalCluster and LocalPrometheus run
   those two under the names ``teal-etcd`` and ``teal-prometheus``.

A :class:`BinariesNotFound` error names every missing program and the
folders searched.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Pinned defaults, used only when hack/versions.env cannot be found
# (e.g. an installed wheel outside the repository).
_DEFAULT_VERSIONS = {"K8S_VERSION": "v1.34.4", "KWOK_VERSION": "v0.8.0", "HELM_VERSION": "v3.19.5"}

K8S_PROGRAMS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
SYSTEM_PROGRAMS = ("etcd", "prometheus")


class BinariesNotFound(RuntimeError):
    """Some required program could not be found."""


@dataclasses.dataclass(frozen=True)
class Binaries:
    kube_apiserver: str
    kube_controller_manager: str
    kube_scheduler: str
    kubectl: str
    kwok: str
    etcd: str
    prometheus: str
    helm: str | None = None
    bin_dirs: tuple[str, ...] = ()

    def path_env(self, base: str | None = None) -> str:
        """A ``PATH`` value with the bin folders first (for kubectl, helm...)."""
        base = os.environ.get("PATH", "") if base is None else base
        return os.pathsep.join([*self.bin_dirs, base]) if base else os.pathsep.join(self.bin_dirs)


def repo_root() -> Path | None:
    """The repository root (the folder holding ``hack/build-binaries.sh``), if any."""
    env = os.environ.get("TEAL_REPO")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += list(here.parents)
    candidates.append(Path.cwd())
    for c in candidates:
        if (c / "hack" / "build-binaries.sh").is_file():
            return c
    return None


def read_versions(root: Path | None = None) -> dict[str, str]:
    """The ``KEY=VALUE`` pairs of ``hack/versions.env`` (defaults if absent)."""
    root = root if root is not None else repo_root()
    versions = dict(_DEFAULT_VERSIONS)
    if root is not None and (root / "hack" / "versions.env").is_file():
        for line in (root / "hack" / "versions.env").read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip().strip('"').strip("'")
    return versions


def cache_dir() -> Path:
    return Path(os.environ.get("TEAL_CACHE") or Path.home() / ".cache" / "teal")


def cache_bin_dirs(root: Path | None = None) -> list[str]:
    """The cache's bin folders for the pinned versions (they may not exist)."""
    v = read_versions(root)
    base = cache_dir() / "bin"
    return [
        str(base / f"kubernetes-{v['K8S_VERSION']}"),
        str(base / f"kwok-{v['KWOK_VERSION']}"),
        str(base / f"helm-{v['HELM_VERSION']}"),
    ]


def _which(name: str, dirs: list[str], system: bool) -> str | None:
    for d in dirs:
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    if system:
        found = shutil.which(name)
        if found:
            return found
        p = os.path.join("/usr/bin", name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def _resolve(dirs: list[str]) -> tuple[dict[str, str | None], list[str]]:
    found: dict[str, str | None] = {}
    for name in (*K8S_PROGRAMS, "kwok", "helm"):
        found[name] = _which(name, dirs, system=False)
    for name in SYSTEM_PROGRAMS:
        found[name] = _which(name, dirs, system=True)
    missing = [n for n, p in found.items() if p is None and n != "helm"]
    return found, missing


def _make(found: dict[str, str | None], dirs: list[str]) -> Binaries:
    return Binaries(
        kube_apiserver=found["kube-apiserver"],  # type: ignore[arg-type]
        kube_controller_manager=found["kube-controller-manager"],  # type: ignore[arg-type]
        kube_scheduler=found["kube-scheduler"],  # type: ignore[arg-type]
        kubectl=found["kubectl"],  # type: ignore[arg-type]
        kwok=found["kwok"],  # type: ignore[arg-type]
        etcd=found["etcd"],  # type: ignore[arg-type]
        prometheus=found["prometheus"],  # type: ignore[arg-type]
        helm=found["helm"],
        bin_dirs=tuple(d for d in dirs if os.path.isdir(d)),
    )


def run_build_script(root: Path, timeout: float = 3600.0) -> list[str]:
    """Run ``hack/build-binaries.sh`` (under a lock) and return the folders it prints.

    Its progress goes to this process's stderr.
    """
    lock_path = cache_dir() / ".build-binaries.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            proc = subprocess.run(
                ["bash", str(root / "hack" / "build-binaries.sh")],
                stdout=subprocess.PIPE,
                stderr=sys.stderr,
                stdin=subprocess.DEVNULL,
                text=True,
                timeout=timeout,
                check=False,
            )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if proc.returncode != 0:
        raise BinariesNotFound(
            f"hack/build-binaries.sh failed with exit code {proc.returncode}; see its messages above "
            f"(or run `bash {root / 'hack' / 'build-binaries.sh'}` by hand)."
        )
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def find_binaries(build: bool = True) -> Binaries:
    """Locate every program the local cluster and Prometheus need.

    ``build=False`` never runs the build script (only looks).
    """
    env_dirs = os.environ.get("TEAL_BIN_DIRS")
    if env_dirs:
        dirs = [d for d in env_dirs.split(os.pathsep) if d]
        found, missing = _resolve(dirs)
        if missing:
            raise BinariesNotFound(
                f"missing {', '.join(missing)} in TEAL_BIN_DIRS={env_dirs!r}"
                " (etcd and prometheus are also looked up on PATH and /usr/bin)"
            )
        return _make(found, dirs)

    root = repo_root()
    dirs = cache_bin_dirs(root)
    found, missing = _resolve(dirs)
    if not missing:
        return _make(found, dirs)

    if build and root is not None:
        printed = run_build_script(root)
        dirs = printed + [d for d in dirs if d not in printed]
        found, missing = _resolve(dirs)
        if not missing:
            return _make(found, dirs)

    how = (
        f"run `bash {root / 'hack' / 'build-binaries.sh'}`"
        if root is not None
        else "set TEAL_BIN_DIRS to the folders holding them (or TEAL_CACHE to the build cache)"
    )
    raise BinariesNotFound(
        f"missing {', '.join(missing)}; searched {os.pathsep.join(dirs)}"
        f" (and PATH, /usr/bin for {', '.join(SYSTEM_PROGRAMS)}); {how}"
    )


if __name__ == "__main__":  # pragma: no cover - manual helper
    b = find_binaries()
    for field in dataclasses.fields(b):
        print(f"{field.name}: {getattr(b, field.name)}")
