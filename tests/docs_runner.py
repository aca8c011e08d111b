"""Runs what the documentation tells a user to type, in order, against a local control plane.

What is a command
-----------------
* Markdown: a fenced block whose info string is ``sh``, ``bash``, ``shell``, ``console`` or
  ``zsh`` is a *command block*; so is a fenced block of any other kind (or none) with a line
  that starts with ``$ `` -- a transcript: its ``$`` lines are the commands, the other lines
  the output it shows (not compared). YAML, usage synopses, trees and tables are not
  commands; nor is inline code in prose.
* NOTES.txt: the lines of the notes ``helm install`` prints that are indented by five
  spaces or more.

Not runnable here
-----------------
A command block is not run when the line right before its opening fence is
``<!-- not-runnable: REASON -->``; REASON is reported (a marker that annotates no command
block is an error). In NOTES.txt a command line that ends in the template comment
``{{/* not-runnable: REASON */}}`` (the user never sees it) is not run. Everything else
runs, and a command that fails fails its document.

How blocks run
--------------
In the document's order, each with ``bash`` and ``set -euo pipefail``, with stdin closed,
in a copy of the repository (``charts/teal``, ``examples/`` work as written). The working
directory and exported variables carry over from one block to the next, as in one
terminal. PATH has kubectl, helm and kubectl-teal first; KUBECONFIG is the local cluster's
admin kubeconfig; HOME is an empty folder. A block that runs longer than its timeout fails.

The operator
------------
kwok runs no containers, so the Deployment that ``helm install`` makes never runs Teal.
:class:`ChartOperators` plays it: as soon as the chart's operator Deployment exists, a
local process runs with that Deployment's container arguments (ports aside) and a
TokenRequest token of its ServiceAccount, so it has exactly the chart's RBAC; a new
generation of the Deployment (``helm upgrade``) restarts it, its deletion stops it. A
document fails when such an operator exits or logs an RBAC denial.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from teal_devenv.operator import OperatorProcess

ROOT = Path(__file__).resolve().parents[1]
SHELLS = {"sh", "bash", "shell", "console", "zsh"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
MARK = re.compile(r"^\s*<!--\s*not-runnable:\s*(.+?)\s*-->\s*$")
NOTES_MARK = re.compile(r"\{\{-?\s*/\*\s*not-runnable:\s*(.+?)\s*\*/\s*-?\}\}")
NOTES_COMMAND = re.compile(r"^ {5,}\S")
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".hypothesis",
    ".venv",
    "dist",
    "build",
    ".teal",
    ".teal-quickstart-venv",
)


class DocFailure(AssertionError):
    pass


@dataclass
class Block:
    doc: str  # path relative to the repository
    line: int  # line of the opening fence (or of the NOTES line)
    script: str
    reason: str | None = None  # why it is not runnable here
    output: str = ""
    seconds: float = 0.0

    @property
    def commands(self) -> int:
        return count_commands(self.script)

    def where(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclass
class Outcome:
    doc: str
    ran: list[Block] = field(default_factory=list)
    marked: list[Block] = field(default_factory=list)

    @property
    def commands(self) -> int:
        return sum(b.commands for b in self.ran)

    def summary(self) -> str:
        return (
            f"{self.doc}: {len(self.ran)} block(s) run ({self.commands} command(s), "
            f"{sum(b.seconds for b in self.ran):.0f} s), "
            f"{len(self.marked)} marked not runnable ({sum(b.commands for b in self.marked)} command(s))"
        )


# ---------------------------------------------------------------- finding the commands


def count_commands(script: str) -> int:
    """Command lines of a script: backslash continuations and here-document bodies belong to their line."""
    n, heredoc, continued = 0, None, False
    for line in script.splitlines():
        s = line.strip()
        if heredoc:
            heredoc = None if s == heredoc else heredoc
            continue
        if s and not continued and not s.startswith("#"):
            n += 1
        continued = s.endswith("\\")
        m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", s)
        if m:
            heredoc = m.group(1)
    return n


def _script(lang: str, body: list[str]) -> str | None:
    prompts = [line[2:] for line in body if line.startswith("$ ")]
    if prompts:
        return "\n".join(prompts)
    return "\n".join(body) if lang in SHELLS else None


def markdown_blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """The command blocks of a Markdown file, in order (see the module's docstring)."""
    lines = path.read_text().splitlines()
    doc = str(path.relative_to(root))
    blocks, used, i = [], set(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence)), len(lines))
        body = textwrap.dedent(
            "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end])
        ).splitlines()
        script = _script(lang, body)
        if script is not None:
            mark = MARK.match(lines[i - 1]) if i else None
            if mark:
                used.add(i - 1)
            blocks.append(Block(doc, i + 1, script, mark.group(1) if mark else None))
        i = end + 1
    stray = [n + 1 for n, line in enumerate(lines) if MARK.match(line) and n not in used]
    if stray:
        raise DocFailure(f"{doc}: not-runnable marker(s) at line(s) {stray} annotate no command block")
    return blocks


