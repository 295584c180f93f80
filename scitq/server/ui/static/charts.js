/* The dashboard's charts, drawn by uPlot (vendored: uplot-1.6.32.min.js, MIT): tasks ended
   per minute (succeeded, failed), slots busy and free, and cost spent, for every batch or
   one, from GET /ui/api/charts (per-minute rollups). Each chart's element keeps its uPlot
   as `.uplot` (its data is what is drawn) and the number of points in data-points. */
"use strict";
(() => {
  const { api, poll, el } = scitq;
  const EVERY = 10000;          // the rollups are made every 10 s
  const choice = document.getElementById("chart-batch");
  const span = document.getElementById("chart-minutes");
  const empty = document.getElementById("chart-empty");
  const SPECS = {
    "chart-tasks": { series: [["succeeded", "#2e7d32"], ["failed", "#c62828"]], unit: "tasks/min" },
    "chart-slots": { series: [["busy", "#1565c0"], ["free", "#9e9e9e"]], unit: "slots" },
    "chart-cost": { series: [["cost", "#6a1b9a"]], unit: "spent" },
  };
  const charts = {};

  function width(node) {
    return Math.max(260, Math.min(node.parentElement.clientWidth || 420, 640));
  }

  function draw(id, data) {
    const node = document.getElementById(id);
    const spec = SPECS[id];
    const columns = [data.minutes, ...spec.series.map(([key]) => data[key])];
    node.dataset.points = data.minutes.length;
    if (!charts[id]) {
      charts[id] = new uPlot({
        width: width(node), height: 180,
        series: [{}, ...spec.series.map(([key, color]) => ({ label: key, stroke: color, width: 2,
                                                              spanGaps: true }))],
        axes: [{}, { label: spec.unit, size: 60 }],
        // One point alone would span years: show the five minutes before it instead.
        scales: { x: { time: true, range: (u, min, max) => (min === max ? [min - 300, max + 60] : [min, max]) } },
      }, columns, node);
      node.uplot = charts[id];
    } else {
      charts[id].setData(columns);
    }
  }

  function syncChoices(batches) {
    const names = batches.map((b) => b.name);
    const current = [...choice.options].slice(1).map((o) => o.value);
    if (current.join("\n") === names.join("\n")) return;
    const keep = choice.value;
    choice.replaceChildren(el("option", { value: "" }, "every batch"),
                           ...names.map((n) => el("option", { value: n }, n)));
    choice.value = names.includes(keep) ? keep : "";
  }

  async function refresh() {
    const q = new URLSearchParams({ minutes: span.value });
    if (choice.value) q.set("batch", choice.value);
    const [data, batches] = await Promise.all([api("GET", "/ui/api/charts?" + q),
                                               api("GET", "/api/v1/batches")]);
    syncChoices(batches);
    for (const id of Object.keys(SPECS)) draw(id, data);
    empty.hidden = data.minutes.length > 0;
    document.getElementById("charts").dataset.batch = choice.value;
  }

  const live = poll(refresh, EVERY);
  choice.addEventListener("change", live.now);
  span.addEventListener("change", live.now);
})();
