/* Workers from GET /api/v1/workers every 2 s, with live +/- on concurrency and prefetch
   (PUT /api/v1/workers/<id>: the worker applies it at once), pause, resume, drain and delete;
   and the form that rents workers by adding a recruiter (POST /api/v1/recruiters). */
"use strict";
(() => {
  const { api, poll, act, el, setText, syncRows, badge, ago, percent, confirmDo, flash } = scitq;
  const tbody = document.querySelector("#workers tbody");
  const GONE = ["offline", "lost"];
  let live;

  function stepper(tr, field, label) {
    const minus = el("button", { type: "button", class: "step", "data-field": field, "data-step": -1 }, "−");
    const plus = el("button", { type: "button", class: "step", "data-field": field, "data-step": 1 }, "+");
    const value = el("span", { class: "value " + field });
    for (const b of [minus, plus]) {
      b.addEventListener("click", () => {
        const w = tr.worker;
        const to = w[field] + Number(b.dataset.step);
        act(b, async () => {
          update(tr, await api("PUT", `/api/v1/workers/${w.id}`, { [field]: to }));
        }, `${w.name}: ${label} ${to}`);
      });
    }
    tr[field] = { minus, plus, value };
    return el("span", { class: "stepper" }, minus, value, plus);
  }

  function setStatus(tr, status, question) {
    return (e) => {
      const w = tr.worker;
      if (question && !confirmDo(question(w))) return;
      act(e.target, async () => {
        update(tr, await api("PUT", `/api/v1/workers/${w.id}`, { status }));
      }, `${w.name}: ${status}`);
    };
  }

  function make() {
    const tr = el("tr");
    tr.name = el("th", { scope: "row" });
    tr.append(tr.name);
    tr.badge = el("span");
    tr.append(el("td", {}, tr.badge));
    tr.append(el("td", { class: "num" }, stepper(tr, "concurrency", "concurrency")));
    tr.append(el("td", { class: "num" }, stepper(tr, "prefetch", "prefetch")));
    tr.plain = ["batch", "load", "memory", "disk", "cpus", "seen", "succeeded", "failed", "current"].map((k) =>
      el("td", { class: ["batch", "seen", "current"].includes(k) ? null : "num", "data-col": k }));
    tr.append(...tr.plain);
    tr.pause = el("button", { type: "button", class: "pause" });
    tr.drain = el("button", { type: "button", class: "drain" }, "Drain");
    tr.del = el("button", { type: "button", class: "delete danger" }, "Delete");
    tr.append(el("td", { class: "actions" }, tr.pause, tr.drain, tr.del));
    tr.pause.addEventListener("click", (e) =>
      setStatus(tr, tr.worker.status === "paused" ? "running" : "paused")(e));
    tr.drain.addEventListener("click", setStatus(tr, "draining",
      (w) => `Drain ${w.name}? It finishes its running tasks, takes no new one, then exits.`));
    tr.del.addEventListener("click", () => {
      const w = tr.worker;
      if (!confirmDo(`Delete worker ${w.name}? What it holds goes back to the queue.`)) return;
      act(tr.del, () => api("DELETE", `/api/v1/workers/${w.id}`), `${w.name}: deleted`).then(live.now);
    });
    return tr;
  }

  function update(tr, w) {
    tr.worker = w;
    setText(tr.name, w.name);
    tr.name.title = w.hostname || "";
    badge(tr.badge, w.status);
    setText(tr.concurrency.value, `${w.running}/${w.concurrency}`);
    setText(tr.prefetch.value, w.prefetch);
    tr.concurrency.minus.disabled = w.concurrency <= 1;
    tr.prefetch.minus.disabled = w.prefetch <= 0;
    for (const [k, label] of [["concurrency", "concurrency"], ["prefetch", "prefetch"]]) {
      tr[k].minus.setAttribute("aria-label", `Lower the ${label} of ${w.name}`);
      tr[k].plus.setAttribute("aria-label", `Raise the ${label} of ${w.name}`);
    }
    const [batch, load, memory, disk, cpus, seen, succeeded, failed, current] = tr.plain;
    const a = activity[w.id] || { succeeded: null, failed: null, current: [] };
    setText(succeeded, a.succeeded);
    setText(failed, a.failed);
    const links = a.current.map((t) => el("a", { href: "/ui/tasks/" + t.task_id, title: t.status },
                                            t.name || String(t.task_id)));
    const shown = a.current.map((t) => `${t.task_id}:${t.status}`).join(" ");
    if (current.dataset.shown !== shown) {      // rebuilt only when it changed (keeps focus)
      current.dataset.shown = shown;
      current.replaceChildren(...links.flatMap((link, i) => (i ? [", ", link] : [link])));
      if (!links.length) current.textContent = "–";
    }
    setText(batch, w.batch);
    setText(load, w.load === null ? null : w.load.toFixed(2));
    setText(memory, percent(w.memory));
    setText(disk, percent(w.disk));
    setText(cpus, w.cpus);
    setText(seen, ago(w.last_seen));
    const gone = GONE.includes(w.status);
    setText(tr.pause, w.status === "paused" ? "Resume" : "Pause");
    tr.pause.setAttribute("aria-label", `${w.status === "paused" ? "Resume" : "Pause"} ${w.name}`);
    tr.drain.setAttribute("aria-label", `Drain ${w.name}`);
    tr.del.setAttribute("aria-label", `Delete ${w.name}`);
    tr.pause.disabled = gone || w.status === "draining";
    tr.drain.disabled = gone || w.status === "draining";
    tr.classList.toggle("gone", gone);
  }

  let activity = {};   // worker id -> {succeeded, failed, current tasks}

  async function refresh() {
    const workers = await api("GET", "/api/v1/workers");
    activity = workers.length
      ? await api("GET", "/ui/api/worker-activity?ids=" + workers.map((w) => w.id).join(",")) : {};
    syncRows(tbody, workers, (w) => w.id, make, update);
    document.getElementById("empty").hidden = workers.length > 0;
  }

  live = poll(refresh);

  /* --- renting workers: a recruiter for a batch ------------------------------------- */

  const form = document.getElementById("rent");
  let flavors = [];

  async function loadChoices() {
    const [providers, batches] = await Promise.all([api("GET", "/api/v1/providers"),
                                                    api("GET", "/api/v1/batches")]);
    const usable = providers.filter((p) => p.configured);
    form.provider.replaceChildren(...(usable.length ? usable : providers).map((p) =>
      el("option", { value: p.name, disabled: !p.configured }, p.name + (p.error ? " (" + p.error + ")" : ""))));
    if (!usable.length) {
      form.provider.prepend(el("option", { value: "", selected: true }, "no provider configured"));
    }
    document.getElementById("batch-names").replaceChildren(...batches.map((b) => el("option", { value: b.name })));
    await loadFlavors();
  }

  async function loadFlavors() {
    flavors = form.provider.value
      ? await api("GET", "/api/v1/providers/flavors?" + new URLSearchParams({ provider: form.provider.value, limit: 5000 }))
      : [];
    const byName = new Map();
    for (const f of flavors) if (!byName.has(f.name)) byName.set(f.name, f);   // cheapest first
    document.getElementById("flavor-names").replaceChildren(...[...byName.values()].map((f) =>
      el("option", { value: f.name }, describe(f))));
    showRegions();
  }

  function describe(f) {
    return `${f.cpu} CPU, ${f.ram} GiB RAM, ${f.disk} GiB disk` + (f.gpu ? `, ${f.gpu} GPU` : "") +
           (f.hourly_cost !== null ? `, from ${scitq.money(f.hourly_cost)}/h` : "");
  }

  function showRegions() {
    const name = form.flavor.value;
    const spot = form.spot.checked;
    const rows = flavors.filter((f) => f.name === name && f.spot === spot);
    const keep = form.region.value;
    form.region.replaceChildren(el("option", { value: "" }, "any"), ...rows.map((f) =>
      el("option", { value: f.region }, f.region + (f.hourly_cost !== null ? ` (${scitq.money(f.hourly_cost)}/h)` : ""))));
    if (rows.some((f) => f.region === keep)) form.region.value = keep;
    setText(document.getElementById("flavor-info"),
            rows.length ? `${name}: ${describe(rows[0])}` : name ? `${name} is not in the catalog of ${form.provider.value} (refresh it, or check the name)` : "");
  }

  form.provider.addEventListener("change", () => act(null, loadFlavors));
  form.flavor.addEventListener("input", showRegions);
  form.spot.addEventListener("change", showRegions);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const number = (input) => (input.value === "" ? null : Number(input.value));
    const concurrency = number(form.concurrency);
    const body = {
      batch: form.batch.value.trim(), provider: form.provider.value, flavor: form.flavor.value.trim(),
      regions: form.region.value ? [form.region.value] : null,
      max_workers: number(form.max_workers), concurrency,
      tasks_per_worker: number(form.tasks_per_worker) || concurrency,
      prefetch: number(form.prefetch) || 0, idle_timeout: number(form.idle_timeout) ?? 300,
      spot: form.spot.checked,
    };
    if (number(form.budget)) body.budget = number(form.budget);
    act(form.querySelector("button[type=submit]"), async () => {
      const r = await api("POST", "/api/v1/recruiters", body);
      flash(`recruiter ${r.id} added to batch ${r.batch}: hosts are rented while it has tasks (see Recruiters & hosts)`);
    });
  });

  act(null, loadChoices);
})();
