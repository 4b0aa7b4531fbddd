"""The status page: one HTML document, its style and script inline, nothing loaded from elsewhere.

Kept as a Python string so that it ships with the package as it is (no package-data
configuration, no build step). The script polls the JSON beside the page (``<path>.json``,
named in ``data-json`` relative to the page, so the page works under any prefix a proxy puts in
front) every second and draws each number's series as an inline SVG sparkline. It builds the
document with ``textContent`` and attributes only, so nothing in the JSON is ever parsed as HTML.
"""

STYLE = """
:root { color-scheme: light dark; --bg: #f5f6f8; --card: #ffffff; --fg: #1b2230; --muted: #5d6776;
  --line: #1f6feb; --fill: rgba(31, 111, 235, 0.13); --border: #dde1e7; --bad: #c62828; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #0e1116; --card: #161b22; --fg: #e6edf3; --muted: #9aa5b1; --line: #58a6ff;
    --fill: rgba(88, 166, 255, 0.16); --border: #2b323c; --bad: #ff7b72; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 0.4rem 1.2rem; padding: 0.9rem 1.5rem;
  border-bottom: 1px solid var(--border); }
h1 { font-size: 1.2rem; margin: 0; }
#state { color: var(--muted); }
#state.stale { color: var(--bad); font-weight: 600; }
main { padding: 1rem 1.5rem 2rem; display: grid; gap: 1.6rem; }
h2 { font-size: 1.05rem; margin: 0 0 0.55rem; }
.none { color: var(--muted); margin: 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(235px, 1fr)); gap: 0.75rem; }
.card { background: var(--card); border: 1px solid var(--border); border-radius: 8px; padding: 0.55rem 0.75rem 0.5rem; }
.label { color: var(--muted); font-size: 0.85rem; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.number { font-size: 1.55rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.unit { font-size: 0.85rem; font-weight: 400; color: var(--muted); margin-left: 0.25rem; }
svg { display: block; width: 100%; height: 46px; margin-top: 0.2rem; }
.area { fill: var(--fill); stroke: none; }
.line { fill: none; stroke: var(--line); stroke-width: 1.6px; stroke-linejoin: round; stroke-linecap: round;
  vector-effect: non-scaling-stroke; }
.axis { display: flex; justify-content: space-between; color: var(--muted); font-size: 0.72rem;
  font-variant-numeric: tabular-nums; }
"""