def notes_blocks(printed: str, template: Path, root: Path = ROOT) -> list[Block]:
    """The commands of the NOTES in `helm install`'s output, one block each, marked as NOTES.txt says."""
    if "NOTES:" not in printed:
        raise DocFailure("helm printed no NOTES")
    notes = printed.split("NOTES:", 1)[1].splitlines()
    marks = []
    for src in template.read_text().splitlines():
        m = NOTES_MARK.search(src)
        if m:
            pieces = re.split(r"\{\{.*?\}\}", NOTES_MARK.sub("", src).strip())
            marks.append((re.compile(".*?".join(re.escape(p) for p in pieces)), m.group(1)))
    doc = str(template.relative_to(root))
    blocks = []
    for n, line in enumerate(notes, start=1):
        if NOTES_COMMAND.match(line):
            reason = next((r for pattern, r in marks if pattern.fullmatch(line.strip())), None)
            blocks.append(Block(f"{doc} (as printed)", n, line.strip(), reason))
    return blocks


# ---------------------------------------------------------------- running them


def copy_repository(dest: Path, root: Path = ROOT) -> Path:
    """The working tree as a user has it after a clone (caches and build outputs left out)."""
    shutil.copytree(root, dest, ignore=COPY_IGNORE, symlinks=True)
    return dest


class Shell:
    """One terminal: a bash per block, the working directory and exported variables carried over."""

    def __init__(self, cwd: Path, env: dict[str, str], state_dir: Path):
        self.env = env
        self.state = state_dir / "shell-state.sh"
        self.state.write_text(f"cd {shlex.quote(str(cwd))}\n")
        self.cwd = cwd

    def run(self, script: str, timeout: float, trouble: Callable[[], str | None] = lambda: None) -> tuple[int, str]:
        """Run a block; stop it early when `trouble()` names a problem (an operator that died)."""
        state = shlex.quote(str(self.state))
        prologue = (
            f"source {state}\n"
            f"__save() {{ {{ export -p; printf 'cd %q\\n' \"$PWD\"; }} > {state}.new; }}\n"
            "trap __save EXIT\nset -euo pipefail\n"
        )
        proc = subprocess.Popen(
            ["bash", "-c", prologue + script],
            cwd=self.cwd,
            env=self.env,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    out, _ = proc.communicate(timeout=1)
                    break
                except subprocess.TimeoutExpired:
                    problem = trouble() or (time.monotonic() > deadline and f"still running after {timeout:.0f} s")
                    if problem:
                        _kill_group(proc.pid)
                        out, _ = proc.communicate()
                        return -1, f"{out}\n[killed: {problem}]"
        finally:
            _kill_group(proc.pid)  # anything the block left in the background
        if proc.returncode == 0 and Path(f"{self.state}.new").exists():
            os.replace(f"{self.state}.new", self.state)
        return proc.returncode, out


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class ChartOperators:
    """Teal's operator Deployment of every chart release in the cluster, played by a local process
    with that Deployment's container arguments (ports aside) and a TokenRequest token of its
    ServiceAccount. A thread looks every half second, so an operator starts while the block that
    ran `helm install` goes on; a new Deployment generation (`helm upgrade`) restarts it."""

    SELECTOR = "app.kubernetes.io/part-of=teal,app.kubernetes.io/component=operator"

    def __init__(self, cluster, workdir: Path):
        self.cluster, self.dir = cluster, workdir
        self.running: dict[tuple[str, str], tuple[int, OperatorProcess]] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chart-operators", daemon=True)

    def __enter__(self) -> ChartOperators:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        with self._lock:
            for key in list(self.running):
                self.running.pop(key)[1].stop()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.sync()
            except Exception as exc:  # reported by trouble()
                if repr(exc) not in self.errors:
                    self.errors.append(repr(exc))

    def sync(self) -> None:
        items = self.cluster.api("GET", f"/apis/apps/v1/deployments?labelSelector={self.SELECTOR}")["items"]
        found = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in items}
        with self._lock:
            for key in [k for k, (gen, _) in self.running.items() if k not in found or found[k]["metadata"]["generation"] != gen]:
                self.running.pop(key)[1].stop()
            for key, dep in found.items():
                if key not in self.running:
                    self.running[key] = (dep["metadata"]["generation"], self.start(dep))

    def start(self, deployment: dict) -> OperatorProcess:
        ns, name = deployment["metadata"]["namespace"], deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = [c for c in pod["containers"] if c["name"] == "operator"]
        args = [a for a in container.get("args", []) if not a.startswith(("--liveness-port", "--metrics-port"))]
        if args[:1] != ["run"]:
            raise DocFailure(f"deployment {ns}/{name}: the operator's args do not start with `run`: {args}")
        env = {
            e["name"]: e["value"]
            for e in container.get("env", [])
            if "value" in e and e["name"] not in ("KUBECONFIG", "PYTHONUNBUFFERED", "PYTHONPATH")
        }
        sa = pod["serviceAccountName"]
        kubeconfig = self.cluster.write_kubeconfig(
            self.dir / f"{ns}-{name}.kubeconfig", token=self.cluster.create_token(ns, sa), user=sa
        )
        return OperatorProcess(kubeconfig, self.dir / f"{ns}-{name}.log", extra_args=args[1:], env=env).start()

    def trouble(self) -> str | None:
        """What went wrong: the watcher failed, an operator exited or one was refused by RBAC."""
        if self.errors:
            return "starting the chart's operator failed: " + "; ".join(self.errors[:3])
        with self._lock:
            for (ns, name), (_, op) in self.running.items():
                if op.proc is not None and op.proc.poll() is not None:
                    return f"the operator of {ns}/{name} exited ({op.proc.returncode}):\n" + op.log_tail(40)
                denied = [
                    line
                    for line in op.log_tail(2000).splitlines()
                    if "system:serviceaccount:" in line or "forbidden" in line.lower()
                ]
                if denied:
                    return f"the operator of {ns}/{name} was refused by RBAC:\n" + "\n".join(denied[:10])
        return None

    def logs(self) -> str:
        with self._lock:
            return (
                "\n".join(f"--- operator of {ns}/{name}\n{op.log_tail(30)}" for (ns, name), (_, op) in self.running.items())
                or "--- no operator was running"
            )


