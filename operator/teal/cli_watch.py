"""`kubectl teal get NAME --watch`: the Rollout's tree, redrawn in place from watch streams.

Four streams (teal.client.Client.watch: a list, then a watch from its resourceVersion, a new list
after 410 Gone, a short backoff after a cut) keep a local copy of the Rollout, its colour
Deployments and their pods (label teal.dev/rollout=NAME), the Services of the namespace and the
Rollout's Events. Each change wakes the drawing loop, which renders the tree of
teal.cli_render.rollout_tree with pods and Events and writes it only when it differs from the
frame on screen:

- on a terminal: the cursor goes home and each line is rewritten and cleared to its end, then
  the rest of the screen is cleared (no blank frame in between, so no flicker); colours and
  Unicode, unless NO_COLOR is set (then ASCII without colours); the clock ticks once a second
  for the ages;
- piped: each new frame is printed under a time stamp, in ASCII, without escape codes.

Ctrl-C ends it (exit 0, the cursor shown again); the Rollout's deletion ends it with exit 3.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import signal
import sys
import threading
from typing import Any, TextIO

from . import client
from .api import LABEL_ROLLOUT
from .cli_cluster import EXIT_NOT_FOUND, EXIT_OK, ROLLOUTS, Cluster
from .cli_render import rollout_tree

PODS = client.Resource("", "v1", "pods")
WATCH_SECONDS = 55
TICK_S = 1.0
HOME, CLEAR_LINE, CLEAR_BELOW, CLEAR_SCREEN = "\x1b[H", "\x1b[K", "\x1b[J", "\x1b[2J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


class Store:
    """What the streams saw, by kind and name; `changed` is set on every change."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.rollout: dict[str, Any] | None = None
        self.deleted = False
        self.objects: dict[str, dict[str, dict[str, Any]]] = {"deployments": {}, "pods": {}, "services": {}, "events": {}}
        self.warnings: dict[str, str] = {}

    def sync(self, kind: str, items: list[dict[str, Any]]) -> None:
        with self.lock:
            if kind == "rollouts":
                self.rollout = items[0] if items else None
                self.deleted = not items
            else:
                self.objects[kind] = {str(o["metadata"].get("name")): o for o in items}
            self.warnings.pop(kind, None)
        self.changed.set()

    def event(self, kind: str, typ: str, obj: dict[str, Any]) -> None:
        with self.lock:
            if kind == "rollouts":
                self.rollout, self.deleted = (None, True) if typ == "DELETED" else (obj, False)
            elif typ == "DELETED":
                self.objects[kind].pop(str(obj["metadata"].get("name")), None)
            else:
                self.objects[kind][str(obj["metadata"].get("name"))] = obj
        self.changed.set()

    def warn(self, kind: str, message: str) -> None:
        with self.lock:
            self.warnings[kind] = message
        self.changed.set()


def follow(
    api: client.Client,
    res: client.Resource,
    namespace: str,
    kind: str,
    store: Store,
    stop: threading.Event,
    **selectors: str,
) -> None:
    """List, then watch from the list's resourceVersion; list again after 410 Gone; retry a cut stream."""
    failures = 0
    while not stop.is_set():
        try:
            answer = api.list(res, namespace, **selectors)  # type: ignore[arg-type]  # label_selector/field_selector
            store.sync(kind, list(answer.get("items") or []))
            rv = (answer.get("metadata") or {}).get("resourceVersion")
            while not stop.is_set():
                for ev in api.watch(res, namespace, resource_version=rv, timeout_seconds=WATCH_SECONDS, **selectors):  # type: ignore[arg-type]
                    obj = ev.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if ev.get("type") != "BOOKMARK":
                        store.event(kind, str(ev.get("type")), obj)
                failures = 0
        except client.Gone:
            continue
        except client.Forbidden as exc:
            store.warn(kind, f"cannot watch {res.plural}: {exc.quoted(120)}")
            return
        except client.ApiError as exc:
            failures += 1
            store.warn(kind, f"watch of {res.plural} interrupted ({exc.quoted(80)}); reconnecting")
            stop.wait(min(10.0, 0.5 * 2**failures))


def start_streams(cluster: Cluster, name: str, store: Store, stop: threading.Event) -> None:
    ns, api = cluster.namespace, cluster.client
    streams: list[tuple[client.Resource, str, dict[str, str]]] = [
        (ROLLOUTS, "rollouts", {"field_selector": f"metadata.name={name}"}),
        (client.DEPLOYMENTS, "deployments", {"label_selector": f"{LABEL_ROLLOUT}={name}"}),
        (PODS, "pods", {"label_selector": f"{LABEL_ROLLOUT}={name}"}),
        (client.SERVICES, "services", {}),
        (client.EVENTS, "events", {"field_selector": f"involvedObject.name={name},involvedObject.kind=Rollout"}),
    ]
    for res, kind, selectors in streams:
        t = threading.Thread(
            target=follow, args=(api, res, ns, kind, store, stop), kwargs=selectors, name=f"watch-{kind}", daemon=True
        )
        t.start()


