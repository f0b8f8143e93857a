// switchyard's rollout dashboard: plain JS, no build step, served by the admin listener.
// State comes from the management API (/v1) with the key the operator enters; live updates
// come from the environment's event stream, read with fetch() because EventSource cannot
// send an Authorization header.
"use strict";

const KEY_STORAGE = "switchyard.apiKey"; // sessionStorage: this tab only, gone when it closes
const STATUSES = ["RELEASING", "RAMPING_UP", "PAUSED", "SUCCEEDED", "RAMPING_DOWN", "CANCELED", "FAILED"];
const TERMINAL = new Set(["SUCCEEDED", "CANCELED", "FAILED"]);
const MIN_REFRESH_MS = 1000; // never ask for the environment more often than this
const MAX_EVENTS = 300;

const $ = (id) => document.getElementById(id);
const el = (tag, props, ...kids) => {
  const e = document.createElement(tag);
  if (props) for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
};

const state = {
  key: null, model: null, env: null,
  environment: null, events: [], gen: 0, // gen: bumps on every (re)selection, old loops stop
  lastRefresh: 0, refreshTimer: null, abort: null,
};

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body, signal) {
  const headers = { Authorization: "Api-Key " + state.key, Accept: "application/json" };
  const init = { method, headers, cache: "no-store", signal };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  let json = null;
  try { json = await r.json(); } catch (_) { /* not JSON: reported below */ }
  if (r.status === 401) { forgetKey("The API key was rejected: " + ((json && json.error) || "401")); throw new ApiError(401, "unauthorized"); }
  if (!r.ok) throw new ApiError(r.status, (json && json.error) || `HTTP ${r.status}`);
  return json;
}

const envPath = () => `/v1/models/${encodeURIComponent(state.model)}/environments/${encodeURIComponent(state.env)}`;
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

function showError(msg) {
  const e = $("error");
  e.textContent = msg; e.hidden = !msg;
  if (msg) $("notice").hidden = true;
}
function showNotice(msg) {
  const n = $("notice");
  n.textContent = msg; n.hidden = !msg;
  if (msg) $("error").hidden = true;
}
function setConn(text, live) {
  const c = $("conn");
  c.textContent = text;
  c.className = "conn " + (live ? "live" : "down");
}

// ---- key ------------------------------------------------------------------------------------

function forgetKey(reason) {
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = null; state.gen++;
  if (state.abort) state.abort.abort();
  $("app").hidden = true; $("forget-key").hidden = true; $("login").hidden = false;
  $("login-error").textContent = reason || "";
  setConn("", false);
  $("api-key").focus();
}

async function start(key) {
  state.key = key;
  try {
    const models = await api("GET", "/v1/models");
    sessionStorage.setItem(KEY_STORAGE, key);
    $("login").hidden = true; $("app").hidden = false; $("forget-key").hidden = false;
    $("login-error").textContent = "";
    fillModels(models.models || []);
  } catch (e) {
    if (e.status !== 401) $("login-error").textContent = "Cannot reach the API: " + e.message;
  }
}

function fillModels(models) {
  const ms = $("model-select");
  ms.replaceChildren(...models.map((m) => el("option", { value: m.id, text: m.id })));
  const pick = () => {
    const m = models.find((x) => x.id === ms.value) || models[0];
    const es = $("env-select");
    es.replaceChildren(...(m ? m.environments : []).map((e) => el("option", { value: e, text: e })));
    select(m ? m.id : null, es.value || null);
  };
  ms.onchange = pick;
  $("env-select").onchange = () => select(ms.value, $("env-select").value);
  pick();
}

function select(model, env) {
  state.gen++;
  if (state.abort) state.abort.abort();
  state.model = model; state.env = env; state.events = []; state.environment = null;
  if (!model || !env) { showError("No model or environment to show."); return; }
  const gen = state.gen;
  streamEvents(gen);
  pollFigures(gen);
  pollEnvironment(gen);
}

