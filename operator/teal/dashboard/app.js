// Teal dashboard: the page of `kubectl teal dashboard`. Plain JavaScript, no framework, no build
// step, nothing loaded from anywhere but the dashboard itself. The server pushes a snapshot of
// every Rollout, then each Rollout's new view when it changes (Server-Sent Events, /api/events).
"use strict";

const COLORS = ["blue", "green"];
const SVG_NS = "http://www.w3.org/2000/svg";
const tokenMeta = document.querySelector('meta[name="teal-token"]');
const TOKEN = tokenMeta ? tokenMeta.content : null;

const state = {
  rollouts: new Map(), // "ns/name" -> view
  selected: null,
  errors: [],
  synced: false,
  armed: null, // "ns/name" whose abort button waits for a second click
  notice: null, // {key, ok, text} of the last action
};

// ------------------------------------------------------------------ DOM helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(node, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const keyOf = (v) => `${v.namespace}/${v.name}`;
const dash = (v) => (v === null || v === undefined || v === "" ? "–" : String(v));

function fmtNumber(v) {
  if (v === null || v === undefined) return "–";
  if (Number.isInteger(v)) return String(v);
  return Number(v).toPrecision(4).replace(/\.?0+$/, "").replace(/\.?0+e/, "e");
}

function fmtTime(iso) {
  if (!iso) return "–";
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? String(iso) : t.toLocaleTimeString([], { hour12: false });
}

function fmtWhen(iso) {
  if (!iso) return "–";
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? String(iso) : t.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  const n = Number(s);
  if (n < 120) return `${n.toFixed(n < 10 ? 1 : 0)}s`;
  if (n < 7200) return `${(n / 60).toFixed(0)}m`;
  return `${(n / 3600).toFixed(1)}h`;
}

function weightsText(w) {
  const parts = COLORS.filter((c) => w && w[c] !== undefined).map((c) => `${c} ${w[c]}%`);
  return parts.length ? parts.join(" · ") : "–";
}

function sharesText(w) {
  // the list's short form: the colours that get traffic
  const parts = COLORS.filter((c) => w && Number(w[c]) > 0).map((c) => `${c} ${w[c]}%`);
  return parts.length ? parts.join(" · ") : "–";
}

function phaseBadge(phase, reason) {
  const p = phase || "Unknown";
  return el("span", { class: `phase phase-${p.toLowerCase()}`, title: reason || p, "data-phase": p, text: p });
}

function colorChip(c) {
  return c ? el("span", { class: `chip chip-${c}`, text: c }) : el("span", { class: "muted", text: "–" });
}

// ------------------------------------------------------------------ the list

function renderList() {
  const body = document.querySelector("#rollouts tbody");
  const views = [...state.rollouts.values()].sort((a, b) => keyOf(a).localeCompare(keyOf(b)));
  body.replaceChildren(
    ...views.map((v) => {
      const key = keyOf(v);
      const rev = v.currentRevision === v.stableRevision ? dash(v.stableRevision) : `${dash(v.stableRevision)} → ${dash(v.currentRevision)}`;
      return el(
        "tr",
        {
          class: key === state.selected ? "selected" : null,
          "data-rollout": key,
          onclick: () => select(key),
        },
        el("td", { text: v.namespace }),
        el("td", { class: "name" }, el("a", { href: `#${key}`, text: v.name })),
        el("td", { class: "phase-cell" }, phaseBadge(v.phase, v.reason)),
        el("td", { class: "active" }, colorChip(v.activeColor)),
        el("td", { class: "revision", text: rev }),
        el("td", { class: "weights" }, weightBar(v.weights), el("span", { class: "weights-text", text: sharesText(v.weights) })),
      );
    }),
  );
  document.getElementById("empty").hidden = !(state.synced && views.length === 0);
}

function weightBar(w) {
  const bar = svg("svg", { class: "wbar", width: 60, height: 8, viewBox: "0 0 100 8", "aria-hidden": "true" });
  let x = 0;
  for (const c of COLORS) {
    const share = w && w[c] ? Number(w[c]) : 0;
    if (share > 0) bar.append(svg("rect", { x, y: 0, width: share, height: 8, class: `fill-${c}` }));
    x += share;
  }
  if (x === 0) bar.append(svg("rect", { x: 0, y: 0, width: 100, height: 8, class: "fill-none" }));
  return bar;
}

// ------------------------------------------------------------------ one Rollout

