/* Recruiters with what their hosts cost (GET /api/v1/recruiters) and the hosts rented
   (GET /api/v1/instances, a page by cursor, newest first), refreshed every 2 s. */
"use strict";
(() => {
  const { api, poll, act, el, setText, syncRows, badge, duration, money, confirmDo } = scitq;
  const PAGE = 100;
  const form = document.getElementById("filters");
  let after = null, next = null, live;

  function makeRecruiter() {
    const tr = scitq.row(13, ["num", null, null, null, null, "num", "num", "num", "num", "num", "num", "num", "actions"]);
    tr.del = el("button", { type: "button", class: "danger" }, "Delete");
    tr.cells[12].append(tr.del);
    tr.del.addEventListener("click", () => {
      const r = tr.recruiter;
      if (!confirmDo(`Delete recruiter ${r.id}? It rents nothing more; its live hosts keep serving until idle.`)) return;
      act(tr.del, () => api("DELETE", `/api/v1/recruiters/${r.id}`), `recruiter ${r.id}: deleted`).then(live.now);
    });
    return tr;
  }

  function wants(r) {
    if (r.flavor) return r.flavor;
    const parts = [];
    if (r.min_cpu) parts.push(`≥${r.min_cpu} CPU`);
    if (r.min_ram) parts.push(`≥${r.min_ram} GiB RAM`);
    if (r.min_disk) parts.push(`≥${r.min_disk} GiB disk`);
    if (r.gpu) parts.push("GPU");
    return parts.join(", ") || "any";
  }

  function updateRecruiter(tr, r) {
    tr.recruiter = r;
    const c = tr.cells;
    setText(c[0], r.id);
    setText(c[1], r.batch);
    setText(c[2], r.provider + (r.spot ? " (spot)" : ""));
    setText(c[3], wants(r));
    setText(c[4], r.regions ? r.regions.join(", ") : "any");
    setText(c[5], `${r.cost.hosts}/${r.max_workers}`);
    setText(c[6], r.concurrency);
    setText(c[7], r.remaining);
    setText(c[8], money(r.cost.hourly) + (r.max_hourly_cost ? ` ≤ ${money(r.max_hourly_cost)}` : ""));
    setText(c[9], money(r.cost.spent));
    setText(c[10], r.budget === null ? "no cap" : money(r.budget));
    setText(c[11], r.rank);
    tr.del.setAttribute("aria-label", `Delete recruiter ${r.id}`);
  }

  function makeInstance() {
    const tr = scitq.row(12, ["num", null, null, null, null, null, "num", "num", "num", null, "num", "error"]);
    tr.badge = el("span");
    tr.cells[5].append(tr.badge);
    return tr;
  }

  function updateInstance(tr, i) {
    const c = tr.cells;
    setText(c[0], i.id);
    setText(c[1], i.name);
    setText(c[2], i.provider);
    setText(c[3], i.region);
    setText(c[4], i.flavor + (i.spot ? " (spot)" : ""));
    badge(tr.badge, i.status);
    setText(c[6], duration(i.age));
    setText(c[7], money(i.hourly_cost));
    setText(c[8], money(i.cost));
    setText(c[9], i.ip);
    setText(c[10], i.recruiter_id);
    setText(c[11], i.error);
  }

  async function refresh() {
    const q = new URLSearchParams({ limit: PAGE });
    if (form.status.value) q.set("status", form.status.value);
    if (after !== null) q.set("after", after);
    const [recruiters, instances] = await Promise.all([api("GET", "/api/v1/recruiters"),
                                                       api("GET", "/api/v1/instances?" + q)]);
    syncRows(document.querySelector("#recruiters tbody"), recruiters, (r) => r.id, makeRecruiter, updateRecruiter);
    document.getElementById("empty").hidden = recruiters.length > 0;
    const sum = (k) => recruiters.reduce((n, r) => n + r.cost[k], 0);
    setText(document.getElementById("sum-hosts"), sum("hosts"));
    setText(document.getElementById("sum-hourly"), money(sum("hourly")));
    setText(document.getElementById("sum-spent"), money(sum("spent")));
    syncRows(document.querySelector("#instances tbody"), instances.items, (i) => i.id, makeInstance, updateInstance);
    document.getElementById("no-instances").hidden = instances.items.length > 0;
    next = instances.next;
    document.getElementById("next").disabled = next === null;
    document.getElementById("first").disabled = after === null;
  }

  form.status.addEventListener("change", () => { after = null; live.now(); });
  form.addEventListener("submit", (e) => e.preventDefault());
  document.getElementById("next").addEventListener("click", () => { if (next !== null) { after = next; live.now(); } });
  document.getElementById("first").addEventListener("click", () => { after = null; live.now(); });
  live = poll(refresh);
})();
