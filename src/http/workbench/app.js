// The flowline workbench: reads the JSON endpoints under /_flowline/api and
// redraws when /_flowline/api/live (server-sent events) says something
// changed. No framework, no build step.
"use strict";

const API = "/_flowline/api";
const state = { tenant: "", trace: "", deadKind: "", paused: false, flow: null, tenants: new Set(), selected: new Set() };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function getJson(path) {
  const response = await fetch(API + path, { headers: { accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

const fmt = (n) => (n ?? 0).toLocaleString("en-US");
function micros(us) {
  if (!us) return "–";
  if (us < 1000) return `${us} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 1 : 0)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}
function when(ms, now) {
  if (ms === null || ms === undefined) return "–";
  const d = Math.round((ms - now) / 1000);
  const abs = Math.abs(d);
  if (abs < 1) return "just now";
  const span = abs < 60 ? `${abs} s` : abs < 3600 ? `${Math.round(abs / 60)} min` : abs < 86400 ? `${(abs / 3600).toFixed(1)} h` : `${(abs / 86400).toFixed(1)} d`;
  return d >= 0 ? `in ${span}` : `${span} ago`;
}
const short = (id) => (id ? String(id).slice(-8) : "–");
function query(extra = {}) {
  const params = new URLSearchParams();
  if (state.tenant) params.set("tenant", state.tenant);
  for (const [k, v] of Object.entries(extra)) if (v) params.set(k, v);
  const text = params.toString();
  return text ? `?${text}` : "";
}

// ---- the flow graph: columns by distance from the flow's entry points ----

function layout(flow) {
  const steps = flow.steps;
  const subscribers = new Map();
  for (const s of steps) for (const t of s.subscribes || []) {
    if (!subscribers.has(t)) subscribers.set(t, []);
    subscribers.get(t).push(s.name);
  }
  const nodes = new Map();
  for (const s of steps) nodes.set(s.name, { id: s.name, kind: s.kind, step: s });
  const edges = [];
  for (const t of flow.external || []) {
    const id = `topic:${t}`;
    nodes.set(id, { id, kind: "ext", label: t });
    for (const to of subscribers.get(t) || []) edges.push({ from: id, to, label: t });
  }
  for (const s of steps) for (const t of s.emits || []) {
    for (const to of subscribers.get(t) || []) edges.push({ from: s.name, to, label: t });
  }
  // Steps with no edge at all (read-only API endpoints) go in a row of their
  // own below the graph: they are part of the wiring, not of a path.
  const linked = new Set(edges.flatMap((e) => [e.from, e.to]));
  const loose = [...nodes.keys()].filter((id) => !linked.has(id));
  // Layers as a layered drawing does them: a depth-first walk from the entry
  // points (nodes nothing points at, steps in registration order first) marks
  // the edges that close a cycle (compensations, retries) as back edges; the
  // rest is a DAG, and each node's column is its longest path from an entry.
  const incoming = new Map([...linked].map((k) => [k, 0]));
  for (const e of edges) incoming.set(e.to, incoming.get(e.to) + 1);
  const seen = new Map();
  const found = new Map(); // when the walk first came to each node
  const walk = (id) => {
    seen.set(id, 1);
    found.set(id, found.size);
    edges.forEach((e) => {
      if (e.from !== id) return;
      const s = seen.get(e.to) || 0;
      if (s === 1) e.back = true;
      else if (s === 0) walk(e.to);
    });
    seen.set(id, 2);
  };
  const order = [...nodes.keys()].filter((id) => linked.has(id));
  for (const id of order) if (incoming.get(id) === 0 && !seen.get(id)) walk(id);
  for (const id of order) if (!seen.get(id)) walk(id);
  // An edge of a cycle into a node the walk came to earlier is drawn back
  // too, not only the one that closed the cycle: a refund on a returned
  // parcel (delivery -> payment) must not push payment after delivery.
  const reaches = (from, to) => {
    const stack = [from], visited = new Set([from]);
    while (stack.length) {
      const id = stack.pop();
      if (id === to) return true;
      for (const e of edges) if (e.from === id && !visited.has(e.to)) { visited.add(e.to); stack.push(e.to); }
    }
    return false;
  };
  for (const e of edges) {
    if (!e.back && found.get(e.to) < found.get(e.from) && reaches(e.to, e.from)) e.back = true;
  }
  const depth = new Map([...linked].map((id) => [id, 0]));
  for (let round = 0; round < linked.size; round++) {
    let moved = false;
    for (const e of edges) {
      if (e.back || depth.get(e.to) > depth.get(e.from)) continue;
      depth.set(e.to, depth.get(e.from) + 1);
      moved = true;
    }
    if (!moved) break;
  }
  const columns = [];
  for (const [id, d] of depth) (columns[d] ||= []).push(id);
  const W = 168, H = 58, GX = 48, GY = 16, TOP = 46;
  // The spine: the longest forward path from an API step (an order's happy
  // path, say), drawn on the top row so that it reads left to right.
  const longest = new Map();
  const reach = (id) => {
    if (longest.has(id)) return longest.get(id);
    longest.set(id, [id]); // a guard; forward edges make no cycle
    let best = [id];
    for (const e of edges) {
      if (e.from !== id || e.back || depth.get(e.to) !== depth.get(id) + 1) continue;
      const path = [id, ...reach(e.to)];
      if (path.length > best.length) best = path;
    }
    longest.set(id, best);
    return best;
  };
  let spine = [];
  for (const id of order) {
    if (nodes.get(id).kind !== "api" || incoming.get(id) !== 0) continue;
    const path = reach(id);
    if (path.length > spine.length) spine = path;
  }
  const onSpine = new Set(spine);
  // Each column ordered by the mean row of what points into it: fewer
  // crossings; the spine's node first.
  const row = new Map();
  columns.forEach((col, c) => {
    const mean = (id) => {
      if (onSpine.has(id)) return -1;
      const from = edges.filter((e) => e.to === id && row.has(e.from)).map((e) => row.get(e.from));
      return from.length ? from.reduce((a, b) => a + b, 0) / from.length : 1e9;
    };
    col.sort((a, b) => mean(a) - mean(b));
    col.forEach((id, r) => {
      row.set(id, r);
      const node = nodes.get(id);
      node.x = 10 + c * (W + GX);
      node.y = TOP + r * (H + GY);
    });
  });
  const graphHeight = TOP + Math.max(1, ...columns.map((c) => c.length)) * (H + GY);
  const perRow = Math.max(1, columns.length + 1);
  loose.forEach((id, i) => {
    const node = nodes.get(id);
    node.x = 10 + (i % perRow) * (W + 16);
    node.y = graphHeight + 28 + Math.floor(i / perRow) * (H + GY);
  });
  const looseRows = Math.ceil(loose.length / perRow);
  // Room on the right for the last column's edge labels.
  const width = Math.max(20 + columns.length * (W + GX) - GX + 90, 20 + Math.min(loose.length, perRow) * (W + 16));
  const height = graphHeight + (loose.length ? 28 + looseRows * (H + GY) : 0) + 4;
  return { nodes, edges, W, H, width, height, looseTop: loose.length ? graphHeight + 18 : null };
}

function drawGraph(flow, steps) {
  const g = layout(flow);
  const byName = new Map((steps || []).map((s) => [s.step, s]));
  // Scaled to the card's width: no horizontal scroll, nothing cut off.
  const root = svg("svg", { width: "100%", viewBox: `0 0 ${g.width} ${g.height}`, preserveAspectRatio: "xMinYMin meet", role: "img", "aria-label": "flow graph" });
  const colors = { api: "var(--api)", event: "var(--event)", cron: "var(--cron)", ext: "var(--ext)" };
  const labelled = new Set();
  if (g.looseTop !== null) {
    root.append(svg("text", { x: 10, y: g.looseTop, class: "caption" }, "API steps that emit nothing (they read or answer only)"));
  }
  for (const e of g.edges) {
    const a = g.nodes.get(e.from), b = g.nodes.get(e.to);
    const x1 = a.x + g.W, y1 = a.y + g.H / 2, x2 = b.x, y2 = b.y + g.H / 2;
    const back = Boolean(e.back);
    const mid = (x1 + x2) / 2;
    // Edges back to an earlier column (compensations) arc over the top.
    const d = back
      ? `M${a.x + g.W / 2},${a.y} C${a.x + g.W / 2},${8} ${b.x + g.W / 2},${8} ${b.x + g.W / 2},${b.y}`
      : `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`;
    const busy = (byName.get(e.to)?.inFlight || 0) > 0;
    const group = svg("g", { class: `edge${busy ? " active" : ""}${back ? " back" : ""}` });
    group.append(svg("title", {}, `${e.from.replace("topic:", "")} → ${e.to} on ${e.label}`));
    group.append(svg("path", { d, "marker-end": "url(#arrow)" }));
    // A topic is named once per step that emits it, next to that step.
    const key = `${e.from}|${e.label}`;
    if (!back && !labelled.has(key)) {
      labelled.add(key);
      group.append(svg("text", { x: x1 + 6, y: y1 - 5 }, e.label));
    }
    root.append(group);
  }
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#4a5866" }));
  defs.append(marker);
  root.prepend(defs);
  for (const n of g.nodes.values()) {
    const group = svg("g", { class: "node", transform: `translate(${n.x},${n.y})`, "data-step": n.id });
    group.append(svg("rect", { width: g.W, height: g.H, fill: "#1b232b", stroke: colors[n.kind] || "#888" }));
    group.append(svg("rect", { width: 5, height: g.H, fill: colors[n.kind] || "#888", rx: 2 }));
    const title = n.kind === "ext" ? n.label : n.id;
    group.append(svg("text", { x: 14, y: 22, "font-weight": 600 }, title.length > 24 ? title.slice(0, 23) + "…" : title));
    let sub;
    if (n.kind === "ext") sub = "external topic";
    else if (n.kind === "api") sub = `${n.step.method} ${n.step.path}`;
    else if (n.kind === "cron") sub = `cron ${n.step.schedule}`;
    const m = byName.get(n.id);
    if (n.kind !== "ext" && m) {
      const line = `${fmt(m.processed)} ok · ${fmt(m.failed)} failed · ${m.inFlight} running`;
      group.append(svg("text", { x: 14, y: 40, class: m.deadLettered > 0 ? "sub hot" : "sub" }, sub && n.kind !== "event" ? sub.slice(0, 27) : line));
      if (n.kind !== "event") group.append(svg("text", { x: 14, y: 53, class: "sub" }, line));
    } else {
      group.append(svg("text", { x: 14, y: 40, class: "sub" }, sub || ""));
    }
    root.append(group);
  }
  $("graph").replaceChildren(root);
  $("flow-summary").textContent = `${flow.steps.length} steps, ${g.edges.length} edges`;
}

// ---- tables ----

function tiles(stats) {
  const e = stats.engine, q = stats.queue;
  const tile = (label, value, cls = "", exact = value) =>
    el("div", { class: `tile ${cls}`, title: `${label}: ${exact}` }, el("div", { class: "v" }, value), el("div", { class: "l" }, label));
  // A count keeps to its tile after millions of executions: 1.23 M, 98.8 M,
  // exact on hover.
  const count = (label, n, cls = "") => {
    const v = n ?? 0;
    const short = v >= 1e9 ? `${(v / 1e9).toPrecision(3)} G` : v >= 1e6 ? `${(v / 1e6).toPrecision(3)} M` : fmt(v);
    return tile(label, short, cls, fmt(v));
  };
  $("tiles").replaceChildren(
    count("processed", e.processed, "ok"),
    count("failed attempts", e.failed, e.failed ? "warn" : ""),
    count("retried", e.retried),
    count("dead-lettered", q.dead, q.dead ? "bad" : ""),
    count("ready", q.ready),
    count("delayed", q.delayed),
    count("in flight", q.inFlight),
    count("API calls", e.apiCalls),
    tile("handler p50 · p99", `${micros(e.handlerP50Micros)} · ${micros(e.handlerP99Micros)}`, "small"),
    tile("end-to-end p50 · p99", `${micros(e.endToEndP50Micros)} · ${micros(e.endToEndP99Micros)}`, "small"),
  );
}

function rows(tbody, items, render, empty) {
  const body = $(tbody).querySelector("tbody");
  if (!items.length) {
    const cols = $(tbody).querySelectorAll("thead th").length;
    body.replaceChildren(el("tr", {}, el("td", { colspan: cols, class: "empty" }, empty)));
    return;
  }
  body.replaceChildren(...items.map(render));
}

function stepTable(steps) {
  rows("steps", steps, (s) => el("tr", { "data-step": s.step },
    el("td", {}, s.step), el("td", { class: "n" }, fmt(s.processed)), el("td", { class: "n" }, fmt(s.failed)),
    el("td", { class: "n" }, fmt(s.retried)), el("td", { class: "n" }, fmt(s.deadLettered)),
    el("td", { class: "n" }, fmt(s.inFlight)), el("td", { class: "n" }, fmt(s.throttled)),
    el("td", { class: "n" }, micros(s.handlerLatency.p50Micros)),
    el("td", { class: "n" }, micros(s.handlerLatency.p99Micros))), "no steps");
}

function tenantCard(stats) {
  const card = $("tenant-card");
  const t = stats.tenant;
  card.hidden = !t;
  if (!t) return;
  $("tenant-name").textContent = t.id;
  $("tenant-summary").textContent = `· its last ${t.recentExecutions} executions in memory, and every dead letter it has`;
  const steps = new Set([...Object.keys(t.recentByStep), ...Object.keys(t.deadLettersByStep)]);
  const list = [...steps].sort().map((step) => ({ step, ...(t.recentByStep[step] || {}), dead: t.deadLettersByStep[step] || 0 }));
  rows("tenant-steps", list, (r) => el("tr", { "data-step": r.step },
    el("td", {}, r.step), el("td", { class: "n" }, fmt(r.committed)), el("td", { class: "n" }, fmt(r.retried)),
    el("td", { class: "n" }, fmt(r.deadLettered)), el("td", { class: "n" }, fmt(r.dead))), "nothing recent for this tenant");
}

function quota(q) {
  if (q.kind === "rate") {
    const units = { 1000: "s", 60000: "min", 3600000: "h", 86400000: "day" };
    const per = units[q.periodMs] ?? `${fmt(q.periodMs)} ms`;
    return `${fmt(q.count)}/${per}` + (q.burst > 1 ? ` (burst ${fmt(q.burst)})` : "");
  }
  return `${fmt(q.max)} in flight`;
}

// Flow-control keys; with a tenant chosen, only its own (a per-tenant
// limit's key is the tenant). A throttled key marks its tenant's card too.
function limitTable(data) {
  const keys = state.tenant ? data.keys.filter((k) => k.key === state.tenant) : data.keys;
  const throttled = keys.filter((k) => k.throttledUntil !== null);
  $("limits-summary").textContent = keys.length ? `· ${keys.length} keys, ${throttled.length} throttled` : "";
  rows("limits", keys, (k) => el("tr", { "data-key": `${k.step}/${k.limit}/${k.key}`, "data-throttled": k.throttledUntil !== null },
    el("td", {}, k.step), el("td", {}, k.limit), el("td", { class: "mono" }, k.key),
    el("td", {}, quota(k.quota) + (k.overridden ? " · set at run time" : "")),
    el("td", { class: "n" }, fmt(k.queued)),
    el("td", { class: "n" }, fmt(k.running)),
    el("td", {}, k.throttledUntil !== null ? el("span", { class: "chip throttled" }, `throttled, ${when(k.throttledUntil, data.now)}`) : "–"),
    el("td", { title: new Date(k.nextRunAt).toISOString() }, k.nextRunAt <= data.now ? "now" : when(k.nextRunAt, data.now))),
    state.tenant ? "no limited key of this tenant has a state" : "no limited key has a state");
  if (state.tenant && throttled.length) {
    $("tenant-summary").textContent += ` · throttled (${throttled.map((k) => `${k.step}/${k.limit}`).join(", ")})`;
  }
}

function scheduleTable(data) {
  rows("schedules", data.schedules, (s) => el("tr", {},
    el("td", {}, s.step), el("td", { class: "mono" }, s.expression), el("td", {}, s.timeZone),
    el("td", { title: s.nextFire ? new Date(s.nextFire).toISOString() : "" }, when(s.nextFire, data.now))), "no cron steps");
}

function traceLink(id) {
  return el("a", { class: "trace mono", title: id, onclick: () => { state.trace = state.trace === id ? "" : id; refresh(); } }, short(id));
}

function executionTable(list, now) {
  for (const r of list) state.tenants.add(r.tenant);
  rows("executions", list, (r) => el("tr", { "data-outcome": r.outcome },
    el("td", { title: new Date(r.finishedAt).toISOString() }, when(r.finishedAt, now)),
    el("td", {}, r.step), el("td", {}, r.tenant),
    el("td", {}, el("span", { class: `chip ${r.outcome}` }, r.outcome.replace("_", " "))),
    el("td", { class: "n" }, r.attempt), el("td", { class: "n" }, micros(r.ranForMicros)),
    el("td", { class: "mono", title: r.eventId || "API call" }, r.eventId ? `${r.topic} ${short(r.eventId)}` : "API call"),
    el("td", { class: "mono", title: r.causationId || "" }, short(r.causationId)),
    el("td", {}, traceLink(r.traceId))), state.trace ? "nothing recent in this trace" : "no executions yet");
  $("trace-filter").textContent = state.trace ? `· trace ${short(state.trace)} (click it again to clear)` : "";
}

async function post(path, body) {
  const response = await fetch(`${API}${path}`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  return { ok: response.ok, body: await response.json() };
}

function report(kind, answer) {
  $("dead-message").textContent = answer.ok
    ? (kind === "replay" ? `replayed ${answer.body.replayed}` : `purged ${answer.body.purged}`)
    : `failed: ${answer.body.message}`;
}

async function act(kind, ids) {
  report(kind, await post(`/dead-letters/${kind}`, { ids }));
  for (const id of ids) state.selected.delete(id);
  refresh();
}

// Every dead letter the tenant and kind filters match, as they stand now.
async function replayMatching() {
  const filter = {};
  if (state.tenant) filter.tenant = state.tenant;
  if (state.deadKind) filter.kind = state.deadKind;
  const what = Object.entries(filter).map(([k, v]) => `${k} ${v}`).join(", ") || "every dead letter";
  if (!confirm(`Replay ${what}?`)) return;
  report("replay", await post("/dead-letters/replay", { query: filter }));
  refresh();
}

// Replays one dead letter with a payload the operator corrected.
async function fixAndReplay(d) {
  const current = typeof d.payload === "string" ? d.payload : JSON.stringify(d.payload);
  const text = prompt(`Payload for ${d.topic} (dead letter ${d.id}), as JSON:`, current);
  if (text === null) return;
  let payload;
  try { payload = JSON.parse(text); } catch (err) { $("dead-message").textContent = `not JSON: ${err.message}`; return; }
  report("replay", await post(`/dead-letters/${d.id}/replay`, { payload }));
  refresh();
}

function deadTable(list, now) {
  for (const d of list) state.tenants.add(d.tenant);
  const known = new Set(list.map((d) => d.id));
  for (const id of [...state.selected]) if (!known.has(id)) state.selected.delete(id);
  $("dead-count").textContent = list.length ? `· ${list.length}` : "";
  rows("dead", list, (d) => {
    const box = el("input", { type: "checkbox", "aria-label": `select ${d.id}` });
    box.checked = state.selected.has(d.id);
    box.addEventListener("change", () => { box.checked ? state.selected.add(d.id) : state.selected.delete(d.id); syncButtons(); });
    return el("tr", { "data-dead": d.id },
      el("td", {}, box), el("td", { class: "mono" }, d.id), el("td", {}, d.step), el("td", {}, d.tenant),
      el("td", {}, d.topic), el("td", { class: d.kind === "exhausted" ? "" : "err" }, d.kind), el("td", { class: "n" }, d.attempts),
      el("td", { title: new Date(d.failedAt).toISOString() }, when(d.failedAt, now)),
      el("td", { class: "err" }, d.lastError),
      el("td", {},
        el("button", { type: "button", class: "replay", onclick: () => act("replay", [d.id]) }, "Replay"),
        el("button", { type: "button", class: "fix", onclick: () => fixAndReplay(d) }, "Fix & replay")));
  }, "no dead letters");
  syncButtons();
}

function syncButtons() {
  const none = state.selected.size === 0;
  $("replay-selected").disabled = none;
  $("purge-selected").disabled = none;
}

function tenantOptions() {
  const select = $("tenant");
  const have = new Set([...select.options].map((o) => o.value));
  for (const t of [...state.tenants].sort()) if (!have.has(t)) select.append(el("option", { value: t }, t));
}

// ---- the loop ----

async function refresh() {
  try {
    if (!state.flow) state.flow = (await getJson("/flow")).flow;
    const [stats, executions, dead, schedules, limits] = await Promise.all([
      getJson(`/stats${query()}`),
      getJson(`/executions${query({ trace: state.trace, limit: 60 })}`),
      getJson(`/dead-letters${query({ limit: 200, kind: state.deadKind })}`),
      getJson("/schedules"),
      getJson("/limits"),
    ]);
    tiles(stats);
    drawGraph(state.flow, stats.steps);
    stepTable(stats.steps);
    tenantCard(stats);
    limitTable(limits);
    scheduleTable(schedules);
    executionTable(executions.executions, stats.now);
    deadTable(dead.deadLetters, stats.now);
    tenantOptions();
    $("live").className = "live on";
    $("live").textContent = `live · ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    $("live").className = "live off";
    $("live").textContent = `offline: ${err.message}`;
  }
}

$("tenant").addEventListener("change", (e) => { state.tenant = e.target.value; refresh(); });
$("pause").addEventListener("click", () => {
  state.paused = !state.paused;
  $("pause").textContent = state.paused ? "Resume" : "Pause";
});
$("dead-all").addEventListener("change", (e) => {
  document.querySelectorAll("#dead tbody tr[data-dead]").forEach((tr) => {
    const id = Number(tr.dataset.dead);
    e.target.checked ? state.selected.add(id) : state.selected.delete(id);
  });
  refresh();
});
$("dead-kind").addEventListener("change", (e) => { state.deadKind = e.target.value; refresh(); });
$("replay-matching").addEventListener("click", replayMatching);
$("replay-selected").addEventListener("click", () => act("replay", [...state.selected]));
$("purge-selected").addEventListener("click", () => {
  if (confirm(`Purge ${state.selected.size} dead letter(s)? This cannot be undone.`)) act("purge", [...state.selected]);
});

refresh();
// Redraw when the server says something changed; one read at a time, and
// one more after it if a change came meanwhile.
let reading = false, again = false;
async function redraw() {
  if (state.paused) return;
  if (reading) { again = true; return; }
  reading = true;
  do { again = false; await refresh(); } while (again);
  reading = false;
}
const changes = new EventSource(API + "/live");
changes.addEventListener("changed", redraw);
changes.addEventListener("error", () => {
  $("live").className = "live off";
  $("live").textContent = "reconnecting";
});