// ---- live data ------------------------------------------------------------------------------

// Reads the environment's event stream; on any break waits (backoff up to 10 s) and connects
// again, then reloads everything, since events may have been missed while it was down.
async function streamEvents(gen) {
  let backoff = 500;
  while (gen === state.gen) {
    const ctrl = new AbortController();
    state.abort = ctrl;
    try {
      const r = await fetch(envPath() + "/events", {
        headers: { Authorization: "Api-Key " + state.key, Accept: "text/event-stream" },
        cache: "no-store", signal: ctrl.signal,
      });
      if (r.status === 401) { forgetKey("The API key was rejected."); return; }
      if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
      setConn("live", true);
      backoff = 500;
      await reloadAll(gen);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, i); buf = buf.slice(i + 2);
          onFrame(frame, gen);
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted || gen !== state.gen) return;
    }
    if (gen !== state.gen) return;
    setConn(`disconnected; retrying in ${Math.round(backoff / 100) / 10} s`, false);
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 10000);
  }
}

function onFrame(frame, gen) {
  const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
  if (!data || gen !== state.gen) return; // comments are keep-alives
  try {
    const ev = JSON.parse(data);
    state.events.push(ev);
    if (state.events.length > MAX_EVENTS) state.events.shift();
    renderEvents();
    // The event carries the new status and split: show them now, the rest follows with the
    // (rate-limited) refresh of the environment.
    if (ev.status) renderStrip(ev.status);
    if (typeof ev.percent_traffic_to_new_version === "number") renderSplit(ev.percent_traffic_to_new_version);
    scheduleRefresh(gen);
  } catch (_) { /* a frame that is not an event: ignore */ }
}

async function reloadAll(gen) {
  try {
    const [events, deps] = await Promise.all([
      api("GET", envPath() + "/events"),
      api("GET", `/v1/models/${encodeURIComponent(state.model)}/deployments`),
    ]);
    if (gen !== state.gen) return;
    state.events = (events.events || []).slice(-MAX_EVENTS);
    renderEvents();
    await refresh(gen); // first: the select's default is a deployment other than the current
    if (gen !== state.gen) return;
    fillPromoteSelect(deps.deployments || []);
    refreshFigures(gen);
  } catch (e) {
    if (e.status) showError(e.message);
  }
}

// At most one environment refresh per MIN_REFRESH_MS, however many events arrive.
function scheduleRefresh(gen) {
  if (state.refreshTimer) return;
  const wait = Math.max(0, state.lastRefresh + MIN_REFRESH_MS - Date.now());
  state.refreshTimer = setTimeout(() => { state.refreshTimer = null; refresh(gen); }, wait);
}

async function refresh(gen) {
  state.lastRefresh = Date.now();
  try {
    const [env, plan] = await Promise.all([
      api("GET", envPath()),
      api("GET", envPath() + "/plan").catch((e) => ({ error: e.message })),
    ]);
    if (gen !== state.gen) return;
    state.environment = env;
    renderEnvironment(env);
    renderPlan(plan);
  } catch (e) {
    if (gen === state.gen && e.status) showError(e.message);
  }
}

// Replica counts change between events (replicas start and drain): look again every 2 s while
// a promotion runs, every 10 s otherwise.
async function pollEnvironment(gen) {
  while (gen === state.gen) {
    const p = state.environment && state.environment.in_progress_promotion;
    await sleep(p && !TERMINAL.has(p.status) ? 2000 : 10000);
    if (gen !== state.gen) return;
    if (Date.now() - state.lastRefresh >= MIN_REFRESH_MS) await refresh(gen).catch(() => {});
  }
}

let figureInterval = 5;
async function pollFigures(gen) {
  while (gen === state.gen) {
    await sleep(Math.max(1, figureInterval) * 1000);
    if (gen !== state.gen) return;
    await refreshFigures(gen);
  }
}

