/* The dashboard: one row per batch from GET /ui/api/dashboard every 2 s, with its progress,
   counts, throughput, ETA and cost, and the buttons that steer it. */
"use strict";
(() => {
  const { api, poll, act, el, setText, syncRows, badge, duration, money, confirmDo } = scitq;
  const COUNTS = ["waiting", "pending", "assigned", "running", "succeeded", "failed", "canceled",
                  "remaining"];
  const tbody = document.querySelector("#batches tbody");
  let live;

  function tasksUrl(batch, status) {
    const q = new URLSearchParams({ batch: batch.name });
    if (status && status !== "remaining") q.set("status", status);
    return "/ui/tasks?" + q;
  }

  function make(b) {
    const cells = {};
    const tr = el("tr");
    const name = el("a", { href: tasksUrl(b) });
    tr.append(el("th", { scope: "row" }, name));
    cells.status = el("span");
    tr.append(el("td", {}, cells.status));
    // One bar, in segments: succeeded, failed, canceled, then what runs now.
    cells.segs = ["succeeded", "failed", "canceled", "running"].map((s) => el("span", { class: "seg s-" + s }));
    cells.bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0,
                            "aria-valuemax": 100, "aria-label": "progress of batch " + b.name },
                   cells.segs);
    cells.pct = el("span", { class: "pct" });
    tr.append(el("td", { class: "progress-col" }, cells.bar, cells.pct));
    for (const c of COUNTS) {
      cells[c] = el("a", { href: tasksUrl(b, c), class: "count", "data-count": c });
      tr.append(el("td", { class: "num" }, cells[c]));
    }
    for (const c of ["throughput", "eta", "cost"]) {
      cells[c] = el("td", { class: "num" });
      tr.append(cells[c]);
    }
    cells.toggle = el("button", { type: "button", class: "pause" });
    cells.stop = el("button", { type: "button", class: "stop danger" }, "Stop");
    cells.relaunch = el("button", { type: "button", class: "relaunch-failed" }, "Relaunch failed");
    tr.append(el("td", { class: "actions" }, cells.toggle, cells.stop, cells.relaunch));

    const ref = () => encodeURIComponent(tr.batch.id);
    cells.toggle.addEventListener("click", () => {
      const verb = tr.batch.status === "paused" ? "resume" : "pause";
      act(cells.toggle, () => api("POST", `/api/v1/batches/${ref()}/${verb}`),
          `batch ${tr.batch.name}: ${verb}d`).then(live.now);
    });
    cells.stop.addEventListener("click", () => {
      if (!confirmDo(`Stop batch ${tr.batch.name}? It is paused and its running tasks are killed (they fail).`)) return;
      act(cells.stop, () => api("POST", `/api/v1/batches/${ref()}/stop`),
          `batch ${tr.batch.name}: stopped`).then(live.now);
    });
    cells.relaunch.addEventListener("click", () => {
      let n = 0;
      act(cells.relaunch, async () => {
        n = (await api("POST", `/ui/api/batches/${ref()}/relaunch-failed`)).relaunched;
      }).then((ok) => { if (ok) scitq.flash(`batch ${tr.batch.name}: ${n} failed task(s) relaunched`); live.now(); });
    });
    tr.cells_ = cells;
    tr.nameLink = name;
    return tr;
  }

  function update(tr, b) {
    tr.batch = b;
    const c = b.counts, cells = tr.cells_;
    setText(tr.nameLink, b.name);
    badge(cells.status, b.status);
    const done = c.total - c.remaining;
    const pct = c.total ? Math.floor(done * 100 / c.total) : 0;
    const parts = [c.succeeded, c.failed, c.canceled, c.running + c.assigned];
    parts.forEach((n, i) => { cells.segs[i].style.width = (c.total ? n * 100 / c.total : 0) + "%"; });
    cells.bar.setAttribute("aria-valuenow", pct);
    cells.bar.setAttribute("aria-valuetext", `${done} of ${c.total} done`);
    setText(cells.pct, `${done}/${c.total} · ${pct}%`);
    for (const k of COUNTS) setText(cells[k], c[k]);
    setText(cells.throughput, b.throughput ? b.throughput.toFixed(1) : "–");
    setText(cells.eta, !c.total || b.eta === null ? "–" : b.eta === 0 ? "done" : duration(b.eta));
    setText(cells.cost, b.cost ? money(b.cost.spent) + (b.cost.hosts ? ` (${b.cost.hosts} up)` : "") : "–");
    setText(cells.toggle, b.status === "paused" ? "Resume" : "Pause");
    cells.toggle.setAttribute("aria-label", `${b.status === "paused" ? "Resume" : "Pause"} batch ${b.name}`);
    cells.stop.setAttribute("aria-label", `Stop batch ${b.name}`);
    cells.relaunch.setAttribute("aria-label", `Relaunch the failed tasks of batch ${b.name}`);
    cells.relaunch.disabled = !c.failed;
  }

  /* A workflow's row: its steps in order, each with its progress and the steps it waits for. */
  function makeWorkflow(item) {
    const tr = el("tr", { class: "workflow", "data-workflow": item.workflow.name });
    tr.nameCell = el("th", { scope: "row" });
    tr.steps = el("div", { class: "steps" });
    tr.append(tr.nameCell, el("td", { colspan: 14 }, tr.steps));
    return tr;
  }

  function updateWorkflow(tr, item) {
    const wf = item.workflow;
    setText(tr.nameCell, `${wf.name} (workflow, ${wf.steps.length} steps)`);
    const shown = JSON.stringify(wf.steps.map((s) => [s.step, s.depends_on, s.counts]));
    if (tr.dataset.shown === shown) return;
    tr.dataset.shown = shown;
    const chips = [];
    wf.steps.forEach((s, i) => {
      if (i) chips.push(el("span", { class: "step-arrow", "aria-hidden": "true" }, "→"));
      const c = s.counts, done = c.total - c.remaining;
      const pct = c.total ? Math.floor(done * 100 / c.total) : 0;
      const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
                              "aria-valuenow": pct, "aria-label": `progress of step ${s.step}` },
                     el("span", { class: "seg s-succeeded", style: `width:${c.total ? c.succeeded * 100 / c.total : 0}%` }),
                     el("span", { class: "seg s-failed", style: `width:${c.total ? c.failed * 100 / c.total : 0}%` }));
      chips.push(el("span", { class: "step-chip", "data-step": s.step },
                    el("a", { href: tasksUrl(s) }, s.step), bar, `${done}/${c.total}`,
                    s.depends_on.length ? el("span", { class: "note" }, `after ${s.depends_on.join(", ")}`) : null));
    });
    tr.steps.replaceChildren(...chips);
  }

  /* The rows in order: each workflow's row, then its steps' batches; other batches after. */
  function grouped(d) {
    const byId = new Map(d.batches.map((b) => [b.id, b]));
    const inWorkflow = new Map();
    const items = [];
    for (const wf of d.workflows) {
      wf.steps.forEach((s) => { s.counts = byId.get(s.id).counts; inWorkflow.set(s.id, wf.name); });
      items.push({ key: "wf:" + wf.name, workflow: wf });
      for (const s of wf.steps) items.push({ key: String(s.id), batch: byId.get(s.id), workflow_name: wf.name });
    }
    for (const b of d.batches) if (!inWorkflow.has(b.id)) items.push({ key: String(b.id), batch: b });
    return items;
  }

  async function refresh() {
    const d = await api("GET", "/ui/api/dashboard");
    syncRows(tbody, grouped(d), (item) => item.key,
             (item) => (item.workflow ? makeWorkflow(item) : make(item.batch)),
             (tr, item) => {
               if (item.workflow) return updateWorkflow(tr, item);
               update(tr, item.batch);
               tr.classList.toggle("step", Boolean(item.workflow_name));
               if (item.workflow_name) tr.dataset.workflow = item.workflow_name;
               else delete tr.dataset.workflow;
             });
    document.getElementById("empty").hidden = d.batches.length > 0;
    const w = d.workers.by_status;
    const alive = (w.running || 0) + (w.paused || 0) + (w.draining || 0);
    setText(document.getElementById("sum-workers"),
            `${alive} up` + (w.lost ? `, ${w.lost} lost` : "") + (w.offline ? `, ${w.offline} offline` : ""));
    setText(document.getElementById("sum-slots"), `${d.workers.busy}/${d.workers.slots}`);
    setText(document.getElementById("sum-hosts"), d.cost.hosts);
    setText(document.getElementById("sum-cost"), `${money(d.cost.spent)} spent, ${money(d.cost.hourly)}/h now`);
  }

  live = poll(refresh);
})();