function renderDetail() {
  const pane = document.getElementById("detail");
  const v = state.selected ? state.rollouts.get(state.selected) : null;
  if (!v) {
    pane.replaceChildren(el("p", { class: "muted", text: state.selected ? `${state.selected}: not found (deleted?)` : "Select a Rollout." }));
    return;
  }
  pane.replaceChildren(
    el(
      "div",
      { class: "detail", "data-detail": keyOf(v) },
      headerSection(v),
      card("Colours", colorsSection(v)),
      card("Traffic weights", weightsChart(v)),
      card("Analysis", analysisSection(v)),
      card("Release history", historySection(v)),
      card("Events", eventsSection(v)),
    ),
  );
}

function card(title, ...body) {
  return el("section", { class: "card", "data-card": title }, el("h3", { text: title }), ...body);
}

function headerSection(v) {
  const facts = [
    ["Revision", `current ${dash(v.currentRevision)} · stable ${dash(v.stableRevision)}`],
    ["Strategy", strategyText(v)],
  ];
  if (v.steps) facts.push(["Step", `${dash(v.step)}/${v.steps}`]);
  if (v.release) facts.push(["Release", `revision ${dash(v.release.revision)} on ${dash(v.release.color)} · ${dash(v.release.stage)}`]);
  if (v.analysisMessage) facts.push(["Analysis run", v.analysisMessage]);
  return el(
    "div",
    { class: "head" },
    el("h2", {}, el("span", { class: "muted", text: `${v.namespace}/` }), v.name, " ", phaseBadge(v.phase, v.reason), v.paused ? el("span", { class: "tag", text: "spec.paused" }) : null),
    v.message ? el("p", { class: "message", text: v.message }) : null,
    el("dl", { class: "facts" }, facts.map(([k, text]) => [el("dt", { text: k }), el("dd", { text })])),
    actionsBar(v),
  );
}

function strategyText(v) {
  const s = v.strategy || {};
  const how = s.router ? `weighted via ${s.router}` : "selector switch";
  return `${how} · ${s.autoPromote ? "autoPromote" : "manual promote"} · services ${(s.activeServices || []).join(", ") || "–"}${s.previewService ? ` (preview ${s.previewService})` : ""}`;
}

function actionsBar(v) {
  if (!TOKEN) return null; // read-only: no buttons at all
  const key = keyOf(v);
  const armed = state.armed === key;
  const notice = state.notice && state.notice.key === key ? state.notice : null;
  return el(
    "div",
    { class: "actions" },
    el("button", { type: "button", class: "btn promote", "data-action": "promote", disabled: !v.inRelease, onclick: () => act(v, "promote") }, "Promote"),
    el(
      "button",
      { type: "button", class: `btn abort${armed ? " armed" : ""}`, "data-action": "abort", disabled: !v.inRelease, onclick: () => (armed ? act(v, "abort") : arm(key)) },
      armed ? "Confirm abort" : "Abort",
    ),
    notice ? el("span", { class: `notice ${notice.ok ? "ok" : "bad"}`, "data-notice": notice.ok ? "ok" : "error", text: notice.text }) : null,
  );
}

function arm(key) {
  state.armed = key;
  renderDetail();
  setTimeout(() => {
    if (state.armed === key) {
      state.armed = null;
      renderDetail();
    }
  }, 5000);
}

async function act(v, action) {
  state.armed = null;
  const key = keyOf(v);
  let ok = false;
  let text = "";
  try {
    const resp = await fetch(`api/rollouts/${encodeURIComponent(v.namespace)}/${encodeURIComponent(v.name)}/${action}`, {
      method: "POST",
      headers: { "X-Teal-Token": TOKEN, "Content-Type": "application/json" },
      body: "{}",
    });
    const answer = await resp.json();
    ok = resp.ok && answer.ok;
    text = answer.message || answer.error || `${resp.status}`;
  } catch (e) {
    text = `${action} failed: ${e}`;
  }
  state.notice = { key, ok, text };
  renderDetail();
}

