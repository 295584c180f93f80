/* One task: its fields and every attempt from GET /api/v1/tasks/<id>, its latest attempt's
   output followed by byte offset, and the buttons that act on it (kill, relaunch, force,
   edit and relaunch, delete). */
"use strict";
(() => {
  const { api, poll, act, el, setText, syncRows, badge, time, duration, bytes, confirmDo } = scitq;
  const id = document.getElementById("main").dataset.taskId;
  const pre = document.getElementById("output");
  const stream = document.getElementById("stream");
  const follow = document.getElementById("follow");
  const state = document.getElementById("output-state");
  const buttons = Object.fromEntries(["kill", "relaunch", "force", "delete"].map((b) => [b, document.getElementById(b)]));
  const ACTIVE = ["assigned", "running"];
  let task = null, latest = null, complete = false, live, chosen = false;

  const output = scitq.follower(pre, (offset, limit) =>
    `/api/v1/tasks/${id}/output?stream=${stream.value}&offset=${offset}&limit=${limit}`,
    () => follow.checked);

  function field(name, value) {
    if (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length)) return [];
    return [el("dt", {}, name), el("dd", {}, value)];
  }

  function showFields(t) {
    const dl = document.getElementById("fields");
    const deps = t.depends_on.length
      ? t.depends_on.flatMap((d, i) => [i ? ", " : "", el("a", { href: "/ui/tasks/" + d }, d)]) : null;
    const nodes = [
      ...field("Name", t.name),
      ...field("Batch", el("a", { href: "/ui/tasks?batch=" + encodeURIComponent(t.batch) }, t.batch)),
      ...field("Command", el("code", { class: "command-full" }, t.command)),
      ...field("Shell", t.shell ? "yes" : "no (argv)"),
      ...field("Attempts", String(t.attempt)),
      ...field("Retries", t.retries ? `${t.retries}, ${duration(t.retry_delay)} apart` +
                                      (t.retry_backoff > 1 ? ` (× ${t.retry_backoff} each time)` : "") : null),
      ...field("Reason", t.reason),
      ...field("Next try", t.not_before && time(t.not_before)),
      ...field("Timeout", t.timeout && duration(t.timeout)),
      ...field("Container", t.container && t.container + (t.container_options ? " " + t.container_options : "")),
      ...field("Inputs", t.inputs.join(" ")),
      ...field("Resources", t.resources.join(" ")),
      ...field("Output to", t.output),
      ...field("Depends on", deps),
      ...field("Created", time(t.created_at)),
      ...field("Updated", time(t.updated_at)),
    ];
    // Rebuilt only when something changed: a reader's text selection survives the polls.
    const key = JSON.stringify(t, (k, v) => (k === "executions" ? undefined : v));
    if (dl.dataset.key !== key) {
      dl.replaceChildren(...nodes);
      dl.dataset.key = key;
    }
  }

  function makeExecution() {
    const tr = scitq.row(11, ["num", null, null, "num", null, "error", null, null, null, "num", "num"]);
    tr.badge = el("span");
    tr.cells[2].append(tr.badge);
    return tr;
  }

  function updateExecution(tr, e) {
    const c = tr.cells;
    setText(c[0], e.id);
    setText(c[1], e.worker);
    badge(tr.badge, e.status + (e.paused ? " (paused)" : ""));
    tr.badge.className = "badge s-" + e.status;
    setText(c[3], e.return_code);
    setText(c[4], e.reason);
    setText(c[5], e.error);
    setText(c[6], time(e.assigned_at));
    setText(c[7], time(e.started_at));
    setText(c[8], time(e.ended_at));
    const end = e.ended_at ? Date.parse(e.ended_at) : Date.now();
    setText(c[9], e.started_at ? duration((end - Date.parse(e.started_at)) / 1000) : null);
    setText(c[10], bytes(e.stdout_bytes + e.stderr_bytes));
  }

  function showButtons(t) {
    const active = ACTIVE.includes(t.status);
    buttons.kill.disabled = ["succeeded", "failed", "canceled"].includes(t.status);
    buttons.relaunch.disabled = !["succeeded", "failed", "canceled"].includes(t.status);
    buttons.force.disabled = !["waiting", "canceled"].includes(t.status);
    buttons.delete.disabled = active;
    document.querySelector("#edit button").disabled = active;
  }

  async function refresh() {
    try {
      task = await api("GET", `/api/v1/tasks/${id}`);
    } catch (e) {
      if (e.status === 404) {
        const p = document.getElementById("missing");
        p.textContent = e.message;
        p.hidden = false;
        Object.values(buttons).forEach((b) => { b.disabled = true; });
        return;
      }
      throw e;
    }
    badge(document.getElementById("status"), task.status);
    showFields(task);
    showButtons(task);
    const edit = document.getElementById("command");
    if (!edit.dataset.touched) edit.value = task.command;
    syncRows(document.querySelector("#executions tbody"), task.executions, (e) => e.id,
             makeExecution, updateExecution);
    await tail(task);
  }

  async function tail(t) {
    const last = t.executions[t.executions.length - 1];
    if (!last) {
      setText(state, "not started yet");
      return;
    }
    if (!chosen) {      // a failed task opens on the stream that holds its error
      chosen = true;
      if (t.status === "failed" && last.stderr_bytes > 0) stream.value = "stderr";
    }
    if (latest !== last.id) {         // a new attempt: its output from the start
      latest = last.id;
      complete = false;
      output.reset();
    }
    if (complete) return;
    const r = await output.read();
    complete = r.complete;
    setText(state, complete ? `complete, ${bytes(r.size)}` : `following attempt ${last.id} (${bytes(r.size)} so far)`);
  }

  function restartOutput() {
    chosen = true;       // the user chose: keep it
    latest = null;
    live.now();
  }

  stream.addEventListener("change", restartOutput);
  follow.addEventListener("change", () => { if (follow.checked) pre.scrollTop = pre.scrollHeight; });
  document.getElementById("command").addEventListener("input", (e) => { e.target.dataset.touched = "1"; });

  buttons.kill.addEventListener("click", () => {
    if (!confirmDo(`Kill task ${id}? It fails for good, without retry.`)) return;
    act(buttons.kill, () => api("POST", `/api/v1/tasks/${id}/kill`), `task ${id}: kill sent`).then(live.now);
  });
  buttons.relaunch.addEventListener("click", () => {
    act(buttons.relaunch, () => api("POST", `/api/v1/tasks/${id}/relaunch`), `task ${id}: relaunched`).then(live.now);
  });
  buttons.force.addEventListener("click", () => {
    act(buttons.force, () => api("POST", `/api/v1/tasks/${id}/force`), `task ${id}: forced`).then(live.now);
  });
  buttons.delete.addEventListener("click", async () => {
    if (!confirmDo(`Delete task ${id} with its attempts and output?`)) return;
    const batch = task && task.batch;
    if (await act(buttons.delete, () => api("DELETE", `/api/v1/tasks/${id}`))) {
      location.href = "/ui/tasks" + (batch ? "?batch=" + encodeURIComponent(batch) : "");
    }
  });
  document.getElementById("edit").addEventListener("submit", (e) => {
    e.preventDefault();
    const command = document.getElementById("command").value;
    const button = e.target.querySelector("button");
    act(button, async () => {
      await api("PUT", `/api/v1/tasks/${id}`, { command });
      if (task && task.status !== "pending" && task.status !== "waiting") {
        await api("POST", `/api/v1/tasks/${id}/relaunch`);
      }
      delete document.getElementById("command").dataset.touched;
    }, `task ${id}: command changed and relaunched`).then(live.now);
  });

  live = poll(refresh);
})();
