"""Build the operator image (hack/build-image.sh), unpack it, and run it the way a kubelet would:
as its own user, on a read-only root, with a tmpfs on /tmp and a ServiceAccount volume."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack" / "image"))
import oci  # noqa: E402  (the archive reader the build itself uses)

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def build_image(output: Path, env: dict[str, str] | None = None, timeout: float = 1200, repo: Path = ROOT) -> dict[str, Any]:
    """Run `REPO/hack/build-image.sh --output OUTPUT`; the summary it writes beside the archive, plus its log."""
    proc = subprocess.run(
        ["bash", str(repo / "hack" / "build-image.sh"), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise AssertionError(f"hack/build-image.sh exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    info = json.loads(output.with_name(output.name.split(".")[0] + ".json").read_text())
    info["log"] = proc.stderr
    return info


def snapshot_sources(dest: Path) -> Path:
    """A copy of what the image is built from (the build script and its pins, pyproject.toml,
    README.md, operator/), so several builds see the same inputs while the work tree changes."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for rel in ("hack", "operator"):
        shutil.copytree(ROOT / rel, dest / rel, ignore=ignore, symlinks=True)
    for rel in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / rel, dest / rel)
    return dest


def crane_binary() -> str:
    """crane at CRANE_VERSION (hack/versions.env), built once with `go install` into the cache."""
    import re

    version = re.search(r"^CRANE_VERSION=(\S+)", (ROOT / "hack/versions.env").read_text(), re.M).group(1)
    folder = Path(os.environ.get("TEAL_CACHE") or Path.home() / ".cache/teal") / "bin" / f"crane-{version}"
    if not (folder / "crane").exists():
        proc = subprocess.run(
            ["go", "install", "-trimpath", "-ldflags", "-s -w", f"github.com/google/go-containerregistry/cmd/crane@{version}"],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "GOBIN": str(folder), "CGO_ENABLED": "0"},
        )
        if proc.returncode != 0:
            raise AssertionError(f"go install crane@{version} failed:\n{proc.stderr[-3000:]}")
    return str(folder / "crane")


def unpack(archive: Path, rootfs: Path) -> None:
    """Apply the image's layers in order, as a container runtime does (this image has no whiteouts:
    each layer only adds), keeping modes (sticky /tmp), owners and links: GNU tar, as root."""
    rootfs.mkdir(parents=True, exist_ok=True)
    for name in oci.read_archive(archive)["layer_blobs"]:
        blob = subprocess.Popen(["tar", "-xOf", str(archive), name], stdout=subprocess.PIPE)
        subprocess.run(
            ["tar", "-xz", "-C", str(rootfs), "--numeric-owner", "--same-owner", "--same-permissions"],
            stdin=blob.stdout,
            check=True,
        )
        blob.stdout.close()  # type: ignore[union-attr]
        assert blob.wait() == 0, f"could not read {name} from {archive}"


def inside(rootfs: Path, path: str) -> Path:
    """`path` as the container sees it: symlinks resolved within rootfs (never onto the host)."""
    current = rootfs
    for part in [p for p in path.split("/") if p]:
        candidate = current / part
        hops = 0
        while candidate.is_symlink():
            hops += 1
            assert hops < 20, f"symlink loop at {candidate}"
            target = os.readlink(candidate)
            candidate = inside(rootfs, target) if target.startswith("/") else (candidate.parent / target)
        current = candidate
    resolved = current.resolve()
    assert resolved == rootfs.resolve() or rootfs.resolve() in resolved.parents, f"{path} leaves the rootfs"
    return resolved


class ImageProcess:
    """The image's entrypoint + cmd in a private mount namespace: rootfs bind-mounted read-only,
    tmpfs on /tmp, proc, the host's /dev, a read-only ServiceAccount folder, then chroot to the
    image's user. The network namespace is the host's (the apiserver listens on 127.0.0.1)."""

    def __init__(self, rootfs: Path, config: dict[str, Any], env: dict[str, str], secrets: Path, log: Path):
        self.rootfs, self.config, self.secrets, self.log_path = rootfs.resolve(), config, secrets, log
        self.env = dict(e.split("=", 1) for e in config["Env"])
        self.env.update(env)
        self.proc: subprocess.Popen | None = None

    def start(self) -> ImageProcess:
        r = self.rootfs
        for d in ("proc", "dev", "tmp"):  # mount points, made before the root turns read-only (as runc does)
            inside(r, d).mkdir(exist_ok=True)
        sa = inside(r, SA_DIR)
        sa.mkdir(parents=True, exist_ok=True)
        argv = self.config.get("Entrypoint", []) + self.config.get("Cmd", [])
        uid, gid = self.config["User"].split(":")
        workdir = shlex.quote(self.config.get("WorkingDir") or "/")
        script = "\n".join(
            [
                "set -e",
                f"mount --bind '{r}' '{r}'",
                f"mount -o remount,bind,ro '{r}'",
                f"mount -t tmpfs -o mode=1777,size=64m,nosuid,nodev tmpfs '{r}/tmp'",
                f"mount -t proc -o nosuid,nodev,noexec proc '{r}/proc'",
                f"mount --rbind /dev '{r}/dev'",
                f"mount --bind '{self.secrets}' '{sa}'",
                f"mount -o remount,bind,ro '{sa}'",
                # chroot to the rootfs, cd to WorkingDir, drop to the image's user (no supplementary
                # groups), then exec Entrypoint + Cmd found on the image's PATH
                f'exec env -u IMAGE_PATH PATH="$IMAGE_PATH" unshare --root={shlex.quote(str(r))} --wd={workdir}'
                f" --setgid {gid} --setuid {uid} -- {shlex.join(argv)}",
            ]
        )
        host_path = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        with open(self.log_path, "ab") as log:
            # only the image's Env and what the "kubelet" adds (and PATH for mount): nothing of the host's
            self.proc = subprocess.Popen(
                # a killed test run takes the image's process with it (pdeathsig, then --kill-child)
                [
                    "setpriv",
                    "--pdeathsig",
                    "KILL",
                    "--",
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--fork",
                    "--kill-child",
                    "--",
                    "sh",
                    "-c",
                    script,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.env, **host_path, "IMAGE_PATH": self.env["PATH"]},
                start_new_session=True,
            )
        return self

    def image_pid(self) -> int | None:
        """The pid of the image's process (the child of unshare), once it runs the image's Python."""
        from teal_devenv.procs import live_children

        for pid, cmd in live_children(self.proc.pid) if self.proc else []:
            if "unshare" not in cmd and "sh -c" not in cmd:
                return pid
        return None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def log_tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def root_mount_options(pid: int) -> list[str]:
    """Mount options of the process's own "/" (from its mountinfo: fields 5 and 6)."""
    with open(f"/proc/{pid}/mountinfo") as f:
        roots = [line.split() for line in f if line.split()[4] == "/"]
    return roots[-1][5].split(",") if roots else []
