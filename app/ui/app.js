// The dashboard: plain JavaScript over the JSON API, no build step and nothing from a CDN.
// Charts are a few SVG bars drawn here; a charting library would outweigh the whole page.
"use strict";

const view = document.getElementById("view");
const KEY = "selfinstruct.apiKey";
let timer = null;
let currentView = 0;  // incremented on each navigation: a poll of a page left behind stops
const FINISHED = ["succeeded", "failed", "cancelled"];

// --- API access -----------------------------------------------------------------------------------

function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      message = [body.error, body.detail].filter(Boolean).join(": ") || message;
      if (body.errors) message += "\n" + body.errors.map((e) => JSON.stringify(e)).join("\n");
    } catch (_) { /* not JSON */ }
    if (response.status === 401) message += " (enter an API key above)";
    throw new Error(message);
  }
  return (response.headers.get("content-type") || "").startsWith("application/json") ? response.json() : response;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function showError(where, error) {
  where.replaceChildren(el("p", { class: "error", role: "alert" }, error.message || String(error)));
}

// --- key form -------------------------------------------------------------------------------------

function refreshKeyState() {
  document.getElementById("key-state").textContent = sessionStorage.getItem(KEY) ? "key set" : "no key";
}
document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key-input");
  if (input.value.trim()) sessionStorage.setItem(KEY, input.value.trim());
  else sessionStorage.removeItem(KEY);
  input.value = "";
  refreshKeyState();
  route();
});

// --- views ----------------------------------------------------------------------------------------

function progressBar(done, total) {
  const share = total ? Math.min(1, done / total) : 0;
  return el("span", { class: "progress", title: `${done} of ${total}` },
    el("div", { style: `width:${(share * 100).toFixed(1)}%` }));
}

async function jobsView() {
  const box = el("section", {}, el("h1", {}, "Jobs"), el("p", { class: "muted" }, "Loading..."));
  view.replaceChildren(box);
  const draw = async () => {
    try {
      const page = await api("/v1/jobs?limit=50");
      const rows = page.items.map((job) => el("tr", { "data-job": job.id },
        el("td", {}, el("a", { href: `#/jobs/${job.id}` }, job.id.slice(0, 8))),
        el("td", { class: `status ${job.status}` }, job.status),
        el("td", {}, progressBar(job.progress.instructions_accepted, job.num_instructions), " ",
          `${job.progress.instructions_accepted} / ${job.num_instructions}`),
        el("td", { class: "num" }, job.progress.instances_accepted),
        el("td", { class: "muted" }, new Date(job.created_at).toLocaleString())));
      box.replaceChildren(el("h1", {}, "Jobs"), rows.length
        ? el("table", { id: "jobs-table" }, el("tr", {}, el("th", {}, "job"), el("th", {}, "status"),
            el("th", {}, "instructions"), el("th", { class: "num" }, "examples"), el("th", {}, "created")), rows)
        : el("p", {}, "No jobs yet. ", el("a", { href: "#/new" }, "Start one.")));
    } catch (error) { showError(box, error); }
  };
  await draw();
  timer = setInterval(draw, 2000);
}

function newJobView() {
  const message = el("div", { id: "new-job-message" });
  const form = el("form", { id: "new-job" },
    el("p", {}, el("label", {}, "Seed tasks (JSONL, one task per line) ",
      el("input", { type: "file", id: "seed-file", accept: ".jsonl,.json,.txt", required: "" }))),
    el("p", {}, el("label", {}, "Instructions to generate ",
      el("input", { type: "number", id: "num-instructions", value: "100", min: "1", required: "" }))),
    el("p", {}, el("label", {}, "Mode ", el("select", { id: "mode" },
      el("option", { value: "paper" }, "paper (three steps)"), el("option", { value: "batched" }, "batched (Alpaca-style)")))),
    el("p", {}, el("label", {}, "Seed ", el("input", { type: "number", id: "rng-seed", placeholder: "random" }))),
    el("button", { type: "submit", id: "start-job" }, "Upload and start"), message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.replaceChildren(el("p", { class: "muted" }, "Uploading..."));
    try {
      const data = new FormData();
      data.append("file", document.getElementById("seed-file").files[0]);
      const seedSet = await api("/v1/seed-sets", { method: "POST", body: data });
      const options = { mode: document.getElementById("mode").value };
      const seed = document.getElementById("rng-seed").value;
      if (seed) options.seed = Number(seed);
      const job = await api("/v1/jobs", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ seed_set_id: seedSet.id,
          num_instructions: Number(document.getElementById("num-instructions").value), options }),
      });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) { showError(message, error); }
  });
  view.replaceChildren(el("section", {}, el("h1", {}, "New job"), form));
}

