// simx dashboard: fills the page by polling the JSON API on the page's own URL.
// Every value from the API goes into the DOM as text (textContent), never as markup.
"use strict";

(function () {
  const body = document.body;
  const PAGE = body.dataset.page;
  const API = body.dataset.api;
  const POLL = Math.max(250, parseInt(body.dataset.poll, 10) || 1000);
  const PAGE_SIZE = 50;
  const STATES = ["waiting", "running", "finished", "failed", "cancelled"];
  const ENDED = new Set(["finished", "failed", "cancelled"]);
  const params = new URLSearchParams(location.search);
  let offset = Math.max(0, parseInt(params.get("offset"), 10) || 0);
  let nextOffset = null;
  let timer = null;
  let inflight = false;
  let failures = 0;
  let quiet = false;           // the batch or run shown has ended: poll less often
  const refused = new Set();   // POST URLs answered 403: their buttons stay hidden

  // ---- small DOM helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else if (k === "class") node.className = v;
      else node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const $ = (sel) => document.querySelector(sel);
  const isInt = (v) => Number.isInteger(v) && v >= 0;
  const fmt = (v) => (v === null || v === undefined || v === "" ? "–" : String(v));
  function short(v, n) {
    if (v === null || v === undefined) return "–";
    const text = typeof v === "string" ? v : JSON.stringify(v);
    if (text === undefined || text === null) return "–";
    return text.length > n ? text.slice(0, n - 1) + "…" : text;
  }
  function ago(iso) {
    if (!iso) return "–";
    const s = (Date.now() - Date.parse(iso)) / 1000;
    if (!isFinite(s)) return iso;
    if (s < 90) return Math.max(0, Math.round(s)) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }
  function duration(s) {
    if (typeof s !== "number" || !isFinite(s)) return "–";
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function progressBar(fraction, id) {
    const f = Math.max(0, Math.min(1, Number(fraction) || 0));
    return el("progress", { max: "1", value: f.toFixed(4), id: id, title: Math.round(f * 100) + "%" });
  }
  function link(href, text) { return el("a", { href: href, text: text }); }
  function batchLink(id) { return isInt(id) ? link("/batch/" + id, String(id)) : fmt(id); }
  function runLink(b, i) { return isInt(b) && isInt(i) ? link("/batch/" + b + "/run/" + i, b + "/" + i) : "–"; }
  function cell(...children) { return el("td", null, ...children); }
  function stateBadge(state) { return el("span", { class: "state state-" + String(state).replace(/[^a-z]/g, ""), text: fmt(state) }); }
  function fill(tbody, rows) { tbody.replaceChildren(...rows); }
  function facts(pairs) {
    const dl = $("#facts");
    const items = [];
    for (const [k, v] of pairs) if (v !== undefined) items.push(el("dt", { text: k }), el("dd", null, v instanceof Node ? v : fmt(v)));
    dl.replaceChildren(...items);
  }

  function status(text, bad) {
    const s = $("#status");
    s.textContent = text;
    s.classList.toggle("bad", !!bad);
  }
  function flash(text) {
    const f = $("#flash");
    f.textContent = text || "";
    f.hidden = !text;
  }

  // ---- talking to the API (same origin: the browser sends its Origin and credentials)
  async function getJSON(url) {
    // no-cache: revalidated every time; a batch page comes with an ETag, so an unchanged one is a 304
    const resp = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-cache" });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) throw new Error((data && data.message) || ("HTTP " + resp.status));
    return data;
  }
  async function post(url, what, button) {
    if (!window.confirm(what + "?")) return;
    if (button) button.disabled = true;
    try {
      const resp = await fetch(url, { method: "POST", headers: { Accept: "application/json" }, credentials: "same-origin" });
      let data = null;
      try { data = await resp.json(); } catch (e) { data = null; }
      if (!resp.ok) {
        flash(what + " refused: " + ((data && data.message) || ("HTTP " + resp.status)));
        if (resp.status === 403) { refused.add(url); if (button) button.hidden = true; }
      } else {
        flash((data && data.message) || "done");
      }
    } catch (e) {
      flash(what + " failed: " + e.message);
    } finally {
      if (button) button.disabled = false;
      refresh();
    }
  }
  function actionButton(label, url, what, allowed) {
    if (allowed === false || refused.has(url)) return null;
    const b = el("button", { type: "button", class: "danger small", text: label });
    b.addEventListener("click", () => post(url, what, b));
    return b;
  }

  function apiURL(extra) {
    const q = new URLSearchParams();
    q.set("offset", String(offset));
    q.set("limit", String(PAGE_SIZE));
    for (const [k, v] of Object.entries(extra || {})) if (v) q.set(k, v);
    return API + "?" + q.toString();
  }
  function pager(count, total) {
    const prev = $("#prev"), next = $("#next"), range = $("#range");
    if (!prev) return;
    prev.disabled = offset === 0;
    next.disabled = nextOffset === null || nextOffset === undefined;
    range.textContent = count ? (offset + 1) + "–" + (offset + count) + (total ? " of " + total : "") : "none";
  }
  function wirePager() {
    const prev = $("#prev"), next = $("#next");
    if (!prev) return;
    prev.addEventListener("click", () => { offset = Math.max(0, offset - PAGE_SIZE); keepURL(); refresh(); });
    next.addEventListener("click", () => { if (isInt(nextOffset)) { offset = nextOffset; keepURL(); refresh(); } });
  }
  function keepURL() {
    const q = new URLSearchParams(location.search);
    if (offset) q.set("offset", String(offset)); else q.delete("offset");
    const s = q.toString();
    history.replaceState(null, "", location.pathname + (s ? "?" + s : ""));
  }

  // ---- pages
  function completed(b) { return (b.n_finished || 0) + (b.n_failed || 0) + (b.n_cancelled || 0); }
  function rate(b) {
    const done = (b.n_finished || 0) + (b.n_failed || 0);
    return b.elapsed > 0 ? (done / b.elapsed).toFixed(2) : "–";
  }

  async function batchesPage() {
    const data = await getJSON(apiURL());
    const batches = data.batches || [];
    nextOffset = data.next_offset;
    fill($("#batches tbody"), batches.map((b) => el("tr", { "data-batch": isInt(b.id) ? b.id : null },
      cell(batchLink(b.id)), cell(fmt(b.name)), cell(fmt(b.user)), cell(fmt(b.engine)), cell(stateBadge(b.state)),
      el("td", { class: "nowrap" }, progressBar(b.n_runs ? completed(b) / b.n_runs : 0), " ", completed(b) + "/" + fmt(b.n_runs)),
      ...STATES.map((s) => el("td", { class: "num n-" + s, text: fmt(b["n_" + s]) })),
      el("td", { class: "num", text: rate(b) }), cell(duration(b.elapsed)),
      cell(b.state === "active" && isInt(b.id)
        ? actionButton("cancel", "/batch/" + b.id + "/cancel", "Cancel batch " + b.id, b.can_cancel) : null))));
    pager(batches.length);
  }

  function countsTable(b) {
    const rows = STATES.map((s) => el("tr", { class: "count-" + s },
      el("th", { text: s }), el("td", { class: "num", id: "n-" + s, text: fmt(b["n_" + s]) }),
      cell(progressBar(b.n_runs ? (b["n_" + s] || 0) / b.n_runs : 0, "bar-" + s))));
    fill($("#counts tbody"), rows);
  }

  async function batchPage() {
    const state = new URLSearchParams(location.search).get("state") || "";
    for (const a of document.querySelectorAll("#filter a")) a.classList.toggle("on", a.dataset.state === state);
    const data = await getJSON(apiURL({ state: state }));
    const b = data.batch || {};
    facts([["name", b.name],   // a description keeps its lines (no inline styles under the CSP: <br>s)
      ["description", b.description ? el("span", null, ...String(b.description).split("\n").flatMap((l, i) => i ? [el("br"), l] : [l])) : undefined],
      ["owner", b.owner], ["user", b.user], ["group", b.group], ["engine", b.engine],
      ["priority", b.priority], ["state", stateBadge(b.state)],
      ["runs", b.n_runs], ["runs/s", rate(b)], ["started", b.start_time], ["elapsed", duration(b.elapsed)],
      ["ended", b.end_time], ["served", b.served === undefined ? undefined : (b.served ? "yes" : "no: no connected worker matches")]]);
    const p = $("#progress");
    const f = b.n_runs ? completed(b) / b.n_runs : 0;
    p.value = f;
    $("#percent").textContent = Math.floor(f * 100) + "% (" + completed(b) + " of " + fmt(b.n_runs) + " ended)";
    countsTable(b);
    const cancel = $("#cancel-batch");
    cancel.hidden = !(b.state === "active" && b.can_cancel !== false) || refused.has(API + "/cancel");
    // the API filters by ?state= when it knows how; filtering here too is harmless
    const runs = (data.runs || []).filter((r) => !state || r.state === state);
    nextOffset = data.next_offset;
    fill($("#runs tbody"), runs.map((r) => el("tr", { class: "run-" + String(r.state).replace(/[^a-z]/g, "") },
      cell(runLink(r.batch_id, r.batch_index)), cell(stateBadge(r.state)),
      el("td", { class: "nowrap" }, progressBar(r.progress), " ", Math.round((Number(r.progress) || 0) * 100) + "%"),
      el("td", { class: "num", text: fmt(r.attempt) }), cell(fmt(r.worker_id)), cell(fmt(r.host)),
      el("td", { class: "msg", text: short(r.message, 80) }),
      el("td", { class: "msg", text: r.state === "finished" ? short(r.result, 80) : short(r.error, 80) }),
      cell(!ENDED.has(r.state) && b.state === "active" && isInt(r.batch_id) && isInt(r.batch_index)
        ? actionButton("cancel", "/batch/" + r.batch_id + "/run/" + r.batch_index + "/cancel",
          "Cancel run " + r.batch_index, r.can_cancel) : null))));
    pager(runs.length, state ? null : b.n_runs);
    return b.end_time ? "ended" : null;
  }

  async function runPage() {
    const data = await getJSON(API);
    const r = data.run || {};
    facts([["state", stateBadge(r.state)], ["attempt", r.attempt], ["worker", r.worker_id], ["host", r.host],
      ["message", r.message], ["result", r.result === null || r.result === undefined ? null : short(r.result, 2000)],
      ["error", r.error], ["started", r.started], ["ended", r.ended]]);
    $("#progress").value = Math.max(0, Math.min(1, Number(r.progress) || 0));
    $("#percent").textContent = Math.round((Number(r.progress) || 0) * 100) + "%";
    const cancel = $("#cancel-run");
    cancel.hidden = ENDED.has(r.state) || r.can_cancel === false || refused.has(API + "/cancel");
    fill($("#attempts tbody"), (data.run && data.run.attempts || []).map((a) => el("tr", null,
      el("td", { class: "num", text: fmt(a.attempt) }), cell(fmt(a.worker_id)), cell(fmt(a.host)),
      cell(fmt(a.started)), cell(fmt(a.ended)), cell(stateBadge(a.outcome)), el("td", { class: "msg", text: fmt(a.message) }))));
    const tb = r.traceback;
    $("#traceback-section").hidden = !tb;
    $("#traceback").textContent = tb || "";
    return ENDED.has(r.state) ? "ended" : null;
  }

  async function workersPage() {
    const data = API.match(/^\/workers?$/) ? await getJSON(apiURL()) : await getJSON(API);
    const workers = data.workers || (data.worker ? [data.worker] : []);
    nextOffset = data.next_offset === undefined ? null : data.next_offset;
    fill($("#workers tbody"), workers.map((w) => el("tr", { "data-worker": isInt(w.id) ? w.id : null },
      cell(isInt(w.id) ? link("/worker/" + w.id, String(w.id)) : fmt(w.id)), cell(fmt(w.host)), cell(fmt(w.pid)),
      cell(fmt(w.engine)), cell(fmt(w.group)), cell(fmt(w.user)), cell(stateBadge(w.state)),
      cell(w.batch_id === null || w.batch_id === undefined ? "–" : runLink(w.batch_id, w.batch_index)),
      el("td", { title: fmt(w.last_contact), text: ago(w.last_contact) }),
      cell(w.connected && w.state !== "draining" && isInt(w.id)
        ? actionButton("drain", "/worker/" + w.id + "/drain", "Drain worker " + w.id, w.can_drain) : null))));
    pager(workers.length);
  }

  const PAGES = { batches: batchesPage, batch: batchPage, run: runPage, workers: workersPage };

  async function refresh() {
    if (document.hidden) { clearTimeout(timer); timer = setTimeout(refresh, POLL); return; }
    if (inflight) return;
    inflight = true;
    clearTimeout(timer);
    try {
      quiet = (await PAGES[PAGE]()) === "ended";
      failures = 0;
      status("updated " + new Date().toLocaleTimeString(), false);
    } catch (e) {
      failures += 1;
      status("not updated: " + e.message, true);
    } finally {
      inflight = false;
      // poll every POLL ms; every 5 s once what the page shows has ended, or while the API fails
      timer = setTimeout(refresh, failures ? Math.min(5000, POLL * (1 + failures)) : quiet ? 5 * POLL : POLL);
    }
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  function init() {
    wirePager();
    const cb = $("#cancel-batch");
    if (cb) cb.addEventListener("click", () => post(API + "/cancel", "Cancel this batch", cb));
    const cr = $("#cancel-run");
    if (cr) cr.addEventListener("click", () => post(API + "/cancel", "Cancel this run", cr));
    for (const a of document.querySelectorAll("#filter a")) {
      a.addEventListener("click", (ev) => {
        ev.preventDefault();
        const q = new URLSearchParams();
        if (a.dataset.state) q.set("state", a.dataset.state);
        offset = 0;
        history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q.toString() : ""));
        refresh();
      });
    }
    refresh();
  }
  init();
})();
