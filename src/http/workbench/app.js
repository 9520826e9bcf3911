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

// ---- the flow graph: a layered drawing, an order's path left to right ----
//
// Columns: each step one column after what points into it, except that the
// steps of a cycle (reserve -> pay -> commit stock -> fulfil -> deliver ->
// refund...) take consecutive columns in the order the flow registers them,
// which is the order the story is told in; an edge against that order is a
// back edge and arcs over the top. Rows: the spine (the longest such path
// from an API step) on top, the rest ordered to cross as few edges as
// sweeps of barycentres find, with edges spanning columns routed through
// gaps of their own.

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
  const order = [...nodes.keys()].filter((id) => linked.has(id));
  const rank = new Map(order.map((id, i) => [id, i]));
  const out = new Map(order.map((id) => [id, []]));
  for (const e of edges) if (e.from !== e.to) out.get(e.from).push(e.to);

  // Strongly connected components (Tarjan), found in reverse topological order.
  const sccOf = new Map(), sccs = [];
  {
    const index = new Map(), low = new Map(), stack = [], onStack = new Set();
    const visit = (v) => {
      index.set(v, index.size); low.set(v, index.get(v));
      stack.push(v); onStack.add(v);
      for (const w of out.get(v)) {
        if (!index.has(w)) { visit(w); low.set(v, Math.min(low.get(v), low.get(w))); }
        else if (onStack.has(w)) low.set(v, Math.min(low.get(v), index.get(w)));
      }
      if (low.get(v) !== index.get(v)) return;
      const members = [];
      let w;
      do { w = stack.pop(); onStack.delete(w); members.push(w); } while (w !== v);
      members.sort((a, b) => rank.get(a) - rank.get(b));
      members.forEach((m, i) => sccOf.set(m, { id: sccs.length, pos: i }));
      sccs.push(members);
    };
    for (const id of order) if (!index.has(id)) visit(id);
  }
  for (const e of edges) {
    const a = sccOf.get(e.from), b = sccOf.get(e.to);
    e.back = a.id === b.id && b.pos <= a.pos;
  }
  const column = new Map();
  for (let i = sccs.length - 1; i >= 0; i--) {
    let start = 0;
    for (const e of edges) {
      const to = sccOf.get(e.to);
      if (to.id !== i || sccOf.get(e.from).id === i) continue;
      start = Math.max(start, column.get(e.from) + 1 - to.pos);
    }
    sccs[i].forEach((m, pos) => column.set(m, start + pos));
  }

  // The spine: consecutive columns joined by an edge or by a cycle's order.
  const next = (id) => {
    const s = sccOf.get(id);
    const after = out.get(id).filter((to) => column.get(to) === column.get(id) + 1);
    const member = sccs[s.id][s.pos + 1];
    return member ? [...new Set([...after, member])] : after;
  };
  const longest = new Map();
  const reach = (id) => {
    if (longest.has(id)) return longest.get(id);
    let best = [id];
    for (const to of next(id)) {
      const path = [id, ...reach(to)];
      if (path.length > best.length) best = path;
    }
    longest.set(id, best);
    return best;
  };
  let spine = [];
  for (const id of order) {
    const entry = nodes.get(id).kind === "api" && !edges.some((e) => e.to === id);
    if (entry && reach(id).length > spine.length) spine = reach(id);
  }
  const onSpine = new Set(spine);

  // Columns of nodes and of gaps: a forward edge over k columns passes k - 1
  // gaps, one per column between, so that it is ordered (and drawn) there too.
  const columns = [];
  const put = (c, item) => (columns[c] ||= []).push(item);
  for (const id of order) put(column.get(id), { id, node: true });
  const links = []; // [left item, right item] between adjacent columns
  const chains = new Map(); // edges between the same two steps share one
  for (const e of edges) {
    if (e.back) continue;
    const pair = `${e.from}>${e.to}`;
    if (chains.has(pair)) { e.gaps = chains.get(pair); continue; }
    let prev = columns[column.get(e.from)].find((x) => x.id === e.from);
    e.gaps = [];
    for (let c = column.get(e.from) + 1; c < column.get(e.to); c++) {
      const gap = { id: `${e.from}>${e.to}>${c}`, node: false };
      put(c, gap);
      e.gaps.push(gap);
      links.push([prev, gap]);
      prev = gap;
    }
    links.push([prev, columns[column.get(e.to)].find((x) => x.id === e.to)]);
    chains.set(pair, e.gaps);
  }
  for (let c = 0; c < columns.length; c++) columns[c] ||= [];
  const place = () => columns.forEach((col) => col.forEach((x, r) => (x.row = r)));
  const crossings = () => {
    let n = 0;
    for (let i = 0; i < links.length; i++) for (let j = i + 1; j < links.length; j++) {
      const [a, b] = links[i], [p, q] = links[j];
      if (columnOf(a) !== columnOf(p)) continue;
      if ((a.row - p.row) * (b.row - q.row) < 0) n++;
    }
    return n;
  };
  const columnOf = (x) => (x.node ? column.get(x.id) : Number(x.id.split(">")[2]));
  const sweep = (c, side) => {
    const key = new Map(columns[c].map((x) => {
      if (x.node && onSpine.has(x.id)) return [x, -1];
      const near = links.filter((l) => l[side === "left" ? 1 : 0] === x).map((l) => l[side === "left" ? 0 : 1].row);
      return [x, near.length ? near.reduce((a, b) => a + b, 0) / near.length : x.row];
    }));
    columns[c].sort((a, b) => key.get(a) - key.get(b) || a.row - b.row);
    columns[c].forEach((x, r) => (x.row = r));
  };
  columns.forEach((col) => col.sort((a, b) => (onSpine.has(b.id) - onSpine.has(a.id)) || (a.node ? rank.get(a.id) : 1e6) - (b.node ? rank.get(b.id) : 1e6)));
  place();
  let best = columns.map((col) => [...col]), fewest = crossings();
  for (let round = 0; round < 12 && fewest > 0; round++) {
    if (round % 2 === 0) for (let c = 1; c < columns.length; c++) sweep(c, "left");
    else for (let c = columns.length - 2; c >= 0; c--) sweep(c, "right");
    const n = crossings();
    if (n < fewest) { fewest = n; best = columns.map((col) => [...col]); }
  }
  best.forEach((col, c) => (columns[c] = col));
  place();
  // Then neighbours swap places while that uncrosses edges.
  for (let improved = true; improved && fewest > 0; ) {
    improved = false;
    for (const col of columns) for (let r = 0; r + 1 < col.length; r++) {
      if (onSpine.has(col[r].id) || onSpine.has(col[r + 1].id)) continue;
      [col[r], col[r + 1]] = [col[r + 1], col[r]];
      place();
      const n = crossings();
      if (n < fewest) { fewest = n; improved = true; continue; }
      [col[r], col[r + 1]] = [col[r + 1], col[r]];
      place();
    }
  }

  // Back edges arc over the top, the longer the higher, so they nest.
  const span = (e) => Math.abs(column.get(e.from) - column.get(e.to));
  const W = 168, H = 58, GX = 48, GY = 16, GAP = 18, ARC = 7;
  const TOP = 24 + ARC * Math.max(1, ...edges.filter((e) => e.back).map(span));
  for (const e of edges) if (e.back) e.peak = TOP - 8 - ARC * span(e);
  let graphHeight = TOP;
  columns.forEach((col, c) => {
    let y = TOP;
    for (const x of col) {
      x.x = 10 + c * (W + GX);
      x.y = y;
      if (x.node) Object.assign(nodes.get(x.id), { x: x.x, y: x.y });
      y += x.node ? H + GY : GAP;
    }
    graphHeight = Math.max(graphHeight, y);
  });
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
  return { nodes, edges, W, H, width, height, crossings: fewest, spine, looseTop: loose.length ? graphHeight + 18 : null };
}

