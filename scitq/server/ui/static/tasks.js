/* The task list: filters (batch, status, name) and pages by cursor from GET /api/v1/tasks,
   the page shown refreshed every 2 s. Totals come from the batch counts (GROUP BY), never a
   COUNT(*) per page. The filters and the cursor live in the URL, so a page can be linked. */
"use strict";
(() => {
  const { api, poll, el, setText, syncRows, badge, ago, time, duration } = scitq;
  const PAGE = 50;
  const TOTAL_EVERY = 5;       // polls between two refreshes of the totals (10 s)
  const form = document.getElementById("filters");
  const tbody = document.querySelector("#tasks tbody");
  const params = new URLSearchParams(location.search);
  const filters = { batch: params.get("batch") || "", status: params.get("status") || "",
                    name: params.get("name") || "" };
  let after = params.get("after");           // cursor of the page shown (null: the first)
  let next = null;                           // cursor of the page after it
  let previous = [];                         // cursors of the pages before it
  let batches = null, polls = 0;

  form.batch.value = filters.batch;
  form.status.value = filters.status;
  form.name.value = filters.name;

  function query(extra) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    for (const [k, v] of Object.entries(extra || {})) if (v !== null && v !== undefined) q.set(k, v);
    return q;
  }

  function remember() {
    history.replaceState(null, "", "/ui/tasks?" + query({ after }));
  }

  function short(text, width) {
    text = String(text).replace(/\s+/g, " ").trim();
    return text.length <= width ? text : text.slice(0, width - 1) + "…";
  }

  let runs = {};      // task id -> its latest attempt (worker, start, end), for the page shown

  function make() {
    const tr = scitq.row(11, ["num"]);
    tr.link = el("a");
    tr.cells[0].append(tr.link);
    tr.badge = el("span");
    tr.cells[3].append(tr.badge);
    tr.cells[4].className = "num";
    tr.cells[6].className = "num";
    tr.cells[10].className = "command";
    return tr;
  }

  function update(tr, t) {
    const run = runs[t.id] || {};
    tr.link.href = "/ui/tasks/" + t.id;
    setText(tr.link, t.id);
    setText(tr.cells[1], t.name);
    setText(tr.cells[2], t.batch);
    badge(tr.badge, t.status);
    setText(tr.cells[4], t.attempt);
    setText(tr.cells[5], run.worker);
    const end = run.ended_at ? Date.parse(run.ended_at) : Date.now();
    setText(tr.cells[6], run.started_at ? duration((end - Date.parse(run.started_at)) / 1000) : null);
    setText(tr.cells[7], run.ended_at ? time(run.ended_at) : null);
    setText(tr.cells[8], t.reason);
    setText(tr.cells[9], ago(t.updated_at));
    setText(tr.cells[10], short(t.command, 80));
    tr.cells[10].title = t.command;
  }

  async function refreshBatches() {
    batches = await api("GET", "/api/v1/batches");
    const select = form.batch;
    const keep = filters.batch;
    const names = batches.map((b) => b.name);
    if (keep && !names.includes(keep)) names.push(keep);
    const current = [...select.options].slice(1).map((o) => o.value);
    if (current.join("\n") !== names.join("\n")) {
      select.replaceChildren(el("option", { value: "" }, "any"), ...names.map((n) => el("option", { value: n }, n)));
      select.value = keep;
    }
  }

  function showTotal() {
    const span = document.getElementById("total");
    if (!batches || filters.name) { setText(span, ""); return; }
    const chosen = batches.filter((b) => !filters.batch || b.name === filters.batch || String(b.id) === filters.batch);
    const n = chosen.reduce((sum, b) => sum + (filters.status ? b.counts[filters.status] : b.counts.total), 0);
    setText(span, `${n} task(s)` + (filters.status ? ` ${filters.status}` : "") +
                  (filters.batch ? ` in batch ${filters.batch}` : ""));
  }

  async function refresh() {
    if (polls++ % TOTAL_EVERY === 0) await refreshBatches();
    const page = await api("GET", "/api/v1/tasks?" + query({ after, limit: PAGE }));
    runs = page.items.length
      ? await api("GET", "/ui/api/task-runs?ids=" + page.items.map((t) => t.id).join(",")) : {};
    syncRows(tbody, page.items, (t) => t.id, make, update);
    next = page.next;
    document.getElementById("empty").hidden = page.items.length > 0;
    document.getElementById("next").disabled = next === null;
    document.getElementById("prev").disabled = after === null;
    document.getElementById("first").disabled = after === null;
    showTotal();
  }

  const live = poll(refresh);

  function go(cursor) {
    after = cursor;
    remember();
    live.now();
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    filters.batch = form.batch.value;
    filters.status = form.status.value;
    filters.name = form.name.value.trim();
    previous = [];
    polls = 0;
    go(null);
  });
  // A choice in a list applies at once; the name applies on Enter or the button.
  form.batch.addEventListener("change", () => form.requestSubmit());
  form.status.addEventListener("change", () => form.requestSubmit());
  document.getElementById("next").addEventListener("click", () => {
    if (next === null) return;
    previous.push(after);
    go(next);
  });
  document.getElementById("prev").addEventListener("click", () => go(previous.length ? previous.pop() : null));
  document.getElementById("first").addEventListener("click", () => { previous = []; go(null); });
})();