function colorsSection(v) {
  return el(
    "div",
    { class: "colors" },
    (v.colors || []).map((c) =>
      el(
        "div",
        { class: `color color-${c.color}${c.roles.includes("active") ? " is-active" : ""}`, "data-color": c.color },
        el("div", { class: "color-head" }, colorChip(c.color), el("span", { class: "roles", text: c.roles.length ? c.roles.join(" · ") : "idle" })),
        el(
          "dl",
          { class: "facts" },
          el("dt", { text: "revision" }),
          el("dd", { class: "rev", text: dash(c.revision) }),
          el("dt", { text: "ready" }),
          el("dd", { class: "ready", text: c.exists ? `${c.ready}/${c.desired}` : "no Deployment" }),
          el("dt", { text: "image" }),
          el("dd", { class: "image", text: c.images.join(", ") || "–" }),
          el("dt", { text: "weight" }),
          el("dd", { class: "weight", text: c.weight === undefined || c.weight === null ? "–" : `${c.weight}%` }),
          c.scaleDownAt ? [el("dt", { text: "scale-down" }), el("dd", { text: fmtWhen(c.scaleDownAt) })] : null,
        ),
      ),
    ),
  );
}

// ------------------------------------------------------------------ charts (inline SVG)

const W = 800;
const H = 130;
const PAD = { l: 44, r: 10, t: 8, b: 20 };

function axis(chart, yTicks, yLabel, t0, t1) {
  for (const [y, text] of yTicks) {
    chart.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, class: "grid" }));
    chart.append(svg("text", { x: PAD.l - 4, y: y + 3, class: "tick", "text-anchor": "end" }, text));
  }
  chart.append(svg("text", { x: PAD.l, y: H - 4, class: "tick" }, fmtTime(t0)));
  chart.append(svg("text", { x: W - PAD.r, y: H - 4, class: "tick", "text-anchor": "end" }, fmtTime(t1)));
  if (yLabel) chart.append(svg("title", {}, yLabel));
}