async function refreshFigures(gen) {
  try {
    const f = await api("GET", envPath() + "/figures");
    if (gen !== state.gen) return;
    figureInterval = f.interval_seconds || 5;
    renderFigures(f);
  } catch (_) { /* the event stream reports the connection */ }
}

// ---- rendering ------------------------------------------------------------------------------

function renderEnvironment(env) {
  const p = env.in_progress_promotion;
  const status = p ? p.status : "NONE";
  const running = p && !TERMINAL.has(p.status);
  renderStrip(status);

  const cur = env.current_deployment, cand = env.candidate_deployment;
  $("current-line").textContent = `current: ${cur ? cur.id : "none"}` + (cand ? ` · candidate: ${cand.id}` : "");
  $("promo-line").textContent = p
    ? `${p.previous_deployment_id} → ${p.candidate_deployment_id}: ${p.status}` + (p.error_message ? ` — ${p.error_message}` : "") + (running ? "" : " (last promotion)")
    : "No promotion yet.";

  renderSplit(p ? p.percent_traffic_to_new_version : 0);

  // During a promotion the previous deployment is the current one; after it, the picture
  // keeps the two deployments of the last promotion.
  const byId = {};
  for (const d of [cur, cand]) if (d) byId[d.id] = d;
  const prevId = p ? p.previous_deployment_id : cur && cur.id;
  const candId = p ? p.candidate_deployment_id : null;
  $("prev-name").textContent = prevId || "";
  $("cand-name").textContent = candId || "";
  renderReplicas($("replicas-previous"), byId[prevId], prevId);
  renderReplicas($("replicas-candidate"), byId[candId], candId);

  renderAnalysis(p && p.analysis);

  const s = p ? p.status : null;
  $("promote-button").disabled = !!running;
  $("pause-button").disabled = !(s === "RELEASING" || s === "RAMPING_UP");
  $("resume-button").disabled = s !== "PAUSED";
  $("cancel-button").disabled = !(running && s !== "RAMPING_DOWN");
  $("force-cancel-button").disabled = !running;
  $("force-roll-forward-button").disabled = !(running && s !== "RAMPING_DOWN");

  const form = $("settings-form");
  const rc = env.promotion_settings && env.promotion_settings.rolling_deploy_config;
  if (rc && !form.contains(document.activeElement)) {
    for (const k of ["max_surge_percent", "max_unavailable_percent", "stabilization_time_seconds", "replica_overhead_percent"]) {
      form.elements[k].value = rc[k];
    }
  }
}

function renderStrip(status) {
  const strip = $("status-strip");
  strip.dataset.status = status;
  const items = [];
  STATUSES.forEach((s, i) => {
    const lit = s === status;
    const li = el("li", { class: "st st-" + s + (lit ? " lit" : ""), text: s });
    if (lit) { li.setAttribute("aria-current", "step"); li.setAttribute("aria-label", s + " (current)"); }
    items.push(li);
    if (i < STATUSES.length - 1) items.push(el("li", { class: "arrow", "aria-hidden": "true", text: i === 1 ? "⇄" : i === 3 ? "|" : "→" }));
  });
  strip.replaceChildren(...items);
}

function renderSplit(pct) {
  $("split-percent").textContent = String(pct);
  $("split-prev").style.width = (100 - pct) + "%";
  $("split-cand").style.width = pct + "%";
  $("split").setAttribute("aria-label", `${100 - pct}% to the previous deployment, ${pct}% to the candidate`);
}

