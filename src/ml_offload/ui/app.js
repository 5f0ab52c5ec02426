// The ml-offload dashboard: one live feed (/ui/events, server-sent events read with fetch so
// that the key travels as a bearer header, never in the URL), the gateway's own routes for
// actions, and the OpenAI route for the playground. No framework, no build step.
"use strict";

const KEY = "mlo.key";
const COLORS = ["#1f6feb", "#3fb950", "#d29922", "#db61a2", "#a371f7", "#39c5cf", "#f0883e"];
const SPARK_POINTS = 60;
const $ = (sel) => document.querySelector(sel);

let feed = null; // the AbortController of the running feed
let last = null; // the previous snapshot (for rates)
const series = { rps: [], tps: [], ttft: [] };

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "data") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function seconds(s) {
  if (s == null) return "–";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

const modelPath = (name) => name.split("/").map(encodeURIComponent).join("/");

async function errorText(resp) {
  try {
    const body = await resp.json();
    const err = body.error || body.detail || body;
    return `${resp.status}: ${err.message || JSON.stringify(err)}`;
  } catch { return `${resp.status} ${resp.statusText}`; }
}

// -- sign in ---------------------------------------------------------------------------

function showLogin(message) {
  if (feed) feed.abort();
  $("#board").hidden = true;
  $("#signout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#key").focus();
}

function signIn(event) {
  event.preventDefault();
  const key = $("#key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY, key);
  $("#key").value = "";
  start();
}

function signOut() {
  sessionStorage.removeItem(KEY);
  showLogin("");
}

// -- the live feed ---------------------------------------------------------------------

async function start() {
  if (feed) feed.abort();
  const ctl = (feed = new AbortController());
  let resp;
  try {
    resp = await fetch("/ui/events", { headers: headers(), signal: ctl.signal, cache: "no-store" });
  } catch { return retry(ctl); }
  if (resp.status === 401 || resp.status === 403) {
    const had = sessionStorage.getItem(KEY);
    sessionStorage.removeItem(KEY);
    return showLogin(had ? `The gateway refused the key (${await errorText(resp)})` : "");
  }
  if (!resp.ok) { $("#action-error").textContent = await errorText(resp); return retry(ctl); }
  $("#login").hidden = true;
  $("#board").hidden = false;
  $("#signout").hidden = !sessionStorage.getItem(KEY);
  $("#live").classList.add("on");
  try {
    await readEvents(resp.body, render);
  } catch { /* the connection dropped */ }
  retry(ctl);
}

function retry(ctl) {
  $("#live").classList.remove("on");
  if (!ctl.signal.aborted) setTimeout(() => { if (!ctl.signal.aborted) start(); }, 2000);
}

async function readEvents(body, onData) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data && data !== "[DONE]") onData(JSON.parse(data));
    }
  }
}

// -- rendering -------------------------------------------------------------------------

function render(view) {
  $("#who").textContent = view.admin ? "admin" : "read-only";
  renderDevices(view.memory);
  renderSparks(view);
  renderModels(view.models, view.admin);
  renderAudit(view.audit, view.admin);
  renderNodes(view.nodes || []);
  renderPlayModels(view.models);
}

function colorOf(name, names) { return COLORS[names.indexOf(name) % COLORS.length]; }

function segment(bytesUsed, total, color, title) {
  const span = el("span", { title });
  span.style.width = `${total > 0 ? (100 * bytesUsed) / total : 0}%`;
  span.style.background = color;
  return span;
}

function memoryBar(label, total, parts, names) {
  const bar = el("div", { class: "bar" });
  const legend = el("div", { class: "legend" });
  for (const p of parts) {
    if (p.bytes <= 0) continue;
    const color = p.color || colorOf(p.name, names);
    bar.append(segment(p.bytes, total, color, `${p.name}: ${bytes(p.bytes)}`));
    const swatch = el("i");
    swatch.style.background = color;
    legend.append(el("span", {}, swatch, `${p.name} ${bytes(p.bytes)}`));
  }
  const used = parts.filter((p) => p.name !== "free").reduce((a, p) => a + Math.max(p.bytes, 0), 0);
  return el("div", { class: "device", data: { device: label } },
    el("div", { class: "label" }, el("span", {}, label), el("span", { class: "used" }, `${bytes(used)} / ${bytes(total)}`)),
    bar, legend);
}