async function jobView(jobId) {
  const head = el("section", { id: "job-head" }, el("p", { class: "muted" }, "Loading..."));
  const report = el("section", { id: "report" }, el("h2", {}, "Report"), el("p", { class: "muted" }, "Loading..."));
  const items = el("section", { id: "items" });
  view.replaceChildren(head, report, items);
  const shownView = currentView;
  let drawnState = null;  // the job's status and progress when the head and report were drawn
  let examples = null;
  const poll = async () => {
    let wait = 1500;
    try {
      // The head and the report come from the same poll, so their counts agree. The report is
      // costlier than the status: it is fetched only when the job moved, and a slow one spaces
      // the polls out (4 times its own duration) instead of letting the head run ahead of it.
      let job = await api(`/v1/jobs/${jobId}`);
      if (shownView !== currentView) return;
      const state = JSON.stringify([job.status, job.progress]);
      if (state !== drawnState) {
        const started = Date.now();
        let data;
        [job, data] = await Promise.all([api(`/v1/jobs/${jobId}`), api(`/v1/jobs/${jobId}/report`)]);
        if (shownView !== currentView) return;
        wait = Math.max(wait, 4 * (Date.now() - started));
        drawReport(report, data);
        if (examples) examples.update(data);
        else examples = drawItems(items, jobId, data);
        drawHead(head, job);
        drawnState = JSON.stringify([job.status, job.progress]);
      }
      if (FINISHED.includes(job.status) && state === drawnState) return;  // final: stop polling
    } catch (error) { showError(head, error); }
    if (shownView === currentView) timer = setTimeout(poll, wait);
  };
  await poll();
}

