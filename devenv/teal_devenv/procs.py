"""Child-process plumbing shared by the local cluster, Prometheus and fakeapp.

Each child runs in its own session/process group (so ``killpg`` reaches
anything it forks), logs to a file, and -- when started from the main thread
and ``setpriv`` exists -- gets ``PDEATHSIG=SIGKILL`` so it dies even if the
Python parent is killed with SIGKILL.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from .wait import wait_for

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tail(path: str | os.PathLike, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ("" if absent)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes (not zombies) whose command line contains ``text``.

    The arguments are joined with single spaces and a space is appended, so
    ``"/some/dir "`` matches an argument that ends with ``/some/dir``.
    """
    pids = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace") + " "
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            pids.append(int(entry))
    return pids


def rss_kib(pid: int) -> int | None:
    """Resident memory of a process in KiB (VmRSS), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclasses.dataclass
class Component:
    """One child process: its command, log file and Popen handle."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    _log: Any = None

    def start(self, pdeathsig: bool) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab", buffering=0)  # noqa: SIM115 (open while the process runs)
        self._log.write(f"### {time.strftime('%H:%M:%S')} starting: {' '.join(self.args)}\n".encode())
        argv = list(self.args)
        # Die with the parent even if it is SIGKILLed (only valid from the main
        # thread: PDEATHSIG fires when the *thread* that forked exits).
        if pdeathsig and shutil.which("setpriv"):
            argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # own process group: killpg reaches any child
            close_fds=True,
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def close_log(self) -> None:
        if self._log is not None:
            try:
                self._log.close()
            except OSError:
                pass
            self._log = None

    def tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


class ComponentExited(RuntimeError):
    """A child process exited while something waited on it (the message holds its log tail)."""

    def __init__(self, component: Component, what: str) -> None:
        code = component.proc.returncode if component.proc else None
        super().__init__(
            f"{component.name} exited (code {code}) while waiting for {what}; "
            f"last lines of {component.log_path}:\n{component.tail()}"
        )
        self.component = component


def wait_while_alive(
    components: Iterable[Component],
    fn: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.1,
    ignore: tuple[type[BaseException], ...] = (OSError,),
) -> T:
    """:func:`~teal_devenv.wait.wait_for` ``fn``, failing at once with :class:`ComponentExited`
    when one of ``components`` exits (instead of waiting out the timeout)."""
    if any(issubclass(ComponentExited, kind) for kind in ignore):
        raise ValueError(f"ignore={ignore!r} would hide ComponentExited")
    watched = list(components)

    def alive_and_ready() -> T | None:
        for comp in watched:
            if not comp.alive():
                raise ComponentExited(comp, what)
        return fn()

    return wait_for(alive_and_ready, timeout=timeout, interval=interval, what=what, ignore=ignore)


def sweep_stale_dirs(parent: str | os.PathLike, prefix: str, min_age: float = 600.0) -> list[str]:
    """Remove ``parent/prefix*`` folders left by killed runs.

    A folder goes only when it is older than ``min_age`` seconds and no live
    process mentions it on its command line (so other running clusters keep
    theirs). Returns the removed paths.
    """
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    now = time.time()
    for p in entries:
        if not p.name.startswith(prefix) or not p.is_dir():
            continue
        try:
            if now - p.stat().st_mtime < min_age:
                continue
        except OSError:
            continue
        if processes_mentioning(str(p) + "/") or processes_mentioning(str(p) + " "):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(str(p))
    return removed


def live_children(pid: int | None = None) -> list[tuple[int, str]]:
    """(pid, command line) of live, non-zombie child processes of ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != pid or fields[0] == "Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except (OSError, IndexError, ValueError):
            continue
        out.append((int(entry), cmd))
    return out


def aliased_binary(binary: str, alias: str, folder: str | os.PathLike) -> str:
    """A symlink ``folder/alias`` to ``binary``; running it gives the process the name ``alias``.

    ``hack/build-binaries.sh`` runs ``pkill -x etcd`` and ``pkill -x prometheus``
    (to stop Debian's services) every time it is run; under another name our
    processes survive that, and so do other sessions' test clusters.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / alias
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.realpath(binary))
    return str(link)
