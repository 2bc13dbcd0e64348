/*
 * Kumo dashboard. One script, no framework, no build step: it talks only to the REST API
 * of the controller that served it, keeps the cluster in a small store, and follows
 * GET /api/v1/events (SSE, read with fetch because EventSource cannot send the token)
 * to update what is on screen without reloading. The token lives in sessionStorage.
 */
"use strict";

const ROLES = { viewer: 1, operator: 2, admin: 3 };
const S = {
  token: sessionStorage.getItem("kumo-token") || "",
  role: "viewer",
  cluster: null,
  hosts: new Map(),
  insts: new Map(),
  ops: new Map(),
  events: [],
  lastEventId: null,
  stream: null,
  timer: 0,
};
const $ = (id) => document.getElementById(id);

/* ---- DOM helpers: text always goes in as text, never as markup ---- */

function el(tag, attrs, ...kids) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else if (k === "class") n.className = v;
    else n.setAttribute(k, v === true ? "" : v);
  }
  for (const c of kids.flat()) {
    if (c === undefined || c === null || c === false) continue;
    n.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return n;
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
            el("tbody", {}, rows));
}

function bar(value, max, label) {
  const pct = max > 0 ? Math.min(100, Math.round((100 * value) / max)) : 0;
  const fill = el("span", {});
  fill.style.width = pct + "%"; /* CSSOM, not a style attribute: the CSP allows no inline style */
  return el("div", { class: "bar", title: label || pct + "%" }, fill, el("em", {}, label || pct + "%"));
}

function stateSpan(s) { return el("span", { class: "state-" + s }, s); }
function mib(n) { return n >= 1024 ? (n / 1024).toFixed(1) + " GiB" : n + " MiB"; }
function bytes(n) {
  if (n === undefined || n === null) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}
function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 60 ? s + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
}

function toast(msg, bad) {
  const t = $("toast");
  t.textContent = msg;
  t.className = bad ? "bad" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 8000 : 3000);
}

/* A button for an action the role may not take is disabled, with the reason on hover. */
function can(role) { return ROLES[S.role] >= ROLES[role]; }
function actionButton(label, role, fn, extra) {
  const ok = can(role);
  return el("button", Object.assign({
    type: "button", "data-role": role, disabled: !ok,
    title: ok ? undefined : "needs the " + role + " role (this token is " + S.role + ")",
    onclick: async (e) => {
      e.target.disabled = true;
      try { await fn(); } finally { e.target.disabled = !can(role); }
    },
  }, extra || {}), label);
}

/* ---- the API ---- */

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || "HTTP " + status);
    this.status = status;
    this.field = body && body.field;
  }
}

async function api(method, path, body) {
  const opt = { method, headers: { Authorization: "Bearer " + S.token } };
  if (body !== undefined) {
    opt.headers["Content-Type"] = "application/json";
    opt.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, opt);
  } catch (e) {
    /* A network blip (the browser saw an interface change): one retry for reads. */
    if (method !== "GET") throw e;
    await new Promise((res) => setTimeout(res, 300));
    r = await fetch(path, opt);
  }
  let data = null;
  const text = await r.text();
  if (text) { try { data = JSON.parse(text); } catch (_) { data = { error: text.trim() }; } }
  if (r.status === 401) { signOut("The controller refused the token: " + ((data && data.error) || "unauthorized")); throw new ApiError(401, data); }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

/* Every page of a list. */
async function listAll(path, key) {
  const out = [];
  let after = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api("GET", path + sep + "limit=1000" + (after ? "&after=" + encodeURIComponent(after) : ""));
    out.push(...page[key]);
    after = page.next;
  } while (after);
  return out;
}

async function act(what, fn) {
  try {
    const r = await fn();
    if (r && r.id && r.status) { S.ops.set(r.id, r); toast(what + ": operation " + r.status); }
    else toast(what + ": done");
    schedule();
    return r;
  } catch (e) {
    if (e.status !== 401) toast(what + " failed: " + e.message, true);
    return null;
  }
}

/* ---- session ---- */

function signOut(msg) {
  S.token = "";
  sessionStorage.removeItem("kumo-token");
  if (S.stream) S.stream.abort();
  S.stream = null;
  $("bar").hidden = true;
  $("view").hidden = true;
  $("signin").hidden = false;
  $("signin-msg").textContent = msg || "";
}

async function signIn() {
  try {
    S.cluster = await api("GET", "/api/v1");
  } catch (e) {
    if (e.status !== 401) signOut("Cannot reach the API: " + e.message);
    return;
  }
  S.role = S.cluster.role;
  $("signin").hidden = true;
  $("bar").hidden = false;
  $("view").hidden = false;
  $("who").textContent = S.role + " · " + S.cluster.cluster_id.slice(0, 8);
  for (const a of document.querySelectorAll("#nav [data-role]"))
    a.hidden = !can(a.dataset.role);
  await loadAll();
  follow();
  render();
}

async function loadAll() {
  const [hosts, insts, ops] = await Promise.all([
    listAll("/api/v1/hosts", "hosts"),
    listAll("/api/v1/instances", "instances"),
    api("GET", "/api/v1/operations?limit=100"),
  ]);
  S.hosts = new Map(hosts.map((h) => [h.name, h]));
  S.insts = new Map(insts.map((i) => [i.name, i]));
  S.ops = new Map(ops.operations.map((o) => [o.id, o]));
}

/* ---- live updates ---- */

const refetch = { hosts: new Set(), insts: new Set() };

function onEvent(ev) {
  S.events.unshift(ev);
  if (S.events.length > 50) S.events.length = 50;
  const d = ev.data || {};
  if (ev.type.startsWith("operation-") && d.id) { opRateNote(d); S.ops.set(d.id, d); }
  else if (ev.type === "instance-deleted" && d.name) S.insts.delete(d.name);
  else if (ev.type.startsWith("instance-") && d.name) refetch.insts.add(d.name);
  else if (ev.type === "host-deleted" && d.name) S.hosts.delete(d.name);
  else if (ev.type.startsWith("host-") && d.name) refetch.hosts.add(d.name);
  if (ev.type.startsWith("operation-") && d.status !== "running" && (d.target || "").startsWith("instances/"))
    refetch.insts.add(d.target.slice("instances/".length));
  schedule();
}

/* Changes arrive in bursts: fetch what changed and redraw at most every 150 ms. */
function schedule() {
  if (S.timer) return;
  S.timer = setTimeout(async () => {
    S.timer = 0;
    const hosts = [...refetch.hosts], insts = [...refetch.insts];
    refetch.hosts.clear();
    refetch.insts.clear();
    await Promise.all([
      ...hosts.map((n) => api("GET", "/api/v1/hosts/" + encodeURIComponent(n))
        .then((h) => S.hosts.set(n, h), (e) => { if (e.status === 404) S.hosts.delete(n); })),
      ...insts.map((n) => api("GET", "/api/v1/instances/" + encodeURIComponent(n))
        .then((i) => S.insts.set(n, i), (e) => { if (e.status === 404) S.insts.delete(n); })),
    ]);
    render(true);
  }, 150);
}