function renderReplicas(ul, dep, id) {
  const blocks = [];
  const add = (cls, glyph, label) => blocks.push(el("li", { class: cls, title: `${id}: ${label}` },
    el("span", { class: "glyph", "aria-hidden": "true", text: glyph }), el("span", { text: label })));
  if (dep) {
    const r = dep.replicas;
    for (let i = 0; i < r.ready; i++) add("ready", "■", "ready");
    for (let i = 0; i < r.starting; i++) add("starting", "◇", "starting");
    for (let i = 0; i < r.draining; i++) add("draining", "▽", "draining");
    if (r.failure) add("failed", "✕", "failed");
    ul.dataset.ready = r.ready; ul.dataset.starting = r.starting; ul.dataset.draining = r.draining;
    ul.setAttribute("aria-label", `${id}: ${r.ready} ready, ${r.starting} starting, ${r.draining} draining` + (r.failure ? `, failed: ${r.failure}` : ""));
  }
  if (!blocks.length) blocks.push(el("li", { class: "none", text: id ? "no replicas" : "none" }));
  ul.replaceChildren(...blocks);
}

function renderAnalysis(a) {
  $("analysis").hidden = !a;
  if (!a) return;
  const v = a.last_verdict;
  $("analysis-line").textContent = `${a.verdicts} verdicts, ${a.consecutive_failures} consecutive failures` +
    (v ? ` · last: ${v.result} — ${v.summary}` : " · no verdict yet") +
    (a.next_verdict_at ? ` · next at ${new Date(a.next_verdict_at).toLocaleTimeString()}` : "");
  $("analysis-checks").replaceChildren(...(v ? v.checks : []).map((c) =>
    el("li", { class: c.passed ? "pass" : "fail", text: `${c.passed ? "passed" : "failed"}: ${c.detail}` })));
}

function renderPlan(plan) {
  const ol = $("plan-steps");
  if (!plan || plan.error) {
    $("plan-line").textContent = plan ? plan.error : "";
    ol.replaceChildren();
    return;
  }
  const cfg = plan.rolling_deploy_config;
  $("plan-line").textContent = (plan.in_progress ? "The promotion in progress: " : "The next promotion: ") +
    `${plan.previous_replicas} replicas, fleet ${plan.fleet}, ${plan.mode} mode, ${plan.replicas_per_step} replica(s) and ${plan.traffic_per_step}% per step, ` +
    `stabilization ${cfg.stabilization_time_seconds} s` + (plan.rolling_deploy ? "" : " (rolling is off: promotions switch at once)");
  ol.replaceChildren(...plan.steps.map((s, i) => {
    const now = plan.current_step === i;
    const li = el("li", {
      class: now ? "now" : plan.current_step != null && i < plan.current_step ? "done" : "",
      text: `${i + 1}. ${s.action} · ${s.percent_traffic_to_new_version}% · c${s.candidate_replicas}/p${s.previous_replicas}`,
      title: `step ${i + 1}: ${s.action}; candidate ${s.candidate_replicas}, previous ${s.previous_replicas} replicas; ${s.percent_traffic_to_new_version}% to the candidate`,
    });
    if (now) li.setAttribute("aria-current", "step");
    return li;
  }));
}

function renderEvents() {
  const items = state.events.slice().reverse().map((e) => el("li", {},
    el("time", { datetime: e.at, text: new Date(e.at_ms).toLocaleTimeString() }),
    el("span", { class: "st", text: e.status }),
    el("span", { text: e.percent_traffic_to_new_version + "%" }),
    el("span", { text: e.reason })));
  $("event-log").replaceChildren(...items);
}

function fillPromoteSelect(deps) {
  const sel = $("promote-select");
  const keep = sel.value;
  sel.replaceChildren(...deps.map((d) => el("option", { value: d.id, text: `${d.id} (${d.status.toLowerCase()})` })));
  const cur = state.environment && state.environment.current_deployment;
  const other = deps.find((d) => !cur || d.id !== cur.id);
  if (deps.some((d) => d.id === keep)) sel.value = keep;
  else if (other) sel.value = other.id;
}

const SERIES = [
  ["requests_per_s", "requests/s", (v) => v.toFixed(1)],
  ["error_rate_percent", "error rate", (v) => v.toFixed(1) + "%"],
  ["p99_latency_ms", "p99 latency", (v) => v.toFixed(0) + " ms"],
  ["p99_ttfb_ms", "p99 time to first byte", (v) => v.toFixed(0) + " ms"],
];
const SVGNS = "http://www.w3.org/2000/svg";