OFFLINE = re.compile(r"kubectl[- ]teal\s+(lint|--help)\b")


def talks_to_cluster(blocks: list[Block]) -> bool:
    """Does a runnable block run helm, or kubectl for anything but the offline `teal lint` / `--help`?
    (A document that does not gets no cluster: KUBECONFIG then names no file, so a wrong guess fails loudly.)"""
    return any(re.search(r"\b(kubectl|helm)\b", OFFLINE.sub("", b.script)) for b in blocks if not b.reason)


@contextlib.contextmanager
def terminal(tmp: Path, tools: list[str], with_cluster: bool) -> Iterator[tuple[Shell, ChartOperators | None]]:
    """A user's terminal in a copy of the repository, with (when asked) an empty local cluster of its own
    and the chart's operators started as releases appear."""
    from teal_devenv.cluster import LocalCluster

    home = tmp / "home"
    home.mkdir()
    env = {
        "PATH": os.pathsep.join([*dict.fromkeys(str(Path(t).parent) for t in tools), os.environ["PATH"]]),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "KUBECONFIG": str(tmp / "no-cluster"),
    }
    shell = Shell(copy_repository(tmp / "teal"), env, tmp)
    if not with_cluster:
        yield shell, None
        return
    cluster = LocalCluster(tmp / "cluster")
    try:
        cluster.start()
        env["KUBECONFIG"] = cluster.kubeconfig
        with ChartOperators(cluster, tmp) as operators:
            yield shell, operators
    finally:
        cluster.stop()
        left = cluster.leftover_processes()
        if left:
            raise DocFailure(f"the docs' cluster left processes running: {left}")


def run_blocks(
    outcome: Outcome, blocks: list[Block], shell: Shell, operators: ChartOperators | None, timeout: float = 180
) -> None:
    """Run the runnable blocks in order into `outcome`; raise DocFailure at the first that fails."""
    for block in blocks:
        if block.reason:
            outcome.marked.append(block)
            continue
        started = time.monotonic()
        code, block.output = shell.run(block.script, timeout, operators.trouble if operators else lambda: None)
        block.seconds = time.monotonic() - started
        problem = operators.trouble() if operators else None
        if code != 0 or problem:
            context = f"\n{operators.logs()}\n{problem or ''}" if operators else ""
            raise DocFailure(
                f"{block.where()}: exit {code}\n--- block\n{block.script}\n--- output\n{block.output[-4000:]}{context}"
            )
        outcome.ran.append(block)