function drawGraph(flow, steps) {
  const g = layout(flow);
  const byName = new Map((steps || []).map((s) => [s.step, s]));
  // Scaled to the card's width: no horizontal scroll, nothing cut off.
  // Never drawn larger than life: a flow of three steps stays small.
  const root = svg("svg", { width: "100%", style: `max-width: ${g.width}px`, viewBox: `0 0 ${g.width} ${g.height}`, preserveAspectRatio: "xMinYMin meet", role: "img", "aria-label": "flow graph" });
  const colors = { api: "var(--api)", event: "var(--event)", cron: "var(--cron)", ext: "var(--ext)" };
  const labelled = new Set();
  if (g.looseTop !== null) {
    root.append(svg("text", { x: 10, y: g.looseTop, class: "caption" }, "API steps that emit nothing (they read or answer only)"));
  }
  for (const e of g.edges) {
    const a = g.nodes.get(e.from), b = g.nodes.get(e.to);
    const x1 = a.x + g.W, y1 = a.y + g.H / 2, x2 = b.x, y2 = b.y + g.H / 2;
    const back = Boolean(e.back);
    // Edges back to an earlier column (compensations) arc over the top.
    // Edges over several columns pass through their gaps, straight, and
    // curve from one to the next.
    const curve = (ax, ay, bx, by) => `C${(ax + bx) / 2},${ay} ${(ax + bx) / 2},${by} ${bx},${by}`;
    let forward = `M${x1},${y1}`, at = [x1, y1];
    for (const gap of e.gaps || []) {
      const gy = gap.y + 9;
      forward += ` ${curve(at[0], at[1], gap.x, gy)} L${gap.x + g.W},${gy}`;
      at = [gap.x + g.W, gy];
    }
    forward += ` ${curve(at[0], at[1], x2, y2)}`;
    // A step that emits to itself (a retry timer, a parcel's next move)
    // gets a small loop on its top edge.
    const loop = `M${a.x + g.W - 34},${a.y} C${a.x + g.W - 34},${a.y - 16} ${a.x + g.W - 12},${a.y - 16} ${a.x + g.W - 12},${a.y}`;
    const d = e.from === e.to ? loop : back
      ? `M${a.x + g.W / 2 + 12},${a.y} C${a.x + g.W / 2 + 12},${e.peak} ${b.x + g.W / 2 - 12},${e.peak} ${b.x + g.W / 2 - 12},${b.y}`
      : forward;
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
  root.dataset.crossings = g.crossings;
  root.dataset.spine = g.spine.join(" ");
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

// ---- webhooks: shown when the host serves them (workbench_webhooks_router) ----

async function webhooks(now) {
  const card = $("webhooks-card");
  const response = await fetch(`${API}/webhooks${query()}`, { headers: { accept: "application/json" } });
  if (response.status === 404) { card.hidden = true; return; }
  card.hidden = false;
  const answer = await response.json();
  if (!response.ok) {
    $("webhooks-summary").textContent = "";
    $("webhooks").replaceChildren(el("p", { class: "muted" }, answer.code === "tenant_required"
      ? "Pick a tenant to see its endpoints and their deliveries." : answer.message));
    return;
  }
  $("webhooks-summary").textContent = `· ${answer.endpoints.length} endpoint${answer.endpoints.length === 1 ? "" : "s"}`;
  if (!answer.endpoints.length) {
    $("webhooks").replaceChildren(el("p", { class: "muted" }, "no endpoints registered"));
    return;
  }
  $("webhooks").replaceChildren(...answer.endpoints.map((e) => {
    const head = el("div", { class: "endpoint" },
      el("span", { class: e.enabled ? "pill ok" : "pill err" }, e.enabled ? "enabled" : "disabled"),
      el("span", { class: "mono" }, ` ${e.id} `), el("span", {}, e.url),
      el("span", { class: "muted" }, ` · ${e.topics.join(", ")}`),
      e.disabledReason ? el("span", { class: "err" }, ` · ${e.disabledReason}`) : "");
    const table = el("table", { class: "deliveries", "data-endpoint": e.id },
      el("thead", {}, el("tr", {}, ...["message", "topic", "state", "attempts", "last answer", "latency", "next try", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...(e.deliveries.length ? e.deliveries.map((d) => {
        const last = d.attempts[d.attempts.length - 1] || {};
        const replay = d.state === "deadLettered"
          ? el("button", { type: "button", class: "replay", onclick: async () => {
            const done = await post("/webhooks/replay", { tenant: state.tenant, endpoint: e.id, messageId: d.messageId });
            $("webhooks-summary").textContent = done.ok ? `· replayed ${d.messageId}` : `· ${done.body.message}`;
          } }, "Replay")
          : "";
        return el("tr", { "data-message": d.messageId },
          el("td", { class: "mono", title: d.messageId }, d.messageId.slice(0, 22) + "…"), el("td", {}, d.topic),
          el("td", { class: d.state === "delivered" ? "ok" : d.state === "deadLettered" ? "err" : "" }, d.state),
          el("td", { class: "n" }, d.attempts.length),
          el("td", { class: last.status >= 200 && last.status < 300 ? "" : "err", title: last.body || "" }, last.status ? String(last.status) : (last.error || "")),
          el("td", { class: "n" }, last.latencyMs !== undefined ? `${last.latencyMs} ms` : ""),
          el("td", {}, d.nextTryAt ? when(d.nextTryAt, now) : ""), el("td", {}, replay));
      }) : [el("tr", {}, el("td", { colspan: 8, class: "empty" }, "no deliveries yet"))])));
    return el("div", { class: "webhook" }, head, table);
  }));
}

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
    await webhooks(stats.now);
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
