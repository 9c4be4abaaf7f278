// The operators' dashboard: polls GET /admin/overview with an admin key and draws it.
// No libraries; every value from the server is written with textContent or as an SVG
// attribute, never as HTML.
"use strict";

const POLL_MS = 5000;
const WINDOW_MINUTES = 60;
const KEY_STORAGE = "platescore.adminKey";
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
let timer = null;
// Each poll (and sign-out) starts a new generation; an older poll's answer is dropped, so
// there is never more than one polling loop.
let generation = 0;

// A key may arrive in the URL fragment (never sent to a server): keep it for this tab only
// and take it out of the address bar and history.
function keyFromFragment() {
  const key = new URLSearchParams(location.hash.slice(1)).get("key");
  if (key) {
    sessionStorage.setItem(KEY_STORAGE, key);
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function showSignIn(message) {
  generation += 1;
  clearTimeout(timer);
  $("board").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  setConnection("idle", "not connected");
}

function setConnection(state, text) {
  const el = $("connection");
  el.dataset.state = state;
  el.textContent = text;
}

async function poll() {
  clearTimeout(timer);
  const mine = ++generation;
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (!key) {
    showSignIn();
    return;
  }
  try {
    const response = await fetch(`/admin/overview?minutes=${WINDOW_MINUTES}`, {
      headers: { Authorization: `Bearer ${key}`, Accept: "application/json" },
      cache: "no-store",
    });
    const body = await response.json().catch(() => ({}));
    if (mine !== generation) return;
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(KEY_STORAGE);
      showSignIn(body.detail || `refused (${response.status})`);
      return;
    }
    if (!response.ok) {
      throw new Error(`HTTP ${response.status}`);
    }
    render(body);
    setConnection("live", `live · updated ${clock(new Date())}`);
  } catch (err) {
    if (mine !== generation) return;
    setConnection("error", `cannot reach the server (${err.message}); retrying`);
  }
  timer = setTimeout(poll, POLL_MS);
}

function render(overview) {
  $("sign-in").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = false;
  const minutes = overview.minutes;
  const sum = (field) => minutes.reduce((total, m) => total + m[field], 0);
  const withJobs = minutes.filter((m) => m.latency_p95_ms !== null);
  $("window-label").textContent = `last ${minutes.length} min`;
  $("tile-queued").textContent = overview.queue.queued;
  $("tile-in-progress").textContent = overview.queue.in_progress;
  $("tile-oldest").textContent = duration(overview.queue.oldest_queued_age_seconds);
  $("tile-finished").textContent = sum("succeeded") + sum("failed");
  $("tile-failed").textContent = sum("failed");
  $("tile-p95").textContent = withJobs.length
    ? duration(withJobs[withJobs.length - 1].latency_p95_ms / 1000)
    : "–";

  drawChart($("chart-backlog"), minutes, { lines: ["backlog"] });
  drawChart($("chart-throughput"), minutes, {
    bars: ["succeeded", "failed"],
    lines: ["enqueued"],
  });
  drawChart($("chart-latency"), minutes, {
    lines: ["latency_p50_ms", "latency_p95_ms"],
    dots: true,
  });

  fillTable($("failed-jobs"), overview.recent_failures, "No failed jobs.", (job) => [
    cell(time(job.finished_at), "nowrap"),
    cell(job.code, "code"),
    cell(job.message, "wrap"),
    cell(job.partner_name || job.partner_id),
    cell(job.attempts),
    cell(job.job_id, "id"),
  ]);
  fillTable($("failing-endpoints"), overview.failing_endpoints, "Every endpoint is healthy.", (e) => [
    cell(e.url, "wrap"),
    cell(e.partner_name || e.partner_id),
    cell(e.enabled ? "failing" : `disabled (${e.disabled_reason || "?"})`, "nowrap"),
    cell(time(e.failing_since), "nowrap"),
    cell(e.retrying_deliveries),
    cell(lastAttempt(e), "wrap"),
  ]);
  fillTable($("reconcile-runs"), overview.reconcile_runs, "No run yet.", (run) => [
    cell(time(run.slot), "nowrap"),
    cell(run.takeovers ? `${run.trigger}, taken over ${run.takeovers}×` : run.trigger),
    cell(run.finished_at ? duration((Date.parse(run.finished_at) - Date.parse(run.started_at)) / 1000) : "running"),
    cell(run.jobs_requeued),
    cell(run.jobs_failed_stale),
    cell(run.deliveries_rescheduled),
    cell(run.endpoints_disabled),
    cell(run.jobs_deleted),
    cell(run.objects_deleted),
    cell(run.error || "", run.error ? "code" : ""),
  ]);
}

const SERIES_NAMES = { latency_p50_ms: "p50", latency_p95_ms: "p95" };

// A per-minute chart: stacked bars and/or lines over the window, each point carrying its
// minute and value as data attributes (and a tooltip). Line points show as dots with
// `dots` (sparse series); otherwise they appear on hover only.
function drawChart(figure, minutes, { bars = [], lines = [], dots = false }) {
  const width = 600;
  const height = 180;
  const pad = { left: 40, right: 8, top: 8, bottom: 20 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const stackTop = (m) => bars.reduce((total, name) => total + m[name], 0);
  const values = minutes.flatMap((m) => [stackTop(m), ...lines.map((name) => m[name] ?? 0)]);
  const max = niceMax(Math.max(1, ...values));
  const step = plotW / minutes.length;
  const x = (i) => pad.left + i * step;
  const y = (v) => pad.top + plotH - (v / max) * plotH;

  const svg = svgEl("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "data-max": max,
  });
  svg.append(
    svgEl("line", { class: "axis", x1: pad.left, y1: y(0), x2: width - pad.right, y2: y(0) }),
    svgEl("line", { class: "axis", x1: pad.left, y1: pad.top, x2: pad.left, y2: y(0) }),
    label(pad.left - 4, y(max) + 8, formatNumber(max), "end"),
    label(pad.left - 4, y(0), "0", "end"),
  );
  if (minutes.length) {
    label(pad.left, height - 4, clock(new Date(minutes[0].start)), "start", svg);
    label(width - pad.right, height - 4, clock(new Date(minutes[minutes.length - 1].start)), "end", svg);
  }

  minutes.forEach((m, i) => {
    let base = 0;
    for (const name of bars) {
      const value = m[name];
      if (value > 0) {
        const rect = svgEl("rect", {
          class: `bar ${name}`,
          x: x(i) + step * 0.1,
          y: y(base + value),
          width: step * 0.8,
          height: y(base) - y(base + value),
          "data-series": name,
          "data-minute": m.start,
          "data-value": value,
        });
        rect.append(tooltip(`${clock(new Date(m.start))} · ${value} ${name}`));
        svg.append(rect);
      }
      base += value;
    }
  });

  for (const name of lines) {
    const css = SERIES_NAMES[name] || name;
    const points = minutes
      .map((m, i) => [m, i])
      .filter(([m]) => m[name] !== null && m[name] !== undefined);
    if (points.length > 1) {
      const path = points
        .map(([m, i], n) => `${n ? "L" : "M"}${(x(i) + step / 2).toFixed(1)},${y(m[name]).toFixed(1)}`)
        .join(" ");
      svg.append(svgEl("path", { class: `line ${css}`, d: path }));
    }
    for (const [m, i] of points) {
      const value = Math.round(m[name]);
      const dot = svgEl("circle", {
        class: dots ? `dot ${css}` : `dot quiet ${css}`,
        cx: x(i) + step / 2,
        cy: y(m[name]),
        r: 2,
        "data-series": css,
        "data-minute": m.start,
        "data-value": value,
      });
      dot.append(tooltip(`${clock(new Date(m.start))} · ${css} ${formatNumber(value)}`));
      svg.append(dot);
    }
  }
  figure.querySelector("svg")?.remove();
  figure.append(svg);
}

function svgEl(name, attributes) {
  const el = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) {
    el.setAttribute(key, value);
  }
  return el;
}

