/* Jobs (GET /api/v1/jobs, newest first) every 2 s, a retry button for failed ones, and the
   log of the chosen job followed by byte offset (GET /api/v1/jobs/<id>/log). */
"use strict";
(() => {
  const { api, poll, act, el, setText, syncRows, badge, time } = scitq;
  const form = document.getElementById("filters");
  const pre = document.getElementById("log");
  let shown = null, complete = false, live;

  const log = scitq.follower(pre, (offset, limit) => `/api/v1/jobs/${shown}/log?offset=${offset}&limit=${limit}`,
                             () => true);

  function make() {
    const tr = scitq.row(9, ["num", null, null, null, "num", "error", null, null, "actions"]);
    tr.badge = el("span");
    tr.cells[3].append(tr.badge);
    tr.view = el("button", { type: "button" }, "Log");
    tr.retry = el("button", { type: "button" }, "Retry");
    tr.cells[8].append(tr.view, tr.retry);
    tr.view.addEventListener("click", () => show(tr.job.id));
    tr.retry.addEventListener("click", () => {
      act(tr.retry, () => api("POST", `/api/v1/jobs/${tr.job.id}/retry`), `job ${tr.job.id}: retried`)
        .then(() => { if (shown === tr.job.id) show(shown); else live.now(); });
    });
    return tr;
  }

  function update(tr, j) {
    tr.job = j;
    const c = tr.cells;
    setText(c[0], j.id);
    setText(c[1], j.kind);
    setText(c[2], j.target);
    badge(tr.badge, j.status);
    setText(c[4], `${j.attempts}/${j.max_attempts}` +
                  (j.earlier_attempts ? ` (+${j.earlier_attempts} before retry)` : ""));
    setText(c[5], j.error);
    setText(c[6], time(j.created_at));
    setText(c[7], time(j.ended_at));
    tr.retry.hidden = j.status !== "failed";
    tr.view.setAttribute("aria-label", `Show the log of job ${j.id}`);
    tr.retry.setAttribute("aria-label", `Retry job ${j.id}`);
    tr.classList.toggle("chosen", j.id === shown);
  }

  function show(id) {
    shown = id;
    complete = false;
    log.reset();
    document.getElementById("log-box").hidden = false;
    setText(document.getElementById("log-title"), `Log of job ${id}`);
    live.now();
  }

  async function refresh() {
    const q = new URLSearchParams({ limit: 100 });
    for (const k of ["status", "kind"]) if (form[k].value) q.set(k, form[k].value);
    const page = await api("GET", "/api/v1/jobs?" + q);
    syncRows(document.querySelector("#jobs tbody"), page.items, (j) => j.id, make, update);
    document.getElementById("empty").hidden = page.items.length > 0;
    if (shown !== null && !complete) {
      const r = await log.read();
      complete = r.complete;
      setText(document.getElementById("log-state"), complete ? `finished, ${scitq.bytes(r.size)}` : "following…");
    }
  }

  for (const k of ["status", "kind"]) form[k].addEventListener("change", () => live.now());
  form.addEventListener("submit", (e) => e.preventDefault());
  live = poll(refresh);
})();