SCRIPT = """
"use strict";
const W = 300, H = 46;
const jsonUrl = document.body.dataset.json;
const main = document.querySelector("main");
const stateEl = document.getElementById("state");
const panels = new Map();
// For scripts and tests: how many answers were drawn, how many polls failed, the last answer.
window.statusPage = { updates: 0, errors: 0, last: null };

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgEl(tag, cls) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  if (cls) node.setAttribute("class", cls);
  return node;
}

function short(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + "k";
  if (Number.isInteger(v)) return String(v);
  return a >= 10 ? v.toFixed(0) : a >= 1 ? v.toFixed(1) : v.toFixed(2);
}

// [number, unit] as shown: durations in ms or s, everything else shortened.
function shown(v, m) {
  if (v === null || v === undefined) return ["\\u2013", m.kind === "latency" ? "" : m.unit];
  if (m.kind === "latency") {
    if (v < 1) return [(v * 1000).toFixed(v < 0.01 ? 1 : 0), "ms"];
    return [v.toFixed(2), "s"];
  }
  return [short(v), m.unit];
}

function panel(name) {
  let p = panels.get(name);
  if (p) return p;
  const section = el("section");
  section.dataset.profile = name;
  section.append(el("h2", "", name));
  const cards = el("div", "cards");
  const none = el("p", "none", "This profile reports no status numbers.");
  section.append(cards, none);
  main.append(section);
  p = { section, cards, none, metrics: new Map() };
  panels.set(name, p);
  return p;
}

function card(p, id) {
  let c = p.metrics.get(id);
  if (c) return c;
  const box = el("div", "card");
  box.dataset.metric = id;
  const label = el("div", "label");
  const number = el("span", "number");
  const unit = el("span", "unit");
  const value = el("div", "value");
  value.append(number, unit);
  const svg = svgEl("svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const area = svgEl("path", "area");
  const line = svgEl("path", "line");
  svg.append(area, line);
  const axis = el("div", "axis");
  const since = el("span"), top = el("span");
  axis.append(since, top);
  box.append(label, value, svg, axis);
  p.cards.append(box);
  c = { box, label, number, unit, svg, area, line, since, top };
  p.metrics.set(id, c);
  return c;
}

function ago(seconds) {
  return seconds >= 120 ? `\\u2212${Math.round(seconds / 60)} min` : `\\u2212${Math.round(seconds)} s`;
}

// The series as an SVG path: x by time (the last minute at least, up to all there is), y from 0
// to the largest value; a null leaves a gap.
function draw(c, times, series, m) {
  const span = Math.max(60, times.length ? -times[0] : 0);
  let top = 0, any = false;
  for (const v of series) if (v !== null) { any = true; if (v > top) top = v; }
  const scale = top > 0 ? top : 1;
  let line = "", area = "", run = [];
  const flush = () => {
    if (!run.length) return;
    line += "M" + run.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join("L");
    if (run.length === 1) line += "h0.01";
    area += `M${run[0][0].toFixed(1)},${H}` + run.map(([x, y]) => `L${x.toFixed(1)},${y.toFixed(1)}`).join("")
      + `L${run[run.length - 1][0].toFixed(1)},${H}Z`;
    run = [];
  };
  for (let i = 0; i < series.length; i++) {
    const v = series[i];
    if (v === null) { flush(); continue; }
    run.push([W * (1 + times[i] / span), H - 2 - (H - 4) * (v / scale)]);
  }
  flush();
  c.line.setAttribute("d", line);
  c.area.setAttribute("d", area);
  c.since.textContent = ago(span);
  const [n, u] = shown(any ? top : null, m);
  c.top.textContent = "max " + n + (u ? " " + u : "");
}

function render(doc) {
  const seen = new Set();
  for (const [name, profile] of Object.entries(doc.profiles)) {
    seen.add(name);
    const p = panel(name);
    const ids = Object.keys(profile.metrics);
    p.none.hidden = ids.length > 0;
    for (const [id, m] of Object.entries(profile.metrics)) {
      const c = card(p, id);
      c.label.textContent = m.label;
      c.label.title = m.label;
      const [n, u] = shown(m.value, m);
      c.number.textContent = n;
      c.number.dataset.value = m.value === null ? "" : String(m.value);
      c.unit.textContent = u;
      c.svg.setAttribute("aria-label", `${m.label}, the last ${ago(-(profile.times[0] || 0))}`);
      draw(c, profile.times, m.series, m);
    }
    for (const [id, c] of p.metrics) if (!(id in profile.metrics)) { c.box.remove(); p.metrics.delete(id); }
  }
  for (const [name, p] of panels) if (!seen.has(name)) { p.section.remove(); panels.delete(name); }
}

async function poll() {
  try {
    const reply = await fetch(jsonUrl, { cache: "no-store", credentials: "same-origin" });
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    const doc = await reply.json();
    render(doc);
    window.statusPage.updates += 1;
    window.statusPage.last = doc;
    const at = doc.time ? new Date(doc.time * 1000).toLocaleTimeString() : "\\u2013";
    stateEl.textContent = `live \\u00b7 sampled ${at} \\u00b7 every ${doc.interval} s, ${Math.round(doc.keep / 60)} min kept`;
    stateEl.classList.remove("stale");
  } catch (error) {
    window.statusPage.errors += 1;
    stateEl.textContent = `no answer from the broker (${error.message}); retrying`;
    stateEl.classList.add("stale");
  }
  setTimeout(poll, 1000);
}
poll();
"""

TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>rendezvous status</title>
<style>{style}</style>
</head>
<body data-json="{json}">
<header><h1>rendezvous status</h1><span id="state">loading\u2026</span></header>
<main></main>
<script>{script}</script>
</body>
</html>
"""
