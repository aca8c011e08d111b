"""Text views of Rollouts for `kubectl teal get` and `list` (pure functions of dicts)."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .api import ANNOTATION_REVISION, COLORS, LABEL_COLOR


def _utf8() -> bool:
    enc = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return enc in ("utf8", "utf16", "utf32")


class Glyphs:
    def __init__(self, unicode: bool):
        if unicode:
            self.tee, self.last, self.pipe, self.space, self.arrow, self.dot = "├─ ", "└─ ", "│  ", "   ", "→", "·"
            self.ok, self.wait, self.bad, self.le, self.ge = "✔", "◌", "✖", "≤", "≥"
        else:
            self.tee, self.last, self.pipe, self.space, self.arrow, self.dot = "|- ", "`- ", "|  ", "   ", "->", "-"
            self.ok, self.wait, self.bad, self.le, self.ge = "+", ".", "x", "<=", ">="


def parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def age(value: Any, now: dt.datetime | None = None) -> str:
    """'5s', '3m', '2h', '4d' like kubectl."""
    t = parse_time(value)
    if t is None:
        return "-"
    now = now or dt.datetime.now(dt.UTC)
    s = max(0, int((now - t).total_seconds()))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def fmt_number(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def weights_text(weights: Mapping[str, Any] | None) -> str:
    if not weights:
        return "-"
    return "/".join(f"{c}:{weights[c]}" for c in COLORS if c in weights)


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded like kubectl's (3 spaces between columns)."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)]
        out.append("   ".join(cells).rstrip())
    return "\n".join(out)


def list_table(
    rollouts: Sequence[Mapping[str, Any]], all_namespaces: bool = False, wide: bool = False, now: dt.datetime | None = None
) -> str:
    header = ["NAME", "PHASE", "ACTIVE", "PREVIEW", "STABLE", "CURRENT", "STEP", "WEIGHTS", "HELD", "AGE"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    if wide:
        header.append("MESSAGE")
    rows = [header]
    for ro in rollouts:
        meta, st = ro.get("metadata") or {}, ro.get("status") or {}
        steps = ((ro.get("spec") or {}).get("strategy") or {}).get("blueGreen", {}).get("steps") or []
        step = f"{st['currentStep']}/{len(steps)}" if st.get("currentStep") else "-"
        row = [
            meta.get("name", "?"),
            st.get("phase") or "Unknown",
            st.get("activeColor") or "-",
            st.get("previewColor") or "-",
            str(st.get("stableRevision") or "-"),
            str(st.get("currentRevision") or "-"),
            step,
            weights_text(st.get("weights")),
            _held_text(st, now),
            age(meta.get("creationTimestamp"), now),
        ]
        if all_namespaces:
            row.insert(0, meta.get("namespace", "?"))
        if wide:
            row.append(st.get("message") or "")
        rows.append(row)
    return table(rows)


def _ready(dep: Mapping[str, Any] | None) -> str:
    if not dep:
        return "missing"
    spec, st = dep.get("spec") or {}, dep.get("status") or {}
    return f"{int(st.get('readyReplicas') or 0)}/{int(spec.get('replicas', 1) or 0)} ready"


def _images(dep_or_template: Mapping[str, Any] | None) -> str:
    if not dep_or_template:
        return ""
    tmpl = (
        dep_or_template.get("spec", {}).get("template") if "template" in (dep_or_template.get("spec") or {}) else dep_or_template
    )
    containers = ((tmpl or {}).get("spec") or {}).get("containers") or []
    return ", ".join(str(c.get("image", "?")) for c in containers)


def _step_text(spec_steps: Sequence[Mapping[str, Any]], n: int) -> str:
    if not 1 <= n <= len(spec_steps):
        return ""
    s = spec_steps[n - 1]
    if "setWeight" in s:
        return f"setWeight {s['setWeight']}"
    dur = (s.get("pause") or {}).get("duration")
    return f"pause {dur}" if dur else "pause until promoted"


def _router_text(bg: Mapping[str, Any]) -> str:
    tr = bg.get("trafficRouting") or {}
    if tr.get("gatewayAPI"):
        return f"weighted via Gateway API httproute/{tr['gatewayAPI'].get('httpRoute', '?')}"
    if tr.get("nginx"):
        return f"weighted via ingress-nginx ingress/{tr['nginx'].get('ingress', '?')}"
    if tr.get("istio"):
        routes = tr["istio"].get("routes") or []
        extra = f" routes {','.join(routes)}" if routes else ""
        return f"weighted via Istio virtualservice/{tr['istio'].get('virtualService', '?')}{extra}"
    return "atomic switch of Service selectors"


Child = str | tuple[str, list[str]]  # a line, or a line with lines under it (a colour and its pods)
Section = tuple[str, list[Child]]  # (title line, children)


def _held_text(st: Mapping[str, Any], now: dt.datetime | None) -> str:
    """HELD: for how long a release window or a freeze has held the release ("yes" before it starts)."""
    if st.get("reason") != "HeldByPolicy":
        return "-"
    since = (st.get("release") or {}).get("heldSince")
    return age(since, now) if since else "yes"


def rollout_tree(
    ro: Mapping[str, Any],
    deployments: Mapping[str, Mapping[str, Any] | None],
    services: Mapping[str, Mapping[str, Any] | None],
    measurements: int = 5,
    now: dt.datetime | None = None,
    unicode: bool | None = None,
    pods: Sequence[Mapping[str, Any]] | None = None,
    events: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The readable tree of `kubectl teal get`; with `pods`, each colour lists its pods and their
    readiness, and with `events`, the last Events of the Rollout close it (the --watch view)."""
    g = Glyphs(_utf8() if unicode is None else unicode)
    meta, spec, st = ro.get("metadata") or {}, ro.get("spec") or {}, ro.get("status") or {}
    bg = (spec.get("strategy") or {}).get("blueGreen") or {}
    sections = [_phase_section(meta, spec, st), _revision_section(st, g)]
    sections += _strategy_sections(spec, bg, st, g)
    sections.append(_colour_section(meta.get("name", "?"), st, deployments, pods, g, now))
    sections += _service_sections(bg, services, g)
    sections += _analysis_sections(st, measurements, thresholds(spec), g)
    sections += _request_sections(st)
    sections += _held_sections(st, now)
    sections += _condition_sections(st, now)
    if events is not None:
        sections += _event_sections(events, now)
    return _draw(f"Rollout {meta.get('namespace', '?')}/{meta.get('name', '?')}", sections, g)