/* Follow the event stream; reconnect with Last-Event-ID so nothing is missed. */
async function follow() {
  let delay = 500;
  while (S.token) {
    const ctl = new AbortController();
    S.stream = ctl;
    try {
      const headers = { Authorization: "Bearer " + S.token };
      if (S.lastEventId) headers["Last-Event-ID"] = S.lastEventId;
      const r = await fetch("/api/v1/events", { headers, signal: ctl.signal });
      if (r.status === 401) { signOut("The token was refused while following events."); return; }
      if (!r.ok) throw new Error("HTTP " + r.status);
      $("live").classList.add("on");
      delay = 500;
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const chunk = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let data = null;
          for (const line of chunk.split("\n")) {
            if (line.startsWith("id: ")) S.lastEventId = line.slice(4);
            else if (line.startsWith("data: ")) data = line.slice(6);
          }
          if (data) { try { onEvent(JSON.parse(data)); } catch (_) { /* not ours */ } }
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    $("live").classList.remove("on");
    await new Promise((res) => setTimeout(res, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

/* ---- views ---- */

const routes = [
  [/^#?\/?$/, viewOverview, true],
  [/^#\/instances$/, viewInstances, true],
  [/^#\/instances\/new\/(vm|container)$/, viewCreate, false],
  [/^#\/instances\/([^/]+)$/, viewInstance, true],
  [/^#\/hosts$/, viewHosts, true],
  [/^#\/hosts\/([^/]+)$/, viewHost, true],
  [/^#\/networks$/, viewNetworks, false],
  [/^#\/networks\/([^/]+)$/, viewNetwork, false],
  [/^#\/images$/, viewImages, false],
  [/^#\/operations$/, viewOperations, true],
  [/^#\/backups$/, viewBackups, false],
  [/^#\/ha$/, viewHA, true],
  [/^#\/tokens$/, viewTokens, false],
];

let current = { live: false, key: "" };
let renderGen = 0; /* a newer render, or the user taking over a view, drops an older one */

/* Draw the page for the hash. A live view is redrawn on changes; a form is not. */
async function render(fromEvent) {
  if (!S.token || $("view").hidden) return;
  const hash = location.hash || "#/";
  if (fromEvent && (!current.live || current.key !== hash)) return;
  for (const [re, fn, live] of routes) {
    const m = hash.match(re);
    if (!m) continue;
    current = { live, key: hash };
    /* A page drawn anew ends a console that was open (its WebSocket, a log follow). */
    if (!fromEvent && consolePanel.stop) { consolePanel.stop(); consolePanel.stop = null; }
    for (const a of document.querySelectorAll("#nav a"))
      a.classList.toggle("active", hash.startsWith(a.getAttribute("href")) && (a.getAttribute("href") !== "#/" || hash === "#/"));
    const keep = fromEvent ? saveInputs() : null;
    const t0 = performance.now(), gen = ++renderGen;
    const node = await fn(...m.slice(1).map(decodeURIComponent));
    if (current.key !== hash || gen !== renderGen) return;
    $("view").replaceChildren(node);
    if (keep) restoreInputs(keep);
    void document.body.offsetHeight; /* include layout in the measured time */
    window.kumoPerf = { view: hash, renderMs: performance.now() - t0 };
    return;
  }
  $("view").replaceChildren(el("p", { class: "error" }, "No such page: " + hash));
}

/* Filters keep their values and focus across live redraws. */
function saveInputs() {
  const vals = {};
  for (const i of $("view").querySelectorAll("[data-keep]")) vals[i.dataset.keep] = i.value;
  return { vals, focus: document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.keep : null };
}
function restoreInputs(k) {
  for (const i of $("view").querySelectorAll("[data-keep]"))
    if (i.dataset.keep in k.vals) i.value = k.vals[i.dataset.keep];
  if (k.focus) { const f = $("view").querySelector('[data-keep="' + k.focus + '"]'); if (f) f.focus(); }
}

function hostUsage(h) {
  let vcpus = 0, mem = 0, count = 0;
  for (const i of S.insts.values()) {
    if (i.host !== h.name) continue;
    count++;
    if (i.state !== "running") continue;
    vcpus += i.vcpus || 0;
    mem += i.type === "vm" ? (i.memory && (i.memory.max_mb || i.memory.mb)) || 0 : (i.limits && i.limits.memory_mb) || 0;
  }
  return { vcpus, mem, count };
}

function hostRow(h) {
  const f = h.facts || {}, u = hostUsage(h);
  const net = h.network || {};
  return el("tr", {},
    el("td", {}, el("a", { href: "#/hosts/" + encodeURIComponent(h.name) }, h.name)),
    el("td", {}, stateSpan(h.state), h.maintenance ? el("span", { class: "muted" }, " (maintenance)") : ""),
    el("td", {}, (f.accel || "").toUpperCase()),
    el("td", {}, bar(u.vcpus, f.cpus || 0, u.vcpus + " / " + (f.cpus || "?") + " vCPU")),
    el("td", {}, bar(u.mem, f.memory_mb || 0, mib(u.mem) + " / " + mib(f.memory_mb || 0))),
    el("td", { class: "num", title: "1, 5 and 15 minute load" }, Array.isArray(f.load) ? f.load.map((x) => Number(x).toFixed(2)).join(" ") : ""),
    el("td", { class: "num" }, u.count),
    el("td", {}, net.in_sync === false ? el("span", { class: "state-pending" }, "syncing") : "in sync"));
}

/*
 * A backup reports its bytes only inside its phase ("reading disk root: 12 of 64 MiB"):
 * the page derives the disk's read rate from its first such report and the latest,
 * timed by the controller's updated_at (so a burst of events replayed after a reconnect
 * stays right, and two reports close together do not make a spike).
 */
const READING = /^reading disk (\S+): (\d+) of \d+ MiB/;
const opRates = new Map(); /* op id -> { disk, mib, at, bps }: the disk's first report */
function opRateNote(o) {
  const m = READING.exec(o.phase || "");
  if (o.status !== "pending" && o.status !== "running") opRates.delete(o.id);
  if (!m || !o.updated_at) return;
  const first = opRates.get(o.id), mib = Number(m[2]);
  if (!first || first.disk !== m[1]) opRates.set(o.id, { disk: m[1], mib, at: o.updated_at, bps: 0 });
  else if (o.updated_at > first.at && mib > first.mib)
    first.bps = ((mib - first.mib) * 1048576 * 1000) / (o.updated_at - first.at);
}
/* The read rate while o reads the disk its rate is of, else 0. */
function opRate(o) {
  const m = READING.exec(o.phase || ""), r = opRates.get(o.id);
  return m && r && r.disk === m[1] ? r.bps : 0;
}

/* An active operation: its bar (percent) and what it is doing, in numbers. */
function opProgress(o) {
  const m = (o.result && o.result.migration) || o.migration || null;
  const bits = [o.phase || o.status];
  if (m) {
    if (m.ram_transferred !== undefined) bits.push(bytes(m.ram_transferred) + " of " + bytes(m.ram_total));
    if (m.bandwidth_mbps) bits.push("at " + Number(m.bandwidth_mbps).toFixed(1) + " Mbit/s");
    if (m.dirty_rate_pps !== undefined) bits.push(m.dirty_rate_pps + " pages/s dirty");
    if (m.expected_downtime_ms !== undefined) bits.push("downtime ≈ " + m.expected_downtime_ms + " ms");
  }
  if (opRate(o)) bits.push("at " + bytes(opRate(o)) + "/s");
  return el("div", { class: "op-progress", "data-progress": o.progress || 0 },
    bar(o.progress || 0, 100, (o.progress || 0) + "% · " + bits.join(" · ")));
}

/* A finished operation: its error, or what it did (a backup's bytes and rate, a
 * migration's downtime), else its last phase. */
function opOutcome(o) {
  if (o.error) return el("span", { class: "error" }, o.error);
  const b = o.result && typeof o.result.backup === "object" ? o.result.backup : null;
  if (b && b.read_bytes !== undefined)
    return el("span", { class: "op-outcome" }, bytes(b.read_bytes) + " read" +
      (b.duration_ms > 0 ? " at " + bytes((b.read_bytes * 1000) / b.duration_ms) + "/s" : "") +
      (b.new_bytes !== undefined ? ", " + bytes(b.new_bytes) + " new in the store" : "") +
      (b.duration_ms !== undefined ? " in " + (b.duration_ms / 1000).toFixed(1) + " s" : ""));
  if (o.kind === "migrate" && o.result && o.result.downtime_ms !== undefined)
    return el("span", { class: "op-outcome" }, (o.result.strategy || "migrated") + ", downtime " + o.result.downtime_ms + " ms" +
      (o.result.migration && o.result.migration.ram_transferred ? ", " + bytes(o.result.migration.ram_transferred) + " of memory sent" : ""));
  return o.phase || "";
}

/* An operation's target is "instances/NAME", "hosts/NAME", "images/NAME"...: its link. */
function targetLink(t) {
  if (!t) return "";
  const [kind, ...rest] = t.split("/");
  const name = rest.join("/");
  const page = { instances: "instances", hosts: "hosts", networks: "networks" }[kind];
  return page && name ? el("a", { href: "#/" + page + "/" + encodeURIComponent(name) }, t) : t;
}

function opRow(o, withCancel) {
  const active = o.status === "pending" || o.status === "running";
  return el("tr", { "data-op": o.id },
    el("td", {}, o.kind),
    el("td", {}, targetLink(o.target)),
    el("td", {}, o.host || ""),
    el("td", {}, stateSpan(o.status)),
    el("td", {}, active ? opProgress(o) : opOutcome(o)),
    el("td", {}, ago(o.updated_at || o.created_at)),
    withCancel ? el("td", {}, active ? actionButton("Cancel", "operator", () => act("cancel", () =>
      api("POST", "/api/v1/operations/" + o.id + "/actions/cancel"))) : "") : null);
}

function viewOverview() {
  const hosts = [...S.hosts.values()];
  const insts = [...S.insts.values()];
  let cpus = 0, mem = 0, ucpu = 0, umem = 0;
  for (const h of hosts) {
    if (h.state !== "online") continue;
    cpus += (h.facts && h.facts.cpus) || 0;
    mem += (h.facts && h.facts.memory_mb) || 0;
    const u = hostUsage(h);
    ucpu += u.vcpus;
    umem += u.mem;
  }
  const active = [...S.ops.values()].filter((o) => o.status === "pending" || o.status === "running");
  return el("div", {},
    el("h1", {}, "Overview"),
    el("div", { class: "grid" },
      el("div", { class: "card stat", id: "stat-hosts" }, el("b", {}, hosts.filter((h) => h.state === "online").length + " / " + hosts.length), "hosts online"),
      el("div", { class: "card stat", id: "stat-instances" }, el("b", {}, insts.filter((i) => i.state === "running").length + " / " + insts.length), "instances running"),
      el("div", { class: "card stat" }, el("b", {}, ucpu + " / " + cpus), "vCPUs used", bar(ucpu, cpus)),
      el("div", { class: "card stat" }, el("b", {}, mib(umem) + " / " + mib(mem)), "memory used", bar(umem, mem))),
    el("h2", {}, "Hosts"),
    table(["Host", "State", "Accel", "CPU", "Memory", "Load", "Instances", "Network"], hosts.map(hostRow)),
    el("h2", {}, "Operations in flight"),
    active.length ? table(["Kind", "Target", "Host", "Status", "Progress", "Updated", ""], active.map((o) => opRow(o, true)))
      : el("p", { class: "muted" }, "None."),
    el("h2", {}, "Recent events"),
    S.events.length ? table(["Time", "Type", "About"], S.events.slice(0, 15).map((e) => el("tr", {},
      el("td", {}, new Date(e.time).toLocaleTimeString()), el("td", {}, e.type),
      el("td", {}, (e.data && (e.data.name || e.data.target || e.data.id)) || ""))))
      : el("p", { class: "muted" }, "No events since this page opened."));
}

function viewInstances() {
  const q = (k) => { const i = document.querySelector('[data-keep="' + k + '"]'); return i ? i.value : ""; };
  const f = { type: q("f-type"), state: q("f-state"), host: q("f-host"), text: q("f-text").toLowerCase() };
  const all = [...S.insts.values()].sort((a, b) => a.name.localeCompare(b.name));
  const match = (i) => (!f.type || i.type === f.type) && (!f.state || i.state === f.state) &&
    (!f.host || i.host === f.host) &&
    (!f.text || i.name.toLowerCase().includes(f.text) ||
     Object.entries(i.labels || {}).some(([k, v]) => (k + "=" + v).toLowerCase().includes(f.text)) ||
     (i.nics || []).some((n) => (n.network || "").toLowerCase().includes(f.text) || (n.address || "").includes(f.text)));
  const opts = (vals) => [el("option", { value: "" }, "any"), ...[...new Set(vals)].sort().map((v) => el("option", { value: v }, v))];
  const redraw = () => render(true);
  const rows = all.filter(match).map((i) => el("tr", { "data-name": i.name },
    el("td", {}, el("a", { href: "#/instances/" + encodeURIComponent(i.name) }, i.name)),
    el("td", {}, i.type), el("td", {}, stateSpan(i.state)), el("td", {}, i.host || ""),
    el("td", {}, (i.nics || []).map((n) => n.address).filter(Boolean).join(", ")),
    el("td", {}, Object.entries(i.labels || {}).map(([k, v]) => k + "=" + v).join(" ")),
    el("td", { class: "actions" }, lifecycleButtons(i, true))));
  return el("div", {},
    el("h1", {}, "Instances"),
    el("p", { class: "actions" },
      actionButton("New VM", "operator", () => { location.hash = "#/instances/new/vm"; }),
      actionButton("New container", "operator", () => { location.hash = "#/instances/new/container"; })),
    el("div", { class: "filters" },
      el("label", {}, "Type ", el("select", { "data-keep": "f-type", onchange: redraw }, opts(["vm", "container"]))),
      el("label", {}, "State ", el("select", { "data-keep": "f-state", onchange: redraw }, opts(all.map((i) => i.state)))),
      el("label", {}, "Host ", el("select", { "data-keep": "f-host", onchange: redraw }, opts([...S.hosts.keys()]))),
      el("label", {}, "Name, label or network ", el("input", { "data-keep": "f-text", oninput: redraw }))),
    table(["Name", "Type", "State", "Host", "Addresses", "Labels", ""], rows));
}

function actionCall(i, action, body) {
  return act(action + " " + i.name, () =>
    api("POST", "/api/v1/instances/" + encodeURIComponent(i.name) + "/actions/" + action, body || {}));
}

function lifecycleButtons(i, short) {
  const b = [];
  const s = i.state;
  if (s === "stopped" || s === "crashed") b.push(actionButton("Start", "operator", () => actionCall(i, "start")));
  if (s === "running") {
    b.push(actionButton("Stop", "operator", () => actionCall(i, "stop")));
    if (!short) {
      b.push(actionButton("Force stop", "operator", () => actionCall(i, "force-stop")));
      b.push(actionButton(i.type === "vm" ? "Reboot" : "Restart", "operator", () => actionCall(i, i.type === "vm" ? "reboot" : "restart")));
      if (i.type === "vm") b.push(actionButton("Pause", "operator", () => actionCall(i, "pause")));
    }
  }
  if (s === "paused") {
    b.push(actionButton("Force stop", "operator", () => actionCall(i, "force-stop")));
  }
  if (s === "paused") b.push(actionButton("Resume", "operator", () => actionCall(i, "resume")));
  if (!short) b.push(actionButton("Delete", "operator", async () => {
    if (!confirm("Delete " + i.name + "?")) return;
    const r = await act("delete " + i.name, () => api("DELETE", "/api/v1/instances/" + encodeURIComponent(i.name)));
    if (r !== null) location.hash = "#/instances";
  }));
  return b;
}

function kv(obj) {
  return el("dl", { class: "kv" }, Object.entries(obj).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

async function viewInstance(name) {
  let i = S.insts.get(name);
  if (!i) {
    try { i = await api("GET", "/api/v1/instances/" + encodeURIComponent(name)); S.insts.set(name, i); }
    catch (e) { return el("p", { class: "error" }, "Instance " + name + ": " + e.message); }
  }
  const snaps = i.type === "vm" ? await api("GET", "/api/v1/instances/" + encodeURIComponent(name) + "/snapshots").catch(() => null) : null;
  const usage = await api("GET", "/api/v1/instances/" + encodeURIComponent(name) + "/metrics").catch(() => null);
  const ops = [...S.ops.values()].filter((o) => o.target === "instances/" + name)
    .sort((a, b) => (b.created_at || 0) - (a.created_at || 0));
  const pl = i.placement || {};
  /* The migrate picker asks the scheduler (a dry run): each host with its score, or why
   * it cannot take the VM; those are listed but cannot be picked. */
  const dry = i.type === "vm" && i.state === "running"
    ? await api("GET", "/api/v1/instances/" + encodeURIComponent(name) + "/placement?for=migrate").catch((e) => ({ error: e.message }))
    : null;
  const targets = (dry && dry.hosts) || [];
  const migrateHost = el("select", { "data-keep": "mig-host", id: "migrate-host" },
    el("option", { value: "" }, "scheduler's choice" + (dry && dry.host ? " (" + dry.host + ")" : "")),
    targets.map((t) => el("option", { value: t.host, disabled: !t.fits, title: t.reason || "" },
      t.fits ? t.host + " · score " + t.score : t.host + " — " + t.reason)));
  const picker = dry ? el("div", { class: "card", id: "migrate-picker" }, el("h2", {}, "Where a migration would go"),
    dry.error ? el("p", { class: "error" }, "placement: " + dry.error)
      : [dry.blocked ? el("p", { class: "error", id: "migrate-blocked" }, "Cannot migrate: " + dry.blocked) : "",
        el("p", { class: "muted" }, "From ", el("b", {}, dry.source), "; the scheduler (" + dry.policy + ") would pick ",
          el("b", {}, dry.host || "no host"), "."),
        table(["Host", "Fits", "Score or why not"], targets.map((t) => el("tr", { "data-host": t.host },
          el("td", {}, t.host), el("td", {}, t.fits ? "yes" : "no"), el("td", {}, t.fits ? String(t.score) : t.reason))))]) : "";
  const snapName = el("input", { "data-keep": "snap-name", placeholder: "snapshot name", size: 14 });
  return el("div", {},
    el("h1", {}, i.name, " ", stateSpan(i.state)),
    el("div", { class: "card actions" }, lifecycleButtons(i, false),
      i.state === "running" ? el("span", {}, " · migrate to ", migrateHost, " ",
        actionButton("Migrate", "operator", () => actionCall(i, "migrate", migrateHost.value ? { host: migrateHost.value } : {}))) : ""),
    picker,
    el("div", { class: "grid" },
      el("div", { class: "card" }, el("h2", {}, "Instance"), kv({
        type: i.type, host: i.host || "—", vcpus: i.vcpus ?? "", memory: JSON.stringify(i.type === "vm" ? i.memory : i.limits) || "",
        image: typeof i.image === "object" && i.image ? i.image.ref || i.image.name || JSON.stringify(i.image) : i.image || "", created: i.created_at ? new Date(i.created_at).toLocaleString() : "", labels: JSON.stringify(i.labels || {}) })),
      el("div", { class: "card" }, el("h2", {}, "Placement"),
        pl.host ? el("p", {}, "Placed on ", el("b", {}, pl.host), pl.policy ? " by " + pl.policy : "", pl.score !== undefined ? " (score " + pl.score + ")" : "") : el("p", { class: "muted" }, "No placement recorded."),
        (pl.rejected || []).length ? table(["Host", "Why not"], pl.rejected.map((r) => el("tr", {}, el("td", {}, r.host || r.name || ""), el("td", {}, r.reason || JSON.stringify(r))))) : "")),
    el("h2", {}, "Last hour"),
    charts(usage),
    el("h2", {}, "Network interfaces"),
    table(["#", "Network", "Address", "MAC", "Model"], (i.nics || []).map((n, k) => el("tr", {},
      el("td", {}, k), el("td", {}, n.network || "(default)"), el("td", {}, n.address || ""), el("td", {}, n.mac || ""), el("td", {}, n.model || "")))),
    i.type === "vm" ? [el("h2", {}, "Disks"), table(["Name", "Image", "Bus", "Pool", "Size"], (i.disks || []).map((d) => el("tr", {},
      el("td", {}, d.name), el("td", {}, d.image || ""), el("td", {}, d.bus || ""), el("td", {}, d.pool || ""),
      el("td", {}, d.size_mb ? mib(d.size_mb) : ""))))] : "",
    snaps ? [el("h2", {}, "Snapshots"), el("p", { class: "actions" }, snapName, " ",
      actionButton("Take snapshot", "operator", () => act("snapshot", () =>
        api("POST", "/api/v1/instances/" + encodeURIComponent(name) + "/snapshots", { name: snapName.value })))),
      table(["Name", "Created", ""], (snaps.snapshots || []).map((s) => el("tr", {}, el("td", {}, s.name),
        el("td", {}, s.created_at ? new Date(s.created_at).toLocaleString() : ""),
        el("td", { class: "actions" }, actionButton("Revert", "operator", () => act("revert", () =>
          api("POST", "/api/v1/instances/" + encodeURIComponent(name) + "/snapshots/" + encodeURIComponent(s.name) + "/actions/revert", {}))),
          actionButton("Delete", "operator", () => act("delete snapshot", () =>
            api("DELETE", "/api/v1/instances/" + encodeURIComponent(name) + "/snapshots/" + encodeURIComponent(s.name))))))))] : "",
    el("h2", {}, "Operations"),
    ops.length ? table(["Kind", "Target", "Host", "Status", "Progress", "Updated", ""], ops.map((o) => opRow(o, true))) : el("p", { class: "muted" }, "None recent."),
    el("h2", {}, i.type === "vm" ? "Consoles" : "Logs"),
    consolePanel(i));
}

/*
 * A line chart of the last hour, drawn as SVG by hand: three small charts do not need a
 * library (and the page stays small and offline).
 */
function chart(title, samples, series, fmt) {
  const W = 360, H = 90, NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  const max = Math.max(1e-9, ...samples.flatMap((x) => series.map((se) => x[se.key] || 0)));
  const t0 = Date.now() - 3600 * 1000;
  for (const se of series) {
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", samples.map((x) =>
      `${(((x.t - t0) / 3600000) * W).toFixed(1)},${(H - 4 - ((x[se.key] || 0) / max) * (H - 8)).toFixed(1)}`).join(" "));
    line.setAttribute("class", "series " + se.cls);
    svg.append(line);
    if (samples.length) { /* the newest point, so even one sample shows */
      const x = samples[samples.length - 1], dot = document.createElementNS(NS, "circle");
      dot.setAttribute("cx", (((x.t - t0) / 3600000) * W).toFixed(1));
      dot.setAttribute("cy", (H - 4 - ((x[se.key] || 0) / max) * (H - 8)).toFixed(1));
      dot.setAttribute("r", "2.5");
      dot.setAttribute("class", "dot-" + se.cls);
      svg.append(dot);
    }
  }
  const last = samples.length ? samples[samples.length - 1] : null;
  return el("div", { class: "card chart-card", "data-chart": title },
    el("div", {}, el("b", {}, title), " ",
      el("span", { class: "muted" }, last ? series.map((se) => se.label + " " + fmt(last[se.key] || 0)).join(" · ") + " · max " + fmt(max) : "no samples yet")),
    svg);
}

function charts(m) {
  const s = (m && m.samples) || [];
  const rate = (b) => bytes(b) + "/s";
  return el("div", { class: "grid", id: "charts" },
    chart("CPU", s, [{ key: "cpu_pct", label: "now", cls: "a" }], (v) => v.toFixed(1) + "%"),
    chart("Memory", s, [{ key: "mem_bytes", label: "now", cls: "a" }], bytes),
    chart("Network", s, [{ key: "rx_bps", label: "in", cls: "a" }, { key: "tx_bps", label: "out", cls: "b" }], rate));
}

/* Load a script or stylesheet of ours once, when first needed (the terminal's library
 * is not part of the first load). */
const loaded = new Map();
function loadAsset(name) {
  if (!loaded.has(name)) {
    loaded.set(name, new Promise((resolve, reject) => {
      const n = name.endsWith(".css") ? el("link", { rel: "stylesheet", href: "/ui/" + name })
        : el("script", { src: "/ui/" + name });
      n.addEventListener("load", resolve);
      n.addEventListener("error", () => { loaded.delete(name); reject(new Error("cannot load " + name)); });
      document.head.append(n);
    }));
  }
  return loaded.get(name);
}

/*
 * xterm.js writes its colours and cell sizes into <style> elements, which the page's
 * policy (style-src 'self', no inline style) refuses. It creates them through its
 * documentOverride, so it gets this document, whose <style> is an inert element that
 * hands its text to a constructed stylesheet instead: the policy governs markup, not
 * the CSSOM, so the page stays strict and the terminal gets its styles.
 */
const cspDocument = new Proxy(document, {
  get(target, key) {
    if (key === "createElement") {
      return (tag, opts) => {
        if (String(tag).toLowerCase() !== "style") return target.createElement(tag, opts);
        const n = target.createElement("kumo-style"), sheet = new CSSStyleSheet();
        let css = "";
        document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
        Object.defineProperty(n, "textContent", { get: () => css, set: (v) => { css = String(v); sheet.replaceSync(css); } });
        n.remove = () => {
          document.adoptedStyleSheets = document.adoptedStyleSheets.filter((x) => x !== sheet);
          Element.prototype.remove.call(n);
        };
        return n;
      };
    }
    const v = Reflect.get(target, key);
    return typeof v === "function" ? v.bind(target) : v;
  },
});

/*
 * A VM's serial console in a terminal (xterm.js: a real VT100 emulator, so full-screen
 * programs, colours, line editing and Ctrl keys work as on the host's console). The
 * history comes from GET .../console; then a WebSocket carries the guest's bytes to the
 * terminal and every key to the guest's serial port. The token travels as a WebSocket
 * subprotocol (a browser cannot set headers there, and a URL would leak it to logs).
 */
async function vmTerminal(i, box, state) {
  const base = "/api/v1/instances/" + encodeURIComponent(i.name);
  await Promise.all([loadAsset("xterm.css"), loadAsset("xterm.js")]);
  const term = new Terminal({ rows: 30, cols: 100, scrollback: 5000, fontSize: 13, documentOverride: cspDocument });
  box.replaceChildren();
  term.open(box);
  /* xterm.js draws nothing while it is off screen (it watches its visibility), and a
   * terminal opened below the fold is one the user is about to read. */
  box.scrollIntoView({ block: "nearest" });
  const r = await fetch(base + "/console?bytes=65536", { headers: { Authorization: "Bearer " + S.token } });
  if (r.ok) term.write(new Uint8Array(await r.arrayBuffer()));
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + base + "/console/ws",
    ["kumo", "kumo.token." + S.token]);
  ws.binaryType = "arraybuffer";
  const enc = new TextEncoder();
  state.textContent = "connecting…";
  ws.onopen = () => { state.textContent = "connected: typing goes to the guest's serial port"; term.focus(); };
  ws.onmessage = (e) => term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
  ws.onclose = (e) => {
    state.textContent = "closed" + (e.reason ? ": " + e.reason : e.code === 1006 ? ": the connection failed (is the VM running?)" : "");
    term.options.disableStdin = true;
  };
  term.onData((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d)); });
  /* Leaving the page or the instance closes the socket, and the controller its relay. */
  const prev = consolePanel.stop;
  consolePanel.stop = () => { if (prev) prev(); ws.close(); term.dispose(); };
}

/*
 * A VM's screen through noVNC: QEMU's VNC server on its host, relayed by the agent and
 * the controller over GET .../vnc/ws (the token again a subprotocol). noVNC is ES
 * modules, imported only now, so the first load does not carry it.
 */
async function vmScreen(i, box, state) {
  const { default: RFB } = await import("/ui/novnc/core/rfb.js");
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host +
    "/api/v1/instances/" + encodeURIComponent(i.name) + "/vnc/ws";
  box.replaceChildren();
  state.textContent = "connecting…";
  const rfb = new RFB(box, url, { wsProtocols: ["kumo", "kumo.token." + S.token], shared: true });
  box.scrollIntoView({ block: "nearest" });
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => { state.textContent = "connected: the VM's screen; keys and mouse go to the guest"; });
  rfb.addEventListener("disconnect", (e) => {
    state.textContent = "closed" + (e.detail.clean ? "" : ": the connection failed (is the VM running?)");
  });
  const prev = consolePanel.stop;
  consolePanel.stop = () => { if (prev) prev(); rfb.disconnect(); };
}

/* The VM's serial console in a terminal, or a container's log followed live. */
function consolePanel(i) {
  const pre = el("pre", { id: "console" }, "");
  const base = "/api/v1/instances/" + encodeURIComponent(i.name);
  if (!can("operator")) return el("p", { class: "muted" }, "Reading consoles needs the operator role (this token is " + S.role + ").");
  if (consolePanel.stop) { consolePanel.stop(); consolePanel.stop = null; }
  const box = el("div", { id: "terminal", hidden: true });
  const state = el("p", { id: "console-state", class: "muted" });
  const follow = async () => {
    try {
      pre.textContent = "";
      const ctl = new AbortController();
      consolePanel.stop = () => ctl.abort();
      const r = await fetch(base + "/logs?tail=200&follow=1", { headers: { Authorization: "Bearer " + S.token }, signal: ctl.signal });
      if (!r.ok) { pre.textContent = "logs: HTTP " + r.status; return; }
      const reader = r.body.getReader(), dec = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done || !pre.isConnected) { ctl.abort(); break; }
        pre.textContent += dec.decode(value, { stream: true });
        pre.scrollTop = pre.scrollHeight;
      }
    } catch (_) { /* closed */ }
  };
  const screen = el("div", { id: "screen", hidden: true });
  const screenState = el("p", { id: "screen-state", class: "muted" });
  const screenButton = i.type === "vm" ? el("button", { type: "button", id: "vnc-open", onclick: (e) => {
    current.live = false;
    renderGen++;
    e.target.disabled = true;
    screen.hidden = false;
    vmScreen(i, screen, screenState).catch((err) => { screenState.textContent = "screen: " + err.message; e.target.disabled = false; });
  } }, "Open screen (VNC)") : null;
  return el("div", {}, el("p", { class: "actions" }, screenButton, " ",
    el("button", { type: "button", id: "console-open", onclick: (e) => {
      current.live = false;
      renderGen++;
      e.target.disabled = true;
      if (i.type !== "vm") { follow(); return; }
      box.hidden = false;
      vmTerminal(i, box, state).catch((err) => { state.textContent = "console: " + err.message; e.target.disabled = false; });
    } }, i.type === "vm" ? "Open console" : "Follow logs")), i.type === "vm" ? [screenState, screen, state, box] : pre);
}

/* ---- create forms: the API's 4xx error is shown next to the field it names ---- */

/* A command is words split on spaces, or a JSON array of strings for anything quoted. */
function parseCommand(text) {
  if (!text) return undefined;
  if (text.startsWith("[")) { try { return JSON.parse(text); } catch (_) { return [text]; } }
  return text.split(/\s+/);
}

function field(label, input, name) {
  return el("label", { "data-field": name }, label, " ", input, el("span", { class: "field-error" }));
}

function showFieldError(form, e) {
  for (const s of form.querySelectorAll(".field-error")) s.textContent = "";
  const msg = form.querySelector(".form-error");
  let f = e.field || "";
  let target = null;
  while (f && !target) {
    target = form.querySelector('[data-field="' + f + '"] .field-error');
    f = f.replace(/(\[\d+\]|\.[^.[]*)$/, "");
  }
  if (target) { target.textContent = e.message; msg.textContent = ""; }
  else msg.textContent = e.message;
}

async function viewCreate(type) {
  const nets = await listAll("/api/v1/networks", "networks").catch(() => []);
  const images = type === "vm" ? await listAll("/api/v1/images", "images").catch(() => []) : [];
  const netSel = el("select", {}, el("option", { value: "" }, "default"), nets.map((n) => el("option", { value: n.name }, n.name + " (" + n.cidr + ")")));
  const hostSel = el("select", {}, el("option", { value: "" }, "scheduler's choice"), [...S.hosts.keys()].map((h) => el("option", { value: h }, h)));
  const name = el("input", { required: true, id: "f-name" });
  const start = el("input", { type: "checkbox", checked: true });
  let inputs, build;
  if (type === "vm") {
    const vcpus = el("input", { type: "number", value: 1, min: 1 });
    const memMin = el("input", { type: "number", value: 128, min: 16 });
    const memMax = el("input", { type: "number", value: 256, min: 16 });
    const image = el("select", {}, images.map((i) => el("option", { value: i.name }, i.name)));
    const bus = el("select", {}, ["virtio", "scsi", "sata", "ide"].map((b) => el("option", { value: b }, b)));
    const ci = el("textarea", { placeholder: "#cloud-config (optional)" });
    inputs = [field("vCPUs", vcpus, "vcpus"), field("Memory min (MiB)", memMin, "memory.min_mb"),
      field("Memory max (MiB)", memMax, "memory.max_mb"), field("Disk image", image, "disks"),
      field("Disk bus", bus, "disks[0].bus"), field("Cloud-init user data", ci, "cloud_init")];
    build = () => {
      const b = { name: name.value.trim(), type: "vm", vcpus: Number(vcpus.value),
        memory: { min_mb: Number(memMin.value), max_mb: Number(memMax.value) },
        disks: [{ name: "root", image: image.value, bus: bus.value }], nics: [{ model: "virtio" }] };
      if (ci.value.trim()) b.cloud_init = { user_data: ci.value };
      return b;
    };
  } else {
    const image = el("input", { value: "busybox:latest", id: "f-image" });
    const cmd = el("input", { value: "sleep 3600", size: 40, id: "f-command", title: "words, or a JSON array: [\"sh\", \"-c\", \"...\"]" });
    const env = el("textarea", { placeholder: "KEY=value, one per line" });
    const memLim = el("input", { type: "number", value: 64, min: 4, id: "f-memory" });
    const pids = el("input", { type: "number", value: 100, min: 1 });
    const restart = el("select", {}, ["no", "on-failure", "always"].map((r) => el("option", { value: r }, r)));
    inputs = [field("Image", image, "image"), field("Command", cmd, "command"), field("Environment", env, "env"),
      field("Memory limit (MiB)", memLim, "limits.memory_mb"), field("Process limit", pids, "limits.pids"),
      field("Restart", restart, "restart")];
    build = () => {
      const b = { name: name.value.trim(), type: "container", image: image.value.trim(),
        command: parseCommand(cmd.value.trim()),
        limits: { memory_mb: Number(memLim.value), pids: Number(pids.value) }, restart: restart.value };
      const e = {};
      for (const line of env.value.split("\n")) {
        const k = line.indexOf("=");
        if (k > 0) e[line.slice(0, k).trim()] = line.slice(k + 1);
      }
      if (Object.keys(e).length) b.env = e;
      return b;
    };
  }
  const form = el("form", { class: "card", id: "create-form" },
    field("Name", name, "name"), inputs, field("Network", netSel, "nics"), field("Host", hostSel, "host"),
    el("label", {}, start, " start it once created"),
    el("p", { class: "form-error error", role: "alert" }),
    el("button", { type: "submit", class: "primary", disabled: !can("operator"),
      title: can("operator") ? undefined : "needs the operator role (this token is " + S.role + ")" }, "Create"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const b = build();
    if (netSel.value) b.nics = [Object.assign(type === "vm" ? { model: "virtio" } : {}, { network: netSel.value })];
    if (hostSel.value) b.host = hostSel.value;
    b.start = start.checked;
    try {
      const op = await api("POST", "/api/v1/instances", b);
      if (op && op.id) S.ops.set(op.id, op);
      toast("Creating " + b.name);
      location.hash = "#/instances/" + encodeURIComponent(b.name);
    } catch (e) {
      if (e.status !== 401) showFieldError(form, e);
    }
  });
  return el("div", {}, el("h1", {}, type === "vm" ? "New VM" : "New container"), form);
}

function viewHosts() {
  return el("div", {}, el("h1", {}, "Hosts"),
    table(["Host", "State", "Accel", "CPU", "Memory", "Load", "Instances", "Network"], [...S.hosts.values()].map(hostRow)));
}

function viewHost(name) {
  const h = S.hosts.get(name);
  if (!h) return el("p", { class: "error" }, "No host " + name);
  const f = h.facts || {};
  const insts = [...S.insts.values()].filter((i) => i.host === name);
  return el("div", {}, el("h1", {}, h.name, " ", stateSpan(h.state)),
    el("div", { class: "card actions" },
      actionButton(h.maintenance ? "End maintenance" : "Maintenance", "operator", () => act("maintenance", () =>
        api("PATCH", "/api/v1/hosts/" + encodeURIComponent(name), { maintenance: !h.maintenance }).then((x) => { S.hosts.set(name, x); return x; }))),
      actionButton("Evacuate", "operator", () => act("evacuate " + name, () =>
        api("POST", "/api/v1/hosts/" + encodeURIComponent(name) + "/actions/evacuate", {}))),
      actionButton("Probe", "operator", () => act("probe", () => api("POST", "/api/v1/hosts/" + encodeURIComponent(name) + "/actions/probe", {})))),
    el("div", { class: "card" }, kv({ address: h.address, accel: f.accel || "", cpus: f.cpus ?? "", memory: mib(f.memory_mb || 0),
      "memory free": mib(f.memory_free_mb || 0), load: Array.isArray(f.load) ? f.load.join(" ") : "", kernel: f.kernel || "", agent: f.agent_version || "",
      "heartbeat": ((h.heartbeat_age_ms || 0) / 1000).toFixed(1) + " s ago", labels: JSON.stringify(h.labels || {}) })),
    el("h2", {}, "Instances"),
    table(["Name", "Type", "State"], insts.map((i) => el("tr", {}, el("td", {}, el("a", { href: "#/instances/" + encodeURIComponent(i.name) }, i.name)),
      el("td", {}, i.type), el("td", {}, stateSpan(i.state))))),
    (h.unmanaged || []).length ? [el("h2", {}, "Unmanaged"), el("pre", { class: "light" }, JSON.stringify(h.unmanaged, null, 2))] : "");
}

/* CIDR facts computed here: network, broadcast, usable range, class, private. */
function cidrFacts(cidr) {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/.exec(cidr || "");
  if (!m) return {};
  const ip = ((+m[1] << 24) >>> 0) + (+m[2] << 16) + (+m[3] << 8) + +m[4], len = +m[5];
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  const net = (ip & mask) >>> 0, bc = (net | (~mask >>> 0)) >>> 0;
  const s = (x) => [x >>> 24, (x >>> 16) & 255, (x >>> 8) & 255, x & 255].join(".");
  const a = +m[1];
  const cls = a < 128 ? "A" : a < 192 ? "B" : a < 224 ? "C" : a < 240 ? "D" : "E";
  const priv = a === 10 || (a === 172 && +m[2] >= 16 && +m[2] < 32) || (a === 192 && +m[2] === 168);
  return { network: s(net), broadcast: s(bc), usable: len >= 31 ? s(net) + " – " + s(bc) : s(net + 1) + " – " + s(bc - 1),
    hosts: len >= 31 ? 2 ** (32 - len) : 2 ** (32 - len) - 2, class: cls, private: priv ? "yes" : "no" };
}

async function viewNetworks() {
  const nets = await listAll("/api/v1/networks", "networks");
  return el("div", {}, el("h1", {}, "Networks"),
    table(["Name", "Mode", "CIDR", "Network", "Broadcast", "Usable", "Class", "Private", "VLANs", "MTU"], nets.map((n) => {
      const c = cidrFacts(n.cidr);
      return el("tr", {}, el("td", {}, el("a", { href: "#/networks/" + encodeURIComponent(n.name) }, n.name)), el("td", {}, n.mode),
        el("td", {}, n.cidr), el("td", {}, c.network || ""), el("td", {}, c.broadcast || ""), el("td", {}, c.usable || ""),
        el("td", {}, c.class || ""), el("td", {}, c.private || ""), el("td", {}, (n.vlans || []).join(", ")), el("td", {}, n.mtu));
    })));
}

async function viewNetwork(name) {
  const n = await api("GET", "/api/v1/networks/" + encodeURIComponent(name));
  const a = await api("GET", "/api/v1/networks/" + encodeURIComponent(name) + "/addresses").catch(() => ({}));
  const list = a.addresses || a.allocations || [];
  return el("div", {}, el("h1", {}, "Network " + n.name),
    el("div", { class: "card" }, kv(Object.assign({ mode: n.mode, cidr: n.cidr, gateway: n.gateway || "" }, cidrFacts(n.cidr)))),
    el("h2", {}, "Allocations"),
    table(["Address", "Instance", "MAC", "VLAN"], list.map((x) => el("tr", {}, el("td", {}, x.address), el("td", {}, x.instance || ""),
      el("td", {}, x.mac || ""), el("td", {}, x.vlan ?? "")))));
}

async function viewImages() {
  const imgs = await listAll("/api/v1/images", "images");
  let repos = [];
  try {
    const r = await fetch("/v2/_catalog", { headers: { Authorization: "Bearer " + S.token } });
    if (r.ok) repos = (await r.json()).repositories || [];
  } catch (_) { /* the registry list is optional */ }
  const tags = await Promise.all(repos.map((name) => fetch("/v2/" + name + "/tags/list", { headers: { Authorization: "Bearer " + S.token } })
    .then((r) => (r.ok ? r.json() : { tags: [] })).catch(() => ({ tags: [] }))));
  return el("div", {}, el("h1", {}, "Images"),
    table(["Name", "Format", "Size", "SHA-256", "State"], imgs.map((i) => el("tr", {}, el("td", {}, i.name), el("td", {}, i.format || ""),
      el("td", { class: "num" }, bytes(i.size_bytes ?? i.size)), el("td", {}, (i.sha256 || "").slice(0, 16)), el("td", {}, i.state || "")))),
    el("h2", {}, "Registry repositories"),
    table(["Repository", "Tags"], repos.map((r, k) => el("tr", {}, el("td", {}, r), el("td", {}, (tags[k].tags || []).join(", "))))));
}

function viewOperations() {
  const sel = document.querySelector('[data-keep="op-status"]');
  const want = sel ? sel.value : "";
  const ops = [...S.ops.values()].filter((o) => !want || o.status === want).sort((a, b) => (b.created_at || 0) - (a.created_at || 0));
  return el("div", {}, el("h1", {}, "Operations"),
    el("div", { class: "filters" }, el("label", {}, "Status ", el("select", { "data-keep": "op-status", onchange: () => render(true) },
      ["", "pending", "running", "succeeded", "failed", "cancelled"].map((s) => el("option", { value: s }, s || "any"))))),
    table(["Kind", "Target", "Host", "Status", "Progress", "Updated", ""], ops.map((o) => opRow(o, true))));
}

/* Backups: the stores, every backup with verify and restore, and "back up now". */
async function viewBackups() {
  const [stores, backups] = await Promise.all([
    api("GET", "/api/v1/backup-stores").catch((e) => ({ error: e.message })),
    api("GET", "/api/v1/backups").catch((e) => ({ error: e.message }))]);
  const storeList = stores.backup_stores || [], list = (backups.backups || [])
    .sort((a, b) => (b.created_at || 0) - (a.created_at || 0));
  const inst = el("select", { id: "backup-instance" }, [...S.insts.values()].filter((i) => i.type === "vm" || i.type === "container")
    .map((i) => el("option", { value: i.name }, i.name)));
  const store = el("select", { id: "backup-store" }, storeList.map((st) => el("option", { value: st.name }, st.name)));
  const again = () => render();
  restoreForm = restoreFormNew();
  return el("div", {}, el("h1", {}, "Backups"),
    stores.error ? el("p", { class: "error" }, "backup stores: " + stores.error) : "",
    el("h2", {}, "Stores"),
    storeList.length ? table(["Name", "Path", "Backups", "Created"], storeList.map((st) => el("tr", {},
      el("td", {}, st.name), el("td", {}, st.path || ""), el("td", { class: "num" }, st.backups ?? ""),
      el("td", {}, st.created_at ? new Date(st.created_at).toLocaleString() : ""))))
      : el("p", { class: "muted" }, "No backup store yet (an admin adds one: POST /api/v1/backup-stores)."),
    el("div", { class: "card actions" }, "Back up ", inst, " to ", store, " ",
      actionButton("Back up now", "operator", async () => {
        if (!inst.value) return toast("pick an instance", true);
        await act("backup " + inst.value, () => api("POST", "/api/v1/instances/" + encodeURIComponent(inst.value) + "/backups",
          store.value ? { store: store.value } : {}));
        again();
      })),
    el("h2", {}, "Backups"),
    backups.error ? el("p", { class: "error" }, "backups: " + backups.error) : "",
    table(["Id", "Instance", "Store", "Kind", "Status", "Size", "New", "Created", ""], list.map((b) => el("tr", { "data-backup": b.id },
      el("td", {}, String(b.id).slice(0, 12)), el("td", {}, el("a", { href: "#/instances/" + encodeURIComponent(b.instance) }, b.instance)),
      el("td", {}, b.store || ""), el("td", {}, b.kind || ""), el("td", {}, stateSpan(b.status || "")),
      el("td", { class: "num" }, bytes(b.total_bytes)), el("td", { class: "num" }, bytes(b.new_bytes)),
      el("td", {}, b.created_at ? new Date(b.created_at).toLocaleString() : ""),
      el("td", { class: "actions" },
        actionButton("Verify", "operator", () => act("verify", () => api("POST", "/api/v1/backups/" + encodeURIComponent(b.id) + "/actions/verify", {}))),
        b.restorable === false || b.status !== "succeeded" ? "" :
          actionButton("Restore…", "operator", async () => { restoreForm.show(b); }))))),
    restoreForm.box);
}

/*
 * The restore form under the backups: into a new instance (a name no instance has,
 * started or left stopped as chosen) or over the backup's own stopped instance (the
 * name left empty). The API's refusal is shown next to the name; a new instance's page
 * opens once its create operation is accepted.
 */
function restoreFormNew() {
  const name = el("input", { id: "restore-name", placeholder: "new instance name (empty: over the backup's own)" });
  const start = el("input", { id: "restore-start", type: "checkbox", checked: true });
  const err = el("span", { class: "field-error" });
  const title = el("b", {});
  let backup = null;
  const form = el("form", { id: "restore-form", class: "card", hidden: true,
    onsubmit: async (e) => {
      e.preventDefault();
      err.textContent = "";
      const body = name.value ? { name: name.value, start: start.checked } : {};
      try {
        const op = await api("POST", "/api/v1/backups/" + encodeURIComponent(backup.id) + "/actions/restore", body);
        toast("restore of " + backup.instance + ": operation " + op.status);
        location.hash = "#/instances/" + encodeURIComponent(name.value || backup.instance);
      } catch (x) {
        if (x.status !== 401) err.textContent = x.message;
      }
    } },
  el("h2", {}, "Restore ", title),
  el("label", { "data-field": "name" }, "Name ", name, err), " ",
  el("label", {}, start, " start it once restored"), " ",
  el("button", { type: "submit", disabled: !can("operator") }, "Restore"));
  return {
    box: form,
    show(b) {
      backup = b;
      title.textContent = "backup " + String(b.id).slice(0, 12) + " of " + b.instance;
      form.hidden = false;
      name.focus();
    },
  };
}
let restoreForm = { box: "", show() {} };

/* HA: each host's lease state (ok, isolated, failed, fenced), the HA instances, and the
 * history of HA state changes and failovers: the controller's (its events table, so it
 * survives a reload), with what the event stream brought since merged in. */
const HA_EVENT_TYPES = ["host-ha-changed", "instance-failover"];
async function viewHA() {
  const hosts = [...S.hosts.values()].sort((a, b) => a.name.localeCompare(b.name));
  const haInsts = [...S.insts.values()].filter((i) => i.ha && i.ha.enabled);
  const kept = await api("GET", "/api/v1/events/history?limit=100&type=" + HA_EVENT_TYPES.join(","))
    .catch((e) => ({ error: e.message }));
  const byId = new Map();
  for (const e of [...(kept.events || []), ...S.events.filter((x) => HA_EVENT_TYPES.includes(x.type))])
    byId.set(e.id, e);
  const history = [...byId.values()].sort((a, b) => b.id - a.id);
  const failover = (e) => e.type === "instance-failover";
  const change = (e) => failover(e) ? "failover of " + (e.data || {}).name + " to " + (e.data || {}).to
    : (e.data || {}).previous ? e.data.previous + " → " + e.data.state : e.type;
  return el("div", {}, el("h1", {}, "High availability"),
    table(["Host", "State", "HA state", "Lease counter", "Lease age", "Fenced"], hosts.map((h) => {
      const ha = h.ha || {}, l = ha.lease || {};
      return el("tr", { "data-host": h.name }, el("td", {}, el("a", { href: "#/hosts/" + encodeURIComponent(h.name) }, h.name)),
        el("td", {}, stateSpan(h.state)), el("td", { class: "ha-state" }, stateSpan(ha.state || "ok")),
        el("td", { class: "num" }, l.counter ?? "—"), el("td", { class: "num" }, l.age_ms !== undefined ? (l.age_ms / 1000).toFixed(1) + " s" : "—"),
        el("td", {}, ha.fenced_at ? new Date(ha.fenced_at).toLocaleString() : ""));
    })),
    el("h2", {}, "HA instances"),
    haInsts.length ? table(["Instance", "State", "Host", "Priority"], haInsts.map((i) => el("tr", {},
      el("td", {}, el("a", { href: "#/instances/" + encodeURIComponent(i.name) }, i.name)), el("td", {}, stateSpan(i.state)),
      el("td", {}, i.host || "—"), el("td", { class: "num" }, i.ha.priority ?? ""))))
      : el("p", { class: "muted" }, "No instance has HA enabled."),
    el("h2", {}, "Fencing, failovers and state changes"),
    kept.error ? el("p", { class: "error" }, "history: " + kept.error) : "",
    history.length ? table(["Time", "Host", "Change"], history.map((e) => el("tr", { "data-ha-event": e.id },
      el("td", {}, e.time ? new Date(e.time).toLocaleString() : ""), el("td", {}, (failover(e) ? (e.data || {}).from : (e.data || {}).name) || ""),
      el("td", {}, change(e)))))
      : el("p", { class: "muted" }, "None kept by the controller."));
}

async function viewTokens() {
  if (!can("admin")) return el("p", { class: "error" }, "Tokens need the admin role (this token is " + S.role + ").");
  const toks = await listAll("/api/v1/tokens", "tokens");
  const name = el("input", { placeholder: "name" });
  const role = el("select", {}, ["viewer", "operator", "admin"].map((r) => el("option", { value: r }, r)));
  const shown = el("div", {});
  return el("div", {}, el("h1", {}, "Tokens"),
    el("div", { class: "card" }, name, " ", role, " ",
      actionButton("Create token", "admin", async () => {
        const t = await act("create token", () => api("POST", "/api/v1/tokens", { kind: "api", role: role.value, name: name.value || undefined }));
        if (t && t.token) shown.replaceChildren(el("p", {}, "Copy it now; it is not shown again:"), el("div", { class: "secret" }, t.token));
      }), shown),
    table(["Id", "Name", "Kind", "Role", "Expires", "Last used", ""], toks.map((t) => el("tr", {}, el("td", {}, t.id), el("td", {}, t.name || ""),
      el("td", {}, t.kind), el("td", {}, t.role || ""), el("td", {}, t.expires_at ? new Date(t.expires_at).toLocaleString() : "never"),
      el("td", {}, t.used_at ? ago(t.used_at) : ""),
      el("td", {}, actionButton("Revoke", "admin", async () => {
        if (confirm("Revoke token " + t.id + "?")) { await act("revoke", () => api("DELETE", "/api/v1/tokens/" + t.id)); render(); }
      }))))));
}

/* ---- start ---- */

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    S.token = $("token").value.trim();
    sessionStorage.setItem("kumo-token", S.token);
    $("token").value = "";
    signIn();
  });
  $("signout").addEventListener("click", () => signOut("Signed out."));
  window.addEventListener("hashchange", () => render());
  if (S.token) signIn();
  else signOut();
});