def render(store: Store, name: str, args: argparse.Namespace, unicode: bool) -> str | None:
    """The frame (None until the Rollout was seen)."""
    with store.lock:
        ro = store.rollout
        if ro is None:
            return None
        deps = store.objects["deployments"]
        deployments = {c: deps.get(f"{name}-{c}") for c in ("blue", "green")}
        bg = ((ro.get("spec") or {}).get("strategy") or {}).get("blueGreen") or {}
        wanted = list(bg.get("activeServices") or []) + ([bg["previewService"]] if bg.get("previewService") else [])
        services = {s: store.objects["services"].get(s) for s in wanted}
        pods = list(store.objects["pods"].values())
        events = list(store.objects["events"].values())
        warnings = list(store.warnings.values())
    text = rollout_tree(ro, deployments, services, args.measurements, unicode=unicode, pods=pods, events=events)
    return "\n".join([text, *(f"warning: {w}" for w in warnings)])


# ---------------------------------------------------------------- the terminal

_PAINT: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(Healthy|Successful|True)\b"), "32"),  # green
    (re.compile(r"\b(Progressing|Paused|Inconclusive|Pending|ContainerCreating|Terminating)\b"), "33"),  # yellow
    (re.compile(r"\b(Aborted|Degraded|Failed|Error|False|Warning|CrashLoopBackOff|ImagePullBackOff)\b"), "31"),  # red
    (re.compile(r"✔"), "32"),
    (re.compile(r"◌"), "33"),
    (re.compile(r"✖"), "31"),
    (re.compile(r"\bblue\b"), "34"),
    (re.compile(r"\bgreen\b"), "32"),
    (re.compile(r"^(Rollout \S+)", re.M), "1"),  # bold
]


def paint(text: str) -> str:
    for pattern, sgr in _PAINT:
        text = pattern.sub(f"\x1b[{sgr}m\\g<0>\x1b[0m", text)
    return text


def terminal_size(out: TextIO) -> os.terminal_size:
    """The terminal's own size (not $COLUMNS/$LINES, which a parent shell may have left stale)."""
    try:
        return os.get_terminal_size(out.fileno())
    except (OSError, ValueError, AttributeError):
        return shutil.get_terminal_size((120, 40))


def fit(text: str, size: os.terminal_size) -> list[str]:
    """The frame cut to the terminal: lines to its width, and to its height less one (no scrolling)."""
    lines = [line[: size.columns] for line in text.splitlines()]
    if len(lines) > size.lines - 1:
        hidden = len(lines) - (size.lines - 2)
        lines = [*lines[: size.lines - 2], f"... {hidden} more lines (a taller terminal shows them)"[: size.columns]]
    return lines


class Screen:
    """A terminal redrawn in place, or a pipe that gets each frame once."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        plain = "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb"
        enc = (getattr(out, "encoding", None) or "").lower().replace("-", "")
        self.colour = self.tty and not plain
        self.unicode = self.colour and enc in ("utf8", "utf16", "utf32")
        self.last: str | None = None

    def __enter__(self) -> Screen:
        if self.tty:
            self.out.write(HIDE_CURSOR + CLEAR_SCREEN + HOME)
            self.out.flush()
        return self

    def __exit__(self, *_: object) -> None:
        if self.tty:
            self.out.write(SHOW_CURSOR)
            self.out.flush()

    def show(self, frame: str) -> None:
        if frame == self.last:
            return  # an unchanged frame is not written at all
        prefix = "" if self.last is None else "\n"
        self.last = frame
        if not self.tty:
            self.out.write(f"{prefix}[{dt.datetime.now():%H:%M:%S}]\n{frame}\n")
        else:
            lines = fit(frame, terminal_size(self.out))
            body = (paint("\n".join(lines)) if self.colour else "\n".join(lines)).split("\n")
            self.out.write(HOME + "".join(line + CLEAR_LINE + "\n" for line in body) + CLEAR_BELOW)
        self.out.flush()

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def watch(cluster: Cluster, args: argparse.Namespace, out: TextIO | None = None, end_process: bool = False) -> int:
    """Draw until Ctrl-C (exit 0) or the Rollout's deletion (exit 3). With `end_process` (the console
    script), the process ends right there: the stream threads sit in blocking socket reads, and an
    interpreter shutting down around them need not wait for them."""
    quit_ = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        quit_.set()  # no KeyboardInterrupt in the middle of a lock or a write: the loop sees it within a tick

    # Ctrl-C ends it even when started with SIGINT ignored (a parent that ran it in the background)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        code = _watch(cluster, args, out, quit_)
    finally:
        signal.signal(signal.SIGINT, previous)
    if end_process:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _watch(cluster: Cluster, args: argparse.Namespace, out: TextIO | None, quit_: threading.Event) -> int:
    cluster.get_rollout(args.name)  # not found: exit 3 at once, with kubectl's message
    store, stop = Store(), threading.Event()
    start_streams(cluster, args.name, store, stop)
    with Screen(out or sys.stdout) as screen:
        try:
            while not quit_.is_set():
                woke = store.changed.wait(TICK_S)
                store.changed.clear()
                if store.deleted:
                    screen.say(f"rollout {args.name} was deleted")
                    return EXIT_NOT_FOUND
                if not woke and not screen.tty:
                    continue  # the clock ticks only on a terminal
                frame = render(store, args.name, args, screen.unicode)
                if frame is not None:
                    screen.show(frame)
            return EXIT_OK
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            stop.set()