def _lines(text: str) -> list[Child]:
    return list(text.splitlines())


def _draw(head: str, sections: Sequence[Section], g: Glyphs) -> str:
    lines = [head]
    for i, (title, children) in enumerate(sections):
        last = i == len(sections) - 1
        lines.append((g.last if last else g.tee) + title)
        lines += _draw_children(g.space if last else g.pipe, children, g)
    return "\n".join(lines)


def _draw_children(prefix: str, children: Sequence[Child], g: Glyphs) -> list[str]:
    lines = []
    for j, child in enumerate(children):
        last = j == len(children) - 1
        text, grandchildren = (child, []) if isinstance(child, str) else child
        lines.append(prefix + (g.last if last else g.tee) + text)
        lines += _draw_children(prefix + (g.space if last else g.pipe), grandchildren, g)
    return lines


def _phase_section(meta: Mapping[str, Any], spec: Mapping[str, Any], st: Mapping[str, Any]) -> Section:
    phase = st.get("phase") or "Unknown"
    reason = f" ({st['reason']})" if st.get("reason") and st.get("reason") != phase else ""
    stale = ""
    if st.get("observedGeneration") is not None and st.get("observedGeneration") != meta.get("generation"):
        stale = f"  [status is for generation {st.get('observedGeneration')}, spec is {meta.get('generation')}]"
    if not st:
        stale = "  [no status yet: is the Teal operator running?]"
    children = [st["message"]] if st.get("message") else []
    if spec.get("paused"):
        children.append("spec.paused is true (kubectl teal resume)")
    return (f"Phase      {phase}{reason}{stale}", children)


def _revision_section(st: Mapping[str, Any], g: Glyphs) -> Section:
    rev = f"current {st.get('currentRevision') or '-'}"
    if st.get("currentHash"):
        rev += f" ({st['currentHash']})"
    rev += f" {g.dot} stable {st.get('stableRevision') or '-'}"
    if st.get("stableHash"):
        rev += f" ({st['stableHash']})"
    if st.get("stableColor"):
        rev += f" on {st['stableColor']}"
    return (f"Revisions  {rev}", [])


def _strategy_sections(spec: Mapping[str, Any], bg: Mapping[str, Any], st: Mapping[str, Any], g: Glyphs) -> list[Section]:
    steps = bg.get("steps") or []
    strat = [_router_text(bg), "autoPromote" if bg.get("autoPromote", True) else "manual promote"]
    if steps:
        strat.append(f"{len(steps)} steps")
    if spec.get("workloadRef"):
        strat.append(f"template from deployment/{spec['workloadRef'].get('name', '?')}")
    out: list[Section] = [(f"Strategy   {f' {g.dot} '.join(strat)}", [])]
    if st.get("currentStep"):
        n = int(st["currentStep"])
        out.append((f"Step       {n}/{len(steps)} {_step_text(steps, n)}".rstrip(), []))
    if st.get("weights"):
        w = st["weights"]
        out.append((f"Weights    {f' {g.dot} '.join(f'{c} {w[c]}%' for c in COLORS if c in w)}", []))
    return out