function label(x, y, text, anchor, parent) {
  const el = svgEl("text", { class: "label", x, y, "text-anchor": anchor });
  el.textContent = text;
  parent?.append(el);
  return el;
}

function tooltip(text) {
  const title = svgEl("title", {});
  title.textContent = text;
  return title;
}

function niceMax(value) {
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const factor of [1, 2, 5, 10]) {
    if (value <= factor * magnitude) return factor * magnitude;
  }
  return 10 * magnitude;
}

function fillTable(table, rows, emptyText, cells) {
  const body = table.tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    const tr = body.insertRow();
    tr.className = "empty";
    const td = tr.insertCell();
    td.colSpan = table.tHead.rows[0].cells.length;
    td.textContent = emptyText;
    return;
  }
  for (const row of rows) {
    const tr = body.insertRow();
    tr.append(...cells(row));
  }
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (className) td.className = className;
  return td;
}

function lastAttempt(endpoint) {
  if (!endpoint.last_attempt_at) return "–";
  const outcome = endpoint.last_status_code ?? endpoint.last_error ?? "";
  const error = endpoint.last_status_code && endpoint.last_error ? ` ${endpoint.last_error}` : "";
  return `${time(endpoint.last_attempt_at)} · ${outcome}${error}`;
}

// Times are shown in UTC, like the server's logs.
function time(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z") : "–";
}

function clock(date) {
  return date.toISOString().slice(11, 16);
}

function duration(seconds) {
  if (seconds < 1) return seconds > 0 ? `${Math.round(seconds * 1000)} ms` : "0 s";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function formatNumber(value) {
  return value >= 10000 ? `${Math.round(value / 1000)}k` : String(value);
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("admin-key").value.trim());
    $("admin-key").value = "";
    poll();
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    showSignIn();
  });
  // Poll at once when the tab comes back into view.
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) poll();
  });
  keyFromFragment();
  poll();
});
