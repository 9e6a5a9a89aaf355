// abgate dashboard: reads the evaluator's HTTP/JSON API with the token the user signed in
// with, redraws every POLL_MS without a reload. No data lives in the page itself.
"use strict";

const POLL_MS = 2000;
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"];
window.abgate = { renders: 0, errors: 0, series: {} };

// -- signing in ---------------------------------------------------------------------------------
function takeTokenFromFragment() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("abgate-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function token() { return sessionStorage.getItem("abgate-token") || ""; }

// The sign-in form, one copy for every page (each page has an empty <section id="signin">).
const SIGNIN_HTML = `<h2>Sign in</h2>
  <p>Paste the evaluator's read-only token (<code>--read-token</code>) or its admin token (<code>ABGATE_TOKEN</code>). It stays in this tab only.</p>
  <form id="signin-form"><input id="token" type="password" autocomplete="off" placeholder="token">
    <button type="submit">Sign in</button></form>
  <p id="signin-error" class="error"></p>`;

function signinForm() { document.getElementById("signin").innerHTML = SIGNIN_HTML; }

function showSignin(message) {
  document.getElementById("signin").hidden = false;
  document.getElementById("content").hidden = true;
  document.getElementById("signin-error").textContent = message || "";
}

class Unauthenticated extends Error {}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  const doc = await r.json().catch(() => ({}));
  if (r.status === 401) throw new Unauthenticated((doc.error || {}).message || "sign in");
  if (!r.ok) throw new Error(`${path}: ${r.status} ${(doc.error || {}).message || ""}`);
  return doc;
}

// -- formatting ---------------------------------------------------------------------------------
const fmt = (x, digits = 4) =>
  x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toPrecision(digits);
const pct = (x) => (x === null || x === undefined ? "–" : `${Number(x).toFixed(0)}%`);
// the split in the definition's arm order (control first)
const weights = (w, arms) =>
  (arms || Object.keys(w || {})).map((a) => `${a}=${pct((w || {})[a])}`).join(", ");
const armNames = (view) => view.definition.arms.map((x) => x.name);
const when = (ts) => new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";