def _roles(st: Mapping[str, Any], c: str) -> list[str]:
    roles = [
        role
        for role, key in (("active", "activeColor"), ("stable", "stableColor"), ("preview", "previewColor"))
        if st.get(key) == c
    ]
    if (st.get("scaleDown") or {}).get("color") == c:
        roles.append(f"scale-down at {st['scaleDown'].get('at', '?')}")
    return roles


def _colour_section(
    name: str,
    st: Mapping[str, Any],
    deployments: Mapping[str, Mapping[str, Any] | None],
    pods: Sequence[Mapping[str, Any]] | None = None,
    g: Glyphs | None = None,
    now: dt.datetime | None = None,
) -> Section:
    rows = _colour_rows(name, st, deployments)
    lines = table(rows).splitlines()
    if pods is None:
        return ("Colours", _lines(table(rows)))
    g = g or Glyphs(False)
    children: list[Child] = []
    for c, line in zip(COLORS, lines, strict=True):
        mine = sorted((p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(LABEL_COLOR) == c), key=_pod_key)
        children.append((line, table([pod_row(p, g, now) for p in mine]).splitlines() if mine else ["no pods"]))
    return ("Colours", children)


def _pod_key(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", ""))


def pod_state(pod: Mapping[str, Any]) -> tuple[str, bool]:
    """(what kubectl get pods says in STATUS, ready)."""
    meta, st = pod.get("metadata") or {}, pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
    if meta.get("deletionTimestamp"):
        return "Terminating", False
    for cs in st.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return str(waiting["reason"]), ready
    return str(st.get("phase") or "Pending"), ready


def pod_row(pod: Mapping[str, Any], g: Glyphs, now: dt.datetime | None = None) -> list[str]:
    meta, spec, st = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    state, ready = pod_state(pod)
    statuses = st.get("containerStatuses") or []
    n_ready = sum(1 for cs in statuses if cs.get("ready"))
    restarts = sum(int(cs.get("restartCount") or 0) for cs in statuses)
    bad = state in ("Failed", "Terminating") or state.startswith(("Err", "CrashLoop", "ImagePull", "Invalid"))
    icon = g.ok if ready else (g.bad if bad else g.wait)
    return [
        f"{icon} {meta.get('name', '?')}",
        state,
        f"{n_ready}/{len(spec.get('containers') or statuses)} ready",
        f"{restarts} restarts",
        age(meta.get("creationTimestamp"), now),
    ]


def _colour_rows(name: str, st: Mapping[str, Any], deployments: Mapping[str, Mapping[str, Any] | None]) -> list[list[str]]:
    rows = []
    for c in COLORS:
        dep = deployments.get(c)
        ann = ((dep or {}).get("metadata") or {}).get("annotations") or {}
        revision = ann.get(ANNOTATION_REVISION)
        rows.append(
            [
                c,
                ", ".join(_roles(st, c)) or "idle",
                f"revision {revision}" if revision else "revision -",
                _ready(dep),
                f"deployment/{name}-{c}",
                _images(dep) if dep else "",
            ]
        )
    return rows


def _service_sections(bg: Mapping[str, Any], services: Mapping[str, Mapping[str, Any] | None], g: Glyphs) -> list[Section]:
    rows = []
    preview = [bg["previewService"]] if bg.get("previewService") else []
    for role, names in (("active", bg.get("activeServices") or []), ("preview", preview)):
        for s in names:
            svc = services.get(s)
            if svc is None:
                rows.append([s, role, "missing"])
                continue
            sel = ((svc.get("spec") or {}).get("selector") or {}).get("teal.dev/color")
            rows.append([s, role, f"{g.arrow} {sel}" if sel else f"{g.arrow} (no teal.dev/color yet)"])
    return [("Services", _lines(table(rows)))] if rows else []


def thresholds(spec: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """metric name -> its thresholdRange, for the metrics the spec defines inline."""
    metrics = ((spec.get("analysis") or {}).get("metrics")) or []
    return {
        str(m["name"]): m["thresholdRange"]
        for m in metrics
        if isinstance(m, Mapping) and m.get("name") and m.get("thresholdRange")
    }


def _against(bounds: Mapping[str, Any] | None, g: Glyphs) -> str:
    if not bounds:
        return ""
    parts = []
    if bounds.get("min") is not None:
        parts.append(f"{g.ge} {fmt_number(bounds['min'])}")
    if bounds.get("max") is not None:
        parts.append(f"{g.le} {fmt_number(bounds['max'])}")
    return f" (want {' and '.join(parts)})" if parts else ""


def _measurement_row(
    m: Mapping[str, Any], bounds: Mapping[str, Mapping[str, Any]] | None = None, g: Glyphs | None = None
) -> list[str]:
    t = parse_time(m.get("at"))
    value = fmt_number(m.get("value"))
    if m.get("baseline") is not None:
        value += f" (baseline {fmt_number(m.get('baseline'))})"
    value += _against((bounds or {}).get(str(m.get("metric"))), g or Glyphs(False))
    return [
        t.strftime("%H:%M:%S") if t else "-",
        str(m.get("metric", "?")),
        str(m.get("color") or ""),
        value,
        str(m.get("verdict") or "") + (" (dry run)" if m.get("dryRun") else ""),
        str(m.get("phase") or ""),
        str(m.get("message") or ""),
    ]


def _analysis_sections(
    st: Mapping[str, Any], measurements: int, bounds: Mapping[str, Mapping[str, Any]] | None = None, g: Glyphs | None = None
) -> list[Section]:
    out: list[Section] = []
    analysis = st.get("analysis") or []
    if analysis:
        shown = list(analysis)[-measurements:] if measurements > 0 else []
        rows = [_measurement_row(m, bounds, g) for m in shown]
        title = f"Analysis   last {len(shown)} of {len(analysis)} measurements"
        out.append((title, _lines(table(rows)) if rows else []))
    run = st.get("analysisRun")
    if isinstance(run, Mapping) and run:
        desc = ", ".join(f"{k}={v}" for k, v in run.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool))
        if desc:
            out.append((f"Analysis run  {desc}", []))
    return out


def _request_sections(st: Mapping[str, Any]) -> list[Section]:
    out: list[Section] = []
    abort = st.get("abort")
    if abort:
        detail = f": {abort['message']}" if abort.get("message") else ""
        out.append((f"Abort      revision {abort.get('revision', '?')}: {abort.get('reason', '?')}{detail}", []))
    promote = st.get("promote")
    if promote:
        what = "full" if promote.get("full") else (f"step {promote['step']}" if promote.get("step") else "current step")
        out.append((f"Promote    revision {promote.get('revision', '?')} ({what}) requested", []))
    return out


def _held_sections(st: Mapping[str, Any], now: dt.datetime | None) -> list[Section]:
    """Held: which policy, window or freeze holds the release, when it opens, since when."""
    release = st.get("release") or {}
    children: list[Child] = []
    if st.get("reason") == "HeldByPolicy":
        msg = str(st.get("message") or "")
        why = msg.split(": ", 1)[1] if ": " in msg else msg  # after "revision 2 on green waits before promotion"
        if release.get("heldSince"):
            children.append(f"since {release['heldSince']} ({age(release['heldSince'], now)})")
        if release.get("heldSeconds"):
            children.append(f"earlier holds of this release: {release['heldSeconds']}s")
        return [(f"Held       {why}", children)]
    if release.get("heldSeconds"):
        return [(f"Held       {release['heldSeconds']}s in all (not counted as release time)", [])]
    return []


def _condition_sections(st: Mapping[str, Any], now: dt.datetime | None) -> list[Section]:
    conds = st.get("conditions") or []
    if not conds:
        return []
    rows = [
        [
            str(c.get("type", "?")),
            str(c.get("status", "?")),
            str(c.get("reason") or ""),
            age(c.get("lastTransitionTime"), now),
            str(c.get("message") or ""),
        ]
        for c in conds
    ]
    return [("Conditions", _lines(table(rows)))]


def event_time(ev: Mapping[str, Any]) -> str:
    return str(ev.get("lastTimestamp") or ev.get("eventTime") or (ev.get("metadata") or {}).get("creationTimestamp") or "")


def _event_sections(events: Sequence[Mapping[str, Any]], now: dt.datetime | None, last: int = 5) -> list[Section]:
    """The Rollout's last Events, oldest first, like the end of `kubectl describe`."""
    if not events:
        return [("Events     none yet", [])]
    shown = sorted(events, key=event_time)[-last:]
    rows = [
        [
            age(event_time(e), now),
            str(e.get("type") or ""),
            str(e.get("reason") or ""),
            " ".join(str(e.get("message") or "").split()),
        ]
        for e in shown
    ]
    return [(f"Events     last {len(shown)} of {len(events)}", _lines(table(rows)))]