function renderFigures(f) {
  const box = $("figures");
  if (!f.deployments.length) {
    box.replaceChildren(el("p", { class: "muted", text: "No figures yet (the first window closes after " + f.interval_seconds + " s)." }));
    return;
  }
  const end = Date.now(), start = end - f.window_seconds * 1000;
  box.replaceChildren(...f.deployments.map((d) => {
    const row = el("div", { class: "fig-row" });
    for (const [key, label, fmt] of SERIES) row.append(sparkline(d.points, key, label, fmt, start, end));
    return el("div", { class: "fig-dep", "data-deployment": d.deployment_id }, el("h3", { text: d.deployment_id }), row);
  }));
}

// One series as an SVG path over the window; windows without a value break the line.
function sparkline(points, key, label, fmt, start, end) {
  const vals = points.filter((p) => p[key] != null);
  const last = vals.length ? vals[vals.length - 1][key] : null;
  const max = Math.max(1e-9, ...vals.map((p) => p[key]));
  const W = 300, H = 40;
  let d = "", gap = true;
  for (const p of points) {
    const v = p[key];
    if (v == null) { gap = true; continue; }
    const x = ((p.at_ms - start) / (end - start)) * W;
    const y = H - 2 - (v / max) * (H - 4);
    d += (gap ? "M" : "L") + x.toFixed(1) + " " + y.toFixed(1);
    gap = false;
  }
  const svg = document.createElementNS(SVGNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${label}: ${last == null ? "no data" : fmt(last)} now, up to ${vals.length ? fmt(max) : "n/a"} in 5 minutes`);
  const path = document.createElementNS(SVGNS, "path");
  path.setAttribute("d", d);
  svg.append(path);
  return el("div", { class: "spark", "data-series": key },
    el("div", { class: "label" }, el("span", { text: label }), el("span", { class: "value", text: last == null ? "–" : fmt(last) })),
    svg);
}

// ---- controls -------------------------------------------------------------------------------

async function act(what, method, path, body, confirmText) {
  if (confirmText && !window.confirm(confirmText)) return;
  const gen = state.gen;
  try {
    await api(method, envPath() + path, body);
    showNotice(what + ": done.");
    await refresh(gen);
  } catch (e) {
    if (e.status !== 401) showError(`${what} failed: ${e.message}`);
  }
}

function wireControls() {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const k = $("api-key").value.trim();
    $("api-key").value = "";
    if (k) start(k);
  });
  $("forget-key").onclick = () => forgetKey("");
  $("promote-button").onclick = () => {
    const id = $("promote-select").value;
    act(`Promote ${id}`, "POST", "/promote", { deployment_id: id });
  };
  $("pause-button").onclick = () => act("Pause", "POST", "/pause_promotion", {});
  $("resume-button").onclick = () => act("Resume", "POST", "/resume_promotion", {});
  $("cancel-button").onclick = () => act("Cancel", "POST", "/cancel_promotion", {});
  $("force-cancel-button").onclick = () => act("Force cancel", "POST", "/force_cancel_promotion", {},
    "Force cancel: send all traffic back to the previous deployment now?");
  $("force-roll-forward-button").onclick = () => act("Force roll forward", "POST", "/force_roll_forward_promotion", {},
    "Force roll forward: send all traffic to the candidate at the next step?");
  $("settings-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = ev.target.elements, cfg = {};
    for (const k of ["max_surge_percent", "max_unavailable_percent", "stabilization_time_seconds", "replica_overhead_percent"]) {
      cfg[k] = Number(f[k].value);
    }
    document.activeElement.blur();
    act("Save settings", "PATCH", "", { promotion_settings: { rolling_deploy_config: cfg } });
  });
}

wireControls();
const saved = sessionStorage.getItem(KEY_STORAGE);
if (saved) start(saved); else forgetKey("");
