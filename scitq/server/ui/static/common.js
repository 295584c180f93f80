/* What every page of the scitq UI shares: API calls (with the session's cookie, a 401 sends
   to the login page), a poll loop, DOM building without innerHTML (so no text from the
   server is ever read as markup), keyed table rows updated in place, and formatting. */
"use strict";

const scitq = (() => {
  const POLL_MS = 2000;       // live views refresh every 2 s
  const csrf = document.querySelector('meta[name="scitq-csrf"]').content;

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    if (csrf) h["X-CSRF-Token"] = csrf;     // the session cookie goes with it (same-origin)
    return h;
  }

  function toLogin() {
    const here = location.pathname + location.search;
    location.href = "/ui/login?next=" + encodeURIComponent(here);
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  /* fetch with the session's credentials; the raw Response (for output read by offset). */
  async function raw(path, options) {
    const opts = Object.assign({ credentials: "same-origin" }, options || {});
    opts.headers = headers(opts.headers);
    const r = await fetch(path, opts);
    if (r.status === 401) {
      toLogin();
      throw new ApiError(401, "not logged in");
    }
    if (!r.ok) {
      let message = r.status + " " + r.statusText;
      try {
        const body = await r.json();
        if (body && body.error) message = body.error;
      } catch (e) { /* not JSON: keep the status line */ }
      throw new ApiError(r.status, message);
    }
    return r;
  }

  /* A JSON call: api("GET", url) or api("PUT", url, body). */
  async function api(method, path, body) {
    const opts = { method };
    if (body !== undefined) {
      opts.body = JSON.stringify(body);
      opts.headers = { "Content-Type": "application/json" };
    }
    const r = await raw(path, opts);
    return r.status === 204 ? null : r.json();
  }

  /* Run fn now and every interval ms, skipping while the tab is hidden; errors are shown,
     and the loop goes on (the server may be restarting). Returns {now()} to refresh at once. */
  function poll(fn, interval) {
    let timer = null, running = false, again = false;
    async function tick() {
      clearTimeout(timer);
      if (running) { again = true; return; }
      running = true;
      try {
        if (!document.hidden) {
          await fn();
          clearStale();
        }
      } catch (e) {
        if (e.status !== 401) stale(e.message);
      } finally {
        running = false;
        timer = setTimeout(tick, again ? 0 : (interval || POLL_MS));
        again = false;
      }
    }
    document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
    tick();
    return { now: tick };
  }

  /* --- messages -------------------------------------------------------------------- */

  function flash(message, kind) {
    const box = document.getElementById("flash");
    box.replaceChildren(el("p", { class: "flash " + (kind || "ok") }, message));
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => box.replaceChildren(), kind === "error" ? 10000 : 4000);
  }

  function stale(message) {
    let p = document.getElementById("stale");
    if (!p) {
      p = el("p", { id: "stale", class: "flash error", role: "alert" });
      document.getElementById("main").prepend(p);
    }
    p.textContent = "Could not refresh: " + message;
  }

  function clearStale() {
    const p = document.getElementById("stale");
    if (p) p.remove();
  }

  /* Run an action from a button: disabled meanwhile, its error shown; true on success. */
  async function act(button, fn, done) {
    if (button) button.disabled = true;
    try {
      await fn();
      if (done) flash(done);
      return true;
    } catch (e) {
      if (e.status !== 401) flash(e.message, "error");
      return false;
    } finally {
      if (button) button.disabled = false;
    }
  }

  /* --- DOM ------------------------------------------------------------------------- */

  /* el("a", {href: "/x", class: "y"}, "text", childNode...): text children are text nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  function setText(node, text) {
    const t = text === null || text === undefined ? "–" : String(text);
    if (node.textContent !== t) node.textContent = t;
  }

  /* Keep a tbody's rows in the order of items, one per key: new rows from make(item), every
     row then updated by update(row, item). Rows stay in place between polls, so a button
     being clicked is never swapped for a copy under the pointer. */
  function syncRows(tbody, items, key, make, update) {
    const old = new Map([...tbody.rows].map((r) => [r.dataset.key, r]));
    let before = tbody.firstChild;
    for (const item of items) {
      const k = String(key(item));
      let row = old.get(k);
      if (row) old.delete(k);
      else {
        row = make(item);
        row.dataset.key = k;
      }
      update(row, item);
      if (row !== before) tbody.insertBefore(row, before);
      before = row.nextSibling;
    }
    for (const row of old.values()) row.remove();
  }

  /* A row of n cells (<td>), with classes from cls[i]. */
  function row(n, cls) {
    const tr = el("tr");
    for (let i = 0; i < n; i++) tr.append(el("td", { class: (cls && cls[i]) || null }));
    return tr;
  }

  function badge(node, status) {
    setText(node, status);
    node.className = "badge s-" + status;
  }

  /* --- formats --------------------------------------------------------------------- */

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + "s";
    if (seconds < 3600) return Math.floor(seconds / 60) + "m" + String(seconds % 60).padStart(2, "0") + "s";
    if (seconds < 86400) return Math.floor(seconds / 3600) + "h" + String(Math.floor(seconds % 3600 / 60)).padStart(2, "0") + "m";
    return Math.floor(seconds / 86400) + "d" + Math.floor(seconds % 86400 / 3600) + "h";
  }

  /* "3m ago" today; the date and time for an older one (a day-old "25h ago" says no date). */
  function ago(iso) {
    if (!iso) return "–";
    if (new Date(iso).toDateString() !== new Date().toDateString()) return time(iso);
    return duration((Date.now() - Date.parse(iso)) / 1000) + " ago";
  }

  function time(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    const today = new Date().toDateString() === d.toDateString();
    return today ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function money(x) {
    if (x === null || x === undefined) return "–";
    return x.toFixed(x < 10 ? 3 : 2);
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function percent(x) {
    return x === null || x === undefined ? "–" : Math.round(x) + "%";
  }

  function confirmDo(question) {
    return window.confirm(question);
  }

  /* --- following a growing text by byte offset (task output, job logs) --------------- */

  const TAIL = 64 * 1024;          // bytes shown first of a long output
  const CHUNK = 1024 * 1024;       // bytes read per poll
  const KEEP = 512 * 1024;         // characters kept on the page

  /* A follower of url (+ "offset=&limit="): read() appends what is new to pre and tells
     {size, complete, source} from the X-Scitq-* headers; reset() starts over. */
  function follower(pre, urlFor, isFollowing) {
    let offset = null, decoder = new TextDecoder(), source = null;
    function reset() {
      offset = null;
      source = null;
      decoder = new TextDecoder();
      pre.textContent = "";
    }
    function append(text) {
      if (!text) return;
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      let all = pre.textContent + text;
      if (all.length > KEEP) all = "[… earlier output not shown …]\n" + all.slice(all.length - KEEP);
      pre.textContent = all;
      if (isFollowing() || atEnd) pre.scrollTop = pre.scrollHeight;
    }
    async function read() {
      if (offset === null) {
        // The size first (one byte read), then only the tail of a long output.
        const head = await raw(urlFor(0, 1));
        const size = Number(head.headers.get("X-Scitq-Size"));
        source = head.headers.get("X-Scitq-Execution");
        offset = Math.max(0, size - TAIL);
        if (offset > 0) append("[… " + bytes(offset) + " not shown …]\n");
      }
      const r = await raw(urlFor(offset, CHUNK));
      const src = r.headers.get("X-Scitq-Execution");
      if (src !== null && source !== null && src !== source) {   // a new attempt began
        reset();
        return read();
      }
      const size = Number(r.headers.get("X-Scitq-Size"));
      const data = new Uint8Array(await r.arrayBuffer());
      offset += data.length;
      append(decoder.decode(data, { stream: true }));
      if (size - offset > CHUNK) {     // far behind: skip to the tail rather than crawl
        append("\n[… " + bytes(size - TAIL - offset) + " skipped …]\n");
        offset = size - TAIL;
        decoder = new TextDecoder();
      }
      return { size, offset, complete: r.headers.get("X-Scitq-Complete") === "true" && offset >= size };
    }
    return { read, reset };
  }

  return { api, raw, poll, flash, act, el, setText, syncRows, row, badge, duration, ago, time,
           money, bytes, percent, confirmDo, follower, POLL_MS };
})();