function drawHead(box, job) {
  const p = job.progress;
  const format = el("select", { id: "download-format" },
    ["alpaca", "openai_chat", "sharegpt", "prompt_completion", "raw"].map((f) => el("option", { value: f }, f)));
  const container = el("select", { id: "download-container" },
    ["jsonl", "json", "parquet"].map((c) => el("option", { value: c }, c)));
  const finished = ["succeeded", "failed", "cancelled"].includes(job.status);
  box.replaceChildren(...[
    el("h1", {}, `Job ${job.id.slice(0, 8)} `, el("span", { id: "job-status", class: `status ${job.status}` }, job.status)),
    el("p", {}, progressBar(p.instructions_accepted, job.num_instructions), " ",
      el("span", { id: "job-accepted" }, `${p.instructions_accepted} / ${job.num_instructions}`),
      ` instructions accepted; ${p.instances_accepted} examples; ${p.llm_requests} LLM requests; `,
      `${p.prompt_tokens + p.completion_tokens} tokens; rounds ${p.rounds_completed}`),
    job.backend_load ? el("p", { id: "backend-load", class: "muted" },
      `Backend ${job.backend_load.backend}: ${job.backend_load.in_flight} requests in flight of a limit of `,
      `${job.backend_load.concurrency_limit}, ${job.backend_load.waiting} waiting (all jobs)`) : null,
    job.error ? el("p", { class: "error" }, job.error) : null,
    el("div", { class: "toolbar" },
      el("button", { id: "cancel-button", disabled: finished ? "" : null, onclick: async () => {
        try { await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" }); } catch (error) { alert(error.message); }
      } }, "Cancel"),
      el("button", { id: "rerun-button", title: "A new job with this job's seed set, options and RNG seed", onclick: async () => {
        try {
          const rerun = await api(`/v1/jobs/${job.id}/rerun`, { method: "POST" });
          location.hash = `#/jobs/${rerun.id}`;
        } catch (error) { alert(error.message); }
      } }, "Rerun"),
      job.rerun_of ? el("a", { id: "rerun-of", href: `#/jobs/${job.rerun_of}` }, `rerun of ${job.rerun_of.slice(0, 8)}`) : null,
      el("span", { class: "muted" }, "Download"), format, container,
      el("button", { id: "download-button", onclick: () => download(job.id, format.value, container.value) }, "Download")),
  ].filter(Boolean));
}

async function download(jobId, format, container) {
  const response = await api(`/v1/jobs/${jobId}/export?format=${format}&container=${container}`);
  const blob = await response.blob();
  const link = el("a", { href: URL.createObjectURL(blob), download: `${jobId}.${format}.${container}` });
  document.body.append(link);
  link.click();
  link.remove();
}

// --- report charts --------------------------------------------------------------------------------

function histogramChart(title, histogram, { id, labelDigits = 2 } = {}) {
  const width = 360, rowHeight = 16, labelWidth = 60;
  const rows = histogram.counts.map((count, i) => ({ label: Number(histogram.edges[i]).toFixed(labelDigits), count }))
    .filter((row, i, all) => row.count || all.slice(i).some((r) => r.count));
  const peak = Math.max(1, ...rows.map((r) => r.count));
  const height = rows.length * rowHeight + 4;
  const svg = svgNode("svg", { width: "100%", viewBox: `0 0 ${width} ${height}`, style: `max-width:${width}px`, id, role: "img", "aria-label": title });
  rows.forEach((row, i) => {
    const y = i * rowHeight;
    svg.append(svgNode("text", { x: labelWidth - 6, y: y + 12, "text-anchor": "end" }, row.label));
    svg.append(svgNode("rect", { x: labelWidth, y: y + 3, height: 11, fill: "#2b6cb0",
      width: Math.max(row.count ? 1 : 0, (width - labelWidth - 50) * row.count / peak) }));
    svg.append(svgNode("text", { x: labelWidth + 4 + (width - labelWidth - 50) * row.count / peak, y: y + 12 }, row.count));
  });
  return el("div", {}, el("h2", {}, title),
    el("p", { class: "muted" }, `n = ${histogram.count}, median ${histogram.median ?? "-"}, mean ${histogram.mean ?? "-"}`), svg);
}

const CHART_FONT = "11px system-ui, sans-serif"; // as `svg text` in style.css
let textCanvas = null;

function textWidth(text) {
  // Measured on a canvas: the chart's text nodes are not in the page yet when it is laid out.
  textCanvas = textCanvas || document.createElement("canvas").getContext("2d");
  textCanvas.font = CHART_FONT;
  return textCanvas.measureText(text).width;
}

function fitText(text, room) {
  // The whole text when it fits in `room` pixels, else its longest prefix that fits with an
  // ellipsis (never a silently cut word), else nothing.
  if (textWidth(text) <= room) return text;
  for (let n = text.length - 1; n >= 3; n--) {
    const shortened = `${text.slice(0, n)}\u2026`;
    if (textWidth(shortened) <= room) return shortened;
  }
  return "";
}

function verbChart(verbs) {
  // A nested bar: one bar per root verb, split into its most frequent direct objects.
  const width = 520, rowHeight = 20, palette = ["#2b6cb0", "#4c9f70", "#d69e2e", "#9f7aea", "#a0aec0"];
  const top = verbs.top_verbs.slice(0, 15);
  // Room for the longest verb (up to 40% of the chart), so labels are never clipped at the edge.
  const labelWidth = Math.min(width * 0.4, Math.max(60, ...top.map((v) => Math.ceil(textWidth(v.verb)) + 12)));
  const peak = Math.max(1, ...top.map((v) => v.count));
  const scale = (width - labelWidth - 10) / peak;
  const height = top.length * rowHeight + 4;
  const svg = svgNode("svg", { width: "100%", viewBox: `0 0 ${width} ${height}`, id: "verb-chart", role: "img", "aria-label": "root verbs" });
  top.forEach((verb, i) => {
    const y = i * rowHeight;
    const label = svgNode("text", { x: labelWidth - 6, y: y + 14, "text-anchor": "end", class: "verb" }, fitText(verb.verb, labelWidth - 8));
    label.append(svgNode("title", {}, verb.verb));
    svg.append(label);
    let x = labelWidth;
    const pieces = [...verb.objects, ["other", verb.count - verb.objects.reduce((s, [, n]) => s + n, 0)]];
    const labels = [];
    pieces.forEach(([object, count], j) => {
      if (count <= 0) return;
      const w = count * scale;
      const rect = svgNode("rect", { x, y: y + 3, width: w, height: 15, fill: palette[Math.min(j, palette.length - 1)] });
      rect.append(svgNode("title", {}, `${verb.verb} ${object}: ${count}`));
      svg.append(rect);
      const shown = fitText(object, w - 6);
      if (shown) labels.push(svgNode("text", { x: x + 3, y: y + 14, fill: "#fff", style: "fill:#fff", class: "object" }, shown));
      x += w;
    });
    svg.append(...labels); // after all of the row's bars, so no bar is painted over a label
  });
  return el("div", {}, el("h2", {}, "Root verbs and their direct objects"),
    el("p", { class: "muted" }, `${verbs.parsed} of ${verbs.sample} sampled instructions parsed (${verbs.parser})`), svg);
}

function svgNode(tag, attrs = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function rejectionTable(title, part, id) {
  const rows = Object.entries(part.by_reason).map(([reason, count]) =>
    el("tr", {}, el("td", {}, reason), el("td", { class: "num" }, count),
      el("td", { class: "cell muted" }, (part.examples[reason] || [""])[0])));
  const surplus = part.over_target ? `, ${part.over_target} past the target` : "";
  return el("div", {}, el("h2", {}, `${title}: ${part.accepted} accepted of ${part.generated}${surplus}`),
    el("table", { id }, el("tr", {}, el("th", {}, "rejected because"), el("th", { class: "num" }, "count"), el("th", {}, "example")), rows));
}

function drawReport(box, data) {
  const usage = data.usage;
  box.replaceChildren(
    el("h2", {}, "Report"),
    el("p", {}, `Classification tasks: ${share(data.classification_share)}; instances without input: `,
      `${share(data.empty_input_share)}; tokens per accepted example: ${usage.tokens_per_accepted_example ?? "-"}`,
      usage.cost !== null ? `; cost ${usage.cost} (${usage.cost_per_accepted_example} per example)` : ""),
    el("div", { class: "grid" },
      rejectionTable("Instructions", data.instructions, "instruction-rejections"),
      rejectionTable("Instances", data.instances, "instance-rejections"),
      verbChart(data.verbs),
      histogramChart("ROUGE-L to the nearest seed", data.rouge_l.to_nearest_seed, { id: "rouge-seed-chart" }),
      histogramChart("ROUGE-L to the nearest other instruction", data.rouge_l.to_nearest_instruction, { id: "rouge-other-chart" }),
      histogramChart("Instruction length (words)", data.lengths.instruction_words, { labelDigits: 0 }),
      histogramChart("Input length (words)", data.lengths.input_words, { labelDigits: 0 }),
      histogramChart("Output length (words)", data.lengths.output_words, { labelDigits: 0 })));
}

function share(value) {
  return value === null || value === undefined ? "-" : `${(value * 100).toFixed(1)}%`;
}

// --- examples browser -----------------------------------------------------------------------------

function drawItems(box, jobId, firstReport) {
  let report = firstReport;
  const viewSelect = el("select", { id: "items-view" },
    el("option", { value: "accepted" }, "accepted examples"),
    el("option", { value: "rejected_instructions" }, "rejected instructions"),
    el("option", { value: "rejected_instances" }, "rejected instances"));
  const reasonSelect = el("select", { id: "items-reason" });
  const search = el("input", { id: "items-search", type: "search", placeholder: "search text" });
  const table = el("table", { id: "items-table" });
  const pager = el("div", { class: "toolbar" });
  let offset = 0;
  const fillReasons = () => {
    const part = viewSelect.value === "rejected_instructions" ? report.instructions
      : viewSelect.value === "rejected_instances" ? report.instances : null;
    reasonSelect.replaceChildren(el("option", { value: "" }, "any reason"),
      ...Object.keys(part ? part.by_reason : {}).map((r) => el("option", { value: r }, r)));
    reasonSelect.disabled = !part;
  };
  const load = async () => {
    const params = new URLSearchParams({ view: viewSelect.value, limit: "25", offset: String(offset) });
    if (search.value.trim()) params.set("q", search.value.trim());
    if (reasonSelect.value) params.set("reason", reasonSelect.value);
    try {
      const page = await api(`/v1/jobs/${jobId}/items?${params}`);
      const rejected = viewSelect.value !== "accepted";
      const instructionsOnly = viewSelect.value === "rejected_instructions";
      table.replaceChildren(
        el("tr", {}, el("th", {}, "instruction"), instructionsOnly ? null : el("th", {}, "input"),
          instructionsOnly ? null : el("th", {}, "output"), rejected ? el("th", {}, "reason") : null,
          instructionsOnly ? el("th", {}, "nearest (ROUGE-L)") : null),
        ...page.items.map((item) => el("tr", { class: "item" },
          el("td", { class: "cell" }, item.instruction),
          instructionsOnly ? null : el("td", { class: "cell" }, item.input),
          instructionsOnly ? null : el("td", { class: "cell" }, item.output),
          rejected ? el("td", { class: "reason" }, item.reason) : null,
          instructionsOnly ? el("td", { class: "cell muted" }, item.nearest ? `${item.nearest} (${Number(item.max_rouge).toFixed(2)})` : "") : null)));
      pager.replaceChildren(
        el("button", { disabled: offset === 0 ? "" : null, onclick: () => { offset = Math.max(0, offset - 25); load(); } }, "Previous"),
        el("span", { id: "items-count", class: "muted" }, `${page.total ? offset + 1 : 0}-${offset + page.items.length} of ${page.total}`),
        el("button", { disabled: offset + 25 >= page.total ? "" : null, onclick: () => { offset += 25; load(); } }, "Next"));
    } catch (error) { showError(table, error); }
  };
  viewSelect.addEventListener("change", () => { offset = 0; fillReasons(); load(); });
  reasonSelect.addEventListener("change", () => { offset = 0; load(); });
  let typing = null;
  search.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { offset = 0; load(); }, 250); });
  fillReasons();
  box.replaceChildren(el("h2", {}, "Examples"), el("div", { class: "toolbar" }, viewSelect, reasonSelect, search), table, pager);
  load();
  return {
    update(newReport) {  // keep the chosen view, reason and search; show what is new
      report = newReport;
      const chosen = reasonSelect.value;
      fillReasons();
      reasonSelect.value = chosen;
      load();
    },
  };
}

// --- routing --------------------------------------------------------------------------------------

function route() {
  if (timer) { clearInterval(timer); clearTimeout(timer); timer = null; }
  currentView += 1;
  const hash = location.hash || "#/";
  const match = hash.match(/^#\/jobs\/([0-9a-f-]{36})$/);
  if (match) jobView(match[1]);
  else if (hash === "#/new") newJobView();
  else jobsView();
}

window.addEventListener("hashchange", route);
refreshKeyState();
route();