function cell(row, cls, text, numeric = false) {
  const td = document.createElement("td");
  td.className = cls + (numeric ? " num" : "");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function fill(tbody, items, build) {
  tbody.replaceChildren();
  for (const item of items) {
    const tr = document.createElement("tr");
    build(tr, item);
    tbody.appendChild(tr);
  }
}

// -- experiments list ---------------------------------------------------------------------------
async function renderList() {
  const doc = await api("/api/v1/experiments");
  const tbody = document.querySelector("#experiments tbody");
  fill(tbody, doc.experiments, (tr, e) => {
    const name = e.definition.name;
    tr.dataset.name = name;
    const a = document.createElement("a");
    a.href = `/experiments/${encodeURIComponent(name)}`;
    a.textContent = name;
    cell(tr, "name", "").appendChild(a);
    cell(tr, "status", e.status);
    cell(tr, "kind", e.definition.kind);
    cell(tr, "round", String(e.details.round || 1), true);
    cell(tr, "arms", e.definition.arms.map((x) => x.name).join(", "));
    cell(tr, "weights", weights(e.weights, armNames(e)));
    cell(tr, "verdict", e.verdict.recommendation || "continue");
    cell(tr, "version", String(e.version), true);
  });
  document.getElementById("empty").hidden = doc.experiments.length > 0;
}

// -- one experiment -----------------------------------------------------------------------------
const charts = {};

function chart(id, series, data, opts = {}) {
  const el = document.getElementById(id);
  const key = JSON.stringify(series.map((s) => s.label));
  if (!charts[id] || charts[id].key !== key) {
    if (charts[id]) charts[id].plot.destroy();
    const plot = new uPlot({
      width: Math.max(500, el.clientWidth || 600), height: 240,
      scales: { x: { time: true }, ...(opts.scales || {}) },
      series: [{}, ...series], bands: opts.bands || [], axes: [{}, { size: 60 }],
      legend: { live: false },
    }, data, el);
    charts[id] = { plot, key };
    window.abgate.series[id] = series.map((s) => s.label);
  } else {
    charts[id].plot.setData(data);
  }
}

function dashed(label, color) { return { label, stroke: color, dash: [6, 4], width: 1, points: { show: false } }; }
function line(label, color) { return { label, stroke: color, width: 2, spanGaps: true, points: { show: false } }; }

function drawCharts(t) {
  const xs = t.ends;
  const shareSeries = [], shareData = [xs];
  t.arms.forEach((arm, i) => {
    shareSeries.push(line(`${arm} share`, COLORS[i % COLORS.length]));
    shareData.push(t.shares[arm]);
    shareSeries.push(dashed(`${arm} split`, COLORS[i % COLORS.length]));
    shareData.push(t.split[arm]);
  });
  chart("chart-shares", shareSeries, shareData, { scales: { y: { range: [0, 100] } } });
  // Each arm's mean with its always-valid interval (a band between its high and low lines).
  const level = `${+(100 * t.mean_confidence).toPrecision(4)}% CS`;
  const metricSeries = [], metricData = [xs], metricBands = [];
  t.arms.forEach((arm, i) => {
    const c = COLORS[i % COLORS.length];
    metricSeries.push(line(arm, c), dashed(`${arm} ${level} high`, c), dashed(`${arm} ${level} low`, c));
    metricData.push(t.mean[arm], t.mean_hi[arm], t.mean_lo[arm]);
    metricBands.push({ series: [metricData.length - 2, metricData.length - 1], fill: c + "22" });
  });
  chart("chart-metric", metricSeries, metricData, { bands: metricBands });
  const effSeries = [], effData = [xs], bands = [];
  Object.entries(t.effect).forEach(([arm, e], i) => {
    const c = COLORS[(i + 1) % COLORS.length];
    effSeries.push(line(`${arm} effect`, c), dashed(`${arm} CI high`, c), dashed(`${arm} CI low`, c));
    effData.push(e.effect, e.hi, e.lo);
    bands.push({ series: [effData.length - 2, effData.length - 1], fill: c + "22" });
  });
  const m = t.min_effect || 0;
  effSeries.push(dashed("+min effect", "#888"), dashed("−min effect", "#888"), dashed("0", "#444"));
  effData.push(xs.map(() => m), xs.map(() => -m), xs.map(() => 0));
  chart("chart-effect", effSeries, effData, { bands });
  const dSeries = [], dData = [xs];
  Object.entries(t.drift).slice(0, 8).forEach(([name, points], i) => {
    const byT = new Map(points.map(([ts, v]) => [ts, v]));
    // each point at the bucket end it falls in
    const ys = xs.map((x, k) => {
      let v = null;
      for (const [ts, psi] of byT) if (ts <= x && (k === 0 || ts > xs[k - 1])) v = psi;
      return v;
    });
    dSeries.push(line(name, COLORS[i % COLORS.length]));
    dData.push(ys);
  });
  dSeries.push(dashed("warn", "#b45309"), dashed("act", "#b91c1c"));
  dData.push(xs.map(() => t.psi_warn), xs.map(() => t.psi_act));
  chart("chart-drift", dSeries, dData, { scales: { y: { range: (u, lo, hi) => [0, Math.max(hi, t.psi_act * 1.2)] } } });
}

function renderArms(view, results) {
  const tests = results.tests || {};
  fill(document.querySelector("#arms tbody"), Object.entries(results.arms || {}), (tr, [arm, a]) => {
    tr.dataset.arm = arm;
    const test = tests[arm];
    cell(tr, "arm", arm);
    cell(tr, "n", String(a.n), true);
    cell(tr, "metric", fmt(a.mean), true);
    cell(tr, "errors", `${a.window_errors}/${a.window_served}`, true);
    cell(tr, "p99", fmt(a.p99_ms, 3), true);
    cell(tr, "effect", test ? fmt(test.effect) : "–", true);
    cell(tr, "ci", test ? `[${fmt(test.ci[0])}, ${fmt(test.ci[1])}]` : "–", true);
    cell(tr, "p", test ? fmt(test.p_value, 3) : "–", true);
  });
  const srm = results.srm || {};
  document.getElementById("srm").textContent =
    srm.p_value === undefined ? "–" : `p=${fmt(srm.p_value, 3)}${srm.mismatch ? " MISMATCH" : ""}`;
  const g = results.guardrails || {};
  document.getElementById("guardrails").textContent =
    g.breaches === undefined ? "–" : g.breaches.length ? g.breaches.join("; ") : "holding";
}

function renderDrift(results) {
  const rows = [];
  for (const [key, kind] of [["drift", ""], ["feature_drift", "feature "], ["decay", "decay "]]) {
    for (const [arm, d] of Object.entries(results[key] || {})) {
      for (const [measure, m] of Object.entries(d.measures || {})) {
        const name = (d.names || {})[measure];
        rows.push({ arm, measure: kind + measure + (name ? ` (${name})` : ""), m });
      }
    }
  }
  fill(document.querySelector("#drift tbody"), rows, (tr, { arm, measure, m }) => {
    tr.dataset.arm = arm;
    tr.dataset.measure = measure;
    cell(tr, "arm", arm);
    cell(tr, "measure", measure);
    cell(tr, "psi", m.psi === undefined ? fmt(m.window_rate) : fmt(m.psi, 3), true);
    const level = m.level || (m.rejected ? "rejected" : "ok");
    cell(tr, `level level-${level}`, level + (m.rejected && m.level ? " (test rejected)" : ""));
    cell(tr, "p", fmt(m.p_value, 3), true);
    cell(tr, "rows", `${m.window_rows ?? "–"} / ${m.current_rows} / ${m.reference_rows}`, true);
  });
  fill(document.querySelector("#shadows tbody"), Object.entries(results.shadows || {}), (tr, [s, x]) => {
    tr.dataset.shadow = s;
    cell(tr, "shadow", s);
    cell(tr, "pairs", String(x.pairs), true);
    cell(tr, "agreement", x.agreement === undefined ? "–" : `${(100 * x.agreement).toFixed(1)}%`, true);
  });
}

function renderGateways(doc, version) {
  fill(document.querySelector("#gateways tbody"), doc.gateways || [], (tr, g) => {
    tr.dataset.gateway = g.node_id;
    cell(tr, "gateway", g.node_id);
    cell(tr, "version", String(g.version), true);
    cell(tr, "connected", g.connected ? "yes" : "no");
    cell(tr, "error", g.last_error || "");
  });
}

function renderTimeline(history) {
  const ol = document.getElementById("timeline");
  ol.replaceChildren();
  for (const e of (history.entries || []).slice(-100)) {
    const li = document.createElement("li");
    const a = document.createElement("span");
    a.className = "action";
    a.textContent = e.action;
    li.append(`${when(e.ts)} `, a, ` ${e.recommendation || ""}`);
    ol.appendChild(li);
  }
}

async function renderExperiment() {
  const name = decodeURIComponent(location.pathname.split("/")[2] || "");
  const base = `/api/v1/experiments/${encodeURIComponent(name)}`;
  const [view, results, timeline, gws, history] = await Promise.all([
    api(base), api(`${base}/results`), api(`${base}/timeline`), api("/api/v1/gateways"),
    api(`${base}/history?steps_only=true&limit=200`),
  ]);
  document.title = `abgate — ${name}`;
  document.getElementById("title").textContent = name;
  document.getElementById("status").textContent = view.status;
  document.getElementById("kind").textContent = view.definition.kind;
  document.getElementById("round").textContent = String(view.details.round || 1);
  document.getElementById("version").textContent = String(view.version);
  document.getElementById("weights").textContent = weights(view.weights, armNames(view));
  document.getElementById("verdict").textContent = view.verdict.recommendation || "continue";
  const canary = view.definition.kind === "CANARY";
  document.getElementById("canary-box").hidden = !canary;
  if (canary) {
    const c = (results.canary || {});
    document.getElementById("canary").textContent =
      `${view.details.canary_stage} (${c.share ?? "–"}%)`;
  }
  renderArms(view, results);
  renderDrift(results);
  renderGateways(gws, view.version);
  renderTimeline(history);
  if (typeof uPlot !== "undefined" && timeline.ends.length) drawCharts(timeline);
}

// -- the loop -----------------------------------------------------------------------------------
async function tick() {
  const render = document.body.dataset.page === "list" ? renderList : renderExperiment;
  try {
    await render();
    document.getElementById("signin").hidden = true;
    document.getElementById("content").hidden = false;
    document.getElementById("error").textContent = "";
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    window.abgate.renders += 1;
  } catch (e) {
    if (e instanceof Unauthenticated) {
      showSignin(token() ? e.message : "");
    } else {
      window.abgate.errors += 1;
      document.getElementById("error").textContent = String(e.message || e);
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();
  signinForm();
  document.getElementById("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("abgate-token", document.getElementById("token").value.trim());
    tick();
  });
  tick();
  setInterval(() => { if (document.getElementById("signin").hidden) tick(); }, POLL_MS);
});