function weightsChart(v) {
  const points = (v.weightHistory || []).filter((p) => p.weights && Object.keys(p.weights).length);
  if (!points.length) return el("p", { class: "muted", text: "No traffic yet." });
  const t0 = Date.parse(points[0].at);
  const t1 = Math.max(Date.now(), t0 + 1000);
  const x = (t) => PAD.l + ((t - t0) / (t1 - t0)) * (W - PAD.l - PAD.r);
  const y = (pct) => PAD.t + (1 - pct / 100) * (H - PAD.t - PAD.b);
  const chart = svg("svg", { class: "chart weights-chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "traffic weights over time" });
  axis(chart, [[y(0), "0%"], [y(50), "50%"], [y(100), "100%"]], null, t0, t1);
  points.forEach((p, i) => {
    const start = Date.parse(p.at);
    const end = i + 1 < points.length ? Date.parse(points[i + 1].at) : t1;
    let base = 0;
    for (const c of COLORS) {
      const share = Number(p.weights[c] || 0);
      if (share > 0) {
        chart.append(
          svg(
            "rect",
            { x: x(start), y: y(base + share), width: Math.max(1, x(end) - x(start)), height: y(base) - y(base + share), class: `fill-${c}` },
            svg("title", {}, `${fmtTime(p.at)}: ${c} ${share}% (revision ${dash(p.revision)}, ${dash(p.phase)})`),
          ),
        );
      }
      base += share;
    }
  });
  const last = points[points.length - 1];
  return el("div", {}, chart, el("p", { class: "legend", text: `now: ${weightsText(last.weights)} · ${points.length} change(s) since the dashboard started` }));
}

function thresholdText(t) {
  if (!t) return "judged by its AnalysisTemplate";
  const parts = [];
  if (t.min !== null && t.min !== undefined) parts.push(`min ${fmtNumber(t.min)}`);
  if (t.max !== null && t.max !== undefined) parts.push(`max ${fmtNumber(t.max)}`);
  if (t.maxRatio !== undefined) parts.push(`≤ baseline × ${fmtNumber(t.maxRatio)} + ${fmtNumber(t.floor || 0)}`);
  if (t.successCondition) parts.push(`success: ${t.successCondition}`);
  if (t.failureCondition) parts.push(`failure: ${t.failureCondition}`);
  if (t.dryRun) parts.push("dry run");
  return parts.join(" · ") || "–";
}

function analysisSection(v) {
  if (!v.analysis || !v.analysis.length) return el("p", { class: "muted", text: "No measurements." });
  return el("div", { class: "metrics" }, v.analysis.map(metricChart));
}

function metricChart(m) {
  const pts = m.points.filter((p) => p.value !== null && p.value !== undefined);
  const t = m.thresholds || {};
  const lines = [t.min, t.max].filter((n) => n !== null && n !== undefined).map(Number);
  const values = pts.map((p) => Number(p.value)).concat(lines, pts.map((p) => p.limit).filter((n) => n !== null && n !== undefined));
  const last = m.points[m.points.length - 1];
  const head = el(
    "div",
    { class: "metric-head" },
    el("strong", { text: m.metric }),
    el("span", { class: "muted", text: ` ${thresholdText(m.thresholds)}` }),
    m.run && m.run.phase ? el("span", { class: `verdict v-${String(m.run.phase).toLowerCase()}`, text: `${m.run.key}: ${m.run.phase}` }) : null,
  );
  const box = el("div", { class: "metric", "data-metric": m.metric }, head);
  if (!values.length) {
    box.append(el("p", { class: "muted", text: "no values yet" }));
    return box;
  }
  let lo = Math.min(0, ...values);
  let hi = Math.max(...values);
  if (hi === lo) hi = lo + 1;
  hi += (hi - lo) * 0.1;
  const times = m.points.map((p) => Date.parse(p.at)).filter((n) => !Number.isNaN(n));
  const t0 = Math.min(...times);
  const t1 = Math.max(...times, t0 + 1000);
  const x = (tt) => PAD.l + ((tt - t0) / (t1 - t0)) * (W - PAD.l - PAD.r);
  const y = (val) => PAD.t + (1 - (val - lo) / (hi - lo)) * (H - PAD.t - PAD.b);
  const chart = svg("svg", { class: "chart metric-chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${m.metric} against its thresholds` });
  axis(chart, [[y(lo), fmtNumber(lo)], [y(hi), fmtNumber(hi)]], null, t0, t1);
  for (const n of lines) {
    const which = n === Number(t.max) ? "max" : "min";
    chart.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: y(n), y2: y(n), class: "threshold" }, svg("title", {}, `${which} ${fmtNumber(n)}`)));
    chart.append(svg("text", { x: W - PAD.r, y: y(n) - 3, class: "threshold-label", "text-anchor": "end" }, `${which} ${fmtNumber(n)}`));
  }
  if (pts.length > 1) chart.append(svg("polyline", { class: "series", points: pts.map((p) => `${x(Date.parse(p.at))},${y(Number(p.value))}`).join(" ") }));
  for (const p of m.points) {
    const px = x(Date.parse(p.at));
    if (p.limit !== null && p.limit !== undefined) chart.append(svg("line", { x1: px - 5, x2: px + 5, y1: y(p.limit), y2: y(p.limit), class: "threshold" }));
    if (p.value === null || p.value === undefined) continue;
    chart.append(
      svg(
        "circle",
        { cx: px, cy: y(Number(p.value)), r: 3.5, class: `dot v-${String(p.verdict || "").toLowerCase()}` },
        svg("title", {}, `${fmtTime(p.at)} ${p.color || ""} ${fmtNumber(p.value)}: ${p.verdict || ""}${p.message ? ` — ${p.message}` : ""}`),
      ),
    );
  }
  box.append(chart);
  if (last) box.append(el("p", { class: "legend", text: `last: ${fmtNumber(last.value)} ${last.verdict || ""} on ${last.color || "–"} at ${fmtTime(last.at)}` }));
  return box;
}

// ------------------------------------------------------------------ history and events

const STAT_LABELS = [
  ["releases", "releases"],
  ["promoted", "promoted"],
  ["aborted", "aborted"],
  ["rollbacks", "rollbacks"],
  ["retries", "retries"],
  ["superseded", "superseded"],
  ["lastReleaseSeconds", "last release took"],
  ["heldSeconds", "held by policies"],
];

function historySection(v) {
  const stats = v.stats || {};
  const counters = el(
    "dl",
    { class: "stats" },
    STAT_LABELS.filter(([k]) => stats[k] !== undefined).map(([k, label]) => [
      el("dt", { text: label }),
      el("dd", { "data-stat": k, text: k.endsWith("Seconds") ? fmtSeconds(stats[k]) : String(stats[k]) }),
    ]),
  );
  const outcomes = Object.entries(stats.outcomes || {});
  const totals = outcomes.length
    ? el(
        "p",
        { class: "totals" },
        "all time: ",
        outcomes.map(([o, n], i) => [i ? " · " : null, el("span", { class: `outcome o-${o.toLowerCase()}`, "data-outcome": o, text: `${o} ${n}` })]),
      )
    : null;
  if (!v.history) return el("div", {}, counters, totals);
  if (!v.history.length) return el("div", {}, counters, totals, el("p", { class: "muted", text: "No finished release yet." }));
  const rows = v.history.map((h) =>
    el(
      "tr",
      { "data-revision": h.revision },
      el("td", { text: dash(h.revision) }),
      el("td", {}, el("span", { class: `outcome o-${String(h.outcome || "").toLowerCase()}`, text: dash(h.outcome) })),
      el("td", { text: fmtWhen(h.startedAt) }),
      el("td", { text: fmtWhen(h.finishedAt) }),
      el("td", { text: (h.images || []).join(", ") || "–" }),
      el("td", { class: "msg", text: whyText(h) }),
    ),
  );
  const table = el(
    "table",
    { class: "history" },
    el("thead", {}, el("tr", {}, ["Revision", "Outcome", "Started", "Finished", "Images", "Why"].map((t) => el("th", { text: t })))),
    el("tbody", {}, rows),
  );
  return el("div", {}, counters, totals, table);
}

function whyText(h) {
  const parts = [[h.reason, h.message].filter(Boolean).join(": ")];
  if (h.restoreSeconds !== undefined && h.restoreSeconds !== null) parts.push(`restored in ${fmtSeconds(h.restoreSeconds)}`);
  if (h.leadTimeSeconds !== undefined && h.leadTimeSeconds !== null) parts.push(`lead time ${fmtSeconds(h.leadTimeSeconds)}`);
  return parts.filter(Boolean).join(" · ") || "–";
}

function eventsSection(v) {
  if (!v.events || !v.events.length) return el("p", { class: "muted", text: "No events." });
  return el(
    "table",
    { class: "events" },
    el(
      "tbody",
      {},
      [...v.events].reverse().map((e) =>
        el(
          "tr",
          { class: e.type === "Warning" ? "warning" : null, "data-reason": e.reason },
          el("td", { class: "when", text: fmtTime(e.at) }),
          el("td", { class: "reason", text: dash(e.reason) }),
          el("td", { class: "msg", text: `${dash(e.message)}${e.count > 1 ? ` (×${e.count})` : ""}` }),
        ),
      ),
    ),
  );
}

// ------------------------------------------------------------------ live updates

function select(key) {
  if (location.hash !== `#${key}`) history.replaceState(null, "", `#${key}`);
  state.selected = key;
  render();
}

function render() {
  if (!state.selected && state.rollouts.size) state.selected = [...state.rollouts.keys()].sort()[0];
  renderList();
  renderDetail();
  const errors = document.getElementById("errors");
  errors.hidden = state.errors.length === 0;
  errors.replaceChildren(...state.errors.map((e) => el("div", { text: e })));
}

function setConnection(live) {
  const conn = document.getElementById("conn");
  conn.dataset.state = live ? "live" : "reconnecting";
  conn.textContent = live ? "live" : "reconnecting…";
}

function connect() {
  const source = new EventSource("api/events");
  source.onopen = () => setConnection(true);
  source.onerror = () => setConnection(false);
  source.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    state.rollouts = new Map(snap.rollouts.map((v) => [keyOf(v), v]));
    state.errors = snap.errors || [];
    state.synced = Boolean(snap.synced);
    setConnection(true);
    render();
  });
  source.addEventListener("rollout", (e) => {
    const v = JSON.parse(e.data);
    state.rollouts.set(keyOf(v), v);
    render();
  });
  source.addEventListener("deleted", (e) => {
    const d = JSON.parse(e.data);
    state.rollouts.delete(keyOf(d));
    render();
  });
  source.addEventListener("status", (e) => {
    const s = JSON.parse(e.data);
    state.errors = s.errors || [];
    state.synced = Boolean(s.synced);
    render();
  });
}

window.addEventListener("hashchange", () => select(decodeURIComponent(location.hash.slice(1))));
document.addEventListener("DOMContentLoaded", () => {
  if (location.hash.length > 1) state.selected = decodeURIComponent(location.hash.slice(1));
  document.getElementById("mode").textContent = TOKEN ? "Promote and abort are enabled (--allow-actions)." : "Read-only.";
  connect();
});
// the weights chart runs to "now": redraw it now and then even without news
setInterval(() => {
  if (state.selected && state.rollouts.has(state.selected) && !state.armed) renderDetail();
}, 5000);