function renderDevices(memory) {
  const names = memory.models.map((m) => m.name).sort();
  const box = $("#devices");
  box.replaceChildren();
  for (const d of memory.devices) {
    const mine = Object.entries(d.models).map(([name, b]) => ({ name, bytes: b }));
    const placed = mine.reduce((a, p) => a + p.bytes, 0);
    const reserve = Math.min(memory.reserve_bytes, d.free_bytes);
    box.append(memoryBar(`GPU ${d.index} · ${d.name}`, d.total_bytes, [
      ...mine,
      { name: "other", bytes: d.used_bytes - placed, color: "var(--other)" },
      { name: "reserve", bytes: reserve, color: "var(--reserve)" },
      { name: "free", bytes: d.free_bytes - reserve, color: "var(--free)" },
    ], names));
  }
  const host = memory.models.filter((m) => m.host_bytes).map((m) => ({ name: m.name, bytes: m.host_bytes }));
  const cpu = memory.cpu;
  box.append(memoryBar(`host memory budget${cpu.cores ? ` · ${cpu.cores} cores` : ""}`, cpu.budget_bytes, [
    ...host,
    { name: "free", bytes: cpu.budget_bytes - cpu.used_estimate_bytes, color: "var(--free)" },
  ], names));
}

function push(list, value) {
  list.push(value);
  if (list.length > SPARK_POINTS) list.shift();
}

function renderSparks(view) {
  const t = view.totals;
  if (last) {
    const dt = Math.max(view.time - last.time, 0.001);
    const p = last.totals;
    push(series.rps, (t.requests - p.requests) / dt);
    push(series.tps, (t.output_tokens - p.output_tokens) / dt);
    const n = t.ttft_count - p.ttft_count;
    push(series.ttft, n > 0 ? (1000 * (t.ttft_sum_s - p.ttft_sum_s)) / n : null);
  }
  last = view;
  const box = $("#sparks");
  box.replaceChildren(
    spark("requests/s", series.rps, (v) => v.toFixed(2)),
    spark("output tokens/s", series.tps, (v) => v.toFixed(1)),
    spark("time to first token (ms)", series.ttft, (v) => v.toFixed(0)),
  );
}

function spark(name, values, fmt) {
  const known = values.filter((v) => v != null);
  const max = Math.max(1e-9, ...known);
  const pts = values.map((v, i) => `${(i * 100) / (SPARK_POINTS - 1)},${38 - (36 * (v || 0)) / max}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 100 40");
  svg.setAttribute("preserveAspectRatio", "none");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", pts);
  svg.append(line);
  const now = known.length ? fmt(known[known.length - 1]) : "–";
  return el("div", { class: "spark" }, el("div", { class: "v" }, now), el("div", { class: "n" }, name), svg);
}

function placement(m) {
  if (m.state !== "ready" && m.state !== "starting") return "–";
  const devs = Object.entries(m.device_bytes).map(([i, b]) => `GPU ${i}: ${bytes(b)}`);
  const layers = m.layers ? `${m.gpu_layers ?? 0}/${m.layers} layers on GPU` : "";
  const host = m.host_bytes ? `host: ${bytes(m.host_bytes)}` : "";
  return [layers, ...devs, host].filter(Boolean).join(" · ") || "–";
}

function renderModels(models, admin) {
  const body = $("#models tbody");
  body.replaceChildren(...models.map((m) => el("tr", { data: { model: m.id } },
    el("td", {}, m.id, m.aliases.length ? el("div", { class: "hint" }, m.aliases.join(", ")) : ""),
    el("td", {}, el("span", { class: `state ${m.state}` }, m.state)),
    el("td", {}, placement(m)),
    el("td", {}, `${m.in_flight} / ${m.queued}`),
    el("td", {}, seconds(m.idle_s)),
    el("td", {}, seconds(m.ttl_s)),
    el("td", {}, m.pinned ? "pinned" : ""),
    el("td", { class: "actions" }, ...(admin ? actions(m) : [])),
  )));
}

function actions(m) {
  const loaded = m.state === "ready" || m.state === "starting";
  return [
    loaded
      ? el("button", { class: "unload ghost", onclick: () => act(m.id, "unload") }, "Unload")
      : el("button", { class: "load", onclick: () => act(m.id, "load") }, "Load"),
    el("button", { class: "pin ghost", onclick: () => act(m.id, "pin", { pinned: !m.pinned }) },
      m.pinned ? "Unpin" : "Pin"),
  ];
}

async function act(name, what, body) {
  $("#action-error").textContent = "";
  document.querySelectorAll("td.actions button").forEach((b) => { b.disabled = true; });
  const resp = await fetch(`/models/${modelPath(name)}/${what}`, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!resp.ok) $("#action-error").textContent = `${what} ${name}: ${await errorText(resp)}`;
  document.querySelectorAll("td.actions button").forEach((b) => { b.disabled = false; });
}

function renderAudit(events, admin) {
  $("#audit-section").hidden = !admin;
  $("#audit tbody").replaceChildren(...events.map((e) => el("tr", {},
    el("td", {}, (e.time || "").replace("T", " ").slice(0, 19)),
    el("td", {}, e.key_name || "–"),
    el("td", {}, `${e.method || ""} ${e.path || ""}`),
    el("td", {}, e.model || "–"),
    el("td", {}, e.status ?? "–"),
    el("td", {}, e.latency_ms == null ? "–" : Math.round(e.latency_ms)),
  )));
}

function renderNodes(nodes) {
  $("#nodes-section").hidden = !nodes.length;  // a fleet, seen with an admin key
  $("#nodes tbody").replaceChildren(...nodes.map((n) => el("tr", { data: { node: n.name } },
    el("td", {}, n.name, n.url ? el("div", { class: "hint" }, n.url) : ""),
    el("td", {}, el("span", { class: `state ${n.alive ? "ready" : "failed"}` }, n.alive ? "alive" : "gone")),
    el("td", {}, n.devices.length
      ? n.devices.map((d) => `${d.name}: ${bytes(d.free_bytes)} free of ${bytes(d.total_bytes)}`).join(" · ")
      : `host: ${bytes(n.host_free_bytes)} free`),
    el("td", {}, n.loaded.join(", ") || "–"),
    el("td", {}, n.queue_depth),
    el("td", {}, `${seconds(n.beat_age_s)} ago`),
  )));
}

function renderPlayModels(models) {
  const select = $("#play-model");
  const ids = models.map((m) => m.id);
  if ([...select.options].map((o) => o.value).join() === ids.join()) return;
  const keep = select.value;
  select.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
  if (ids.includes(keep)) select.value = keep;
}

// -- playground ------------------------------------------------------------------------

async function play(event) {
  event.preventDefault();
  const out = $("#play-output");
  const send = $("#play-send");
  out.textContent = "";
  send.disabled = true;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({
        model: $("#play-model").value,
        messages: [{ role: "user", content: $("#play-input").value }],
        max_tokens: 128,
        stream: true,
      }),
    });
    if (!resp.ok) { out.textContent = await errorText(resp); return; }
    await readEvents(resp.body, (chunk) => {
      if (chunk.error) { out.textContent += `\n[${chunk.error.message}]`; return; }
      for (const c of chunk.choices || []) out.textContent += (c.delta && c.delta.content) || "";
    });
  } finally {
    send.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", signIn);
  $("#signout").addEventListener("click", signOut);
  $("#play").addEventListener("submit", play);
  start();
});
