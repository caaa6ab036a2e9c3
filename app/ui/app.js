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
      const more = (body.errors || []).map(describeError).filter((line) => !message.includes(line));
      if (more.length) message += "\n" + more.join("\n");
    } catch (_) { /* not JSON */ }
    if (response.status === 401) message += " (enter an API key above)";
    throw new Error(message);
  }
  return (response.headers.get("content-type") || "").startsWith("application/json") ? response.json() : response;
}

function describeError(error) {
  // One entry of an error body's `errors`: {field, message}, with a `line` for seed files.
  const where = [error.line !== undefined ? `line ${error.line}` : null, error.field].filter(Boolean).join(" ");
  return error.message ? [where, error.message].filter(Boolean).join(": ") : JSON.stringify(error);
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
        el("td", { class: "num" }, spentText(job.cost)),
        el("td", { class: "num" }, job.cost ? job.cost.cache_hits : ""),
        el("td", { class: "muted" }, new Date(job.created_at).toLocaleString())));
      box.replaceChildren(el("h1", {}, "Jobs"), rows.length
        ? el("table", { id: "jobs-table" }, el("tr", {}, el("th", {}, "job"), el("th", {}, "status"),
            el("th", {}, "instructions"), el("th", { class: "num" }, "examples"),
            el("th", { class: "num" }, "spent"), el("th", { class: "num" }, "cache hits"), el("th", {}, "created")), rows)
        : el("p", {}, "No jobs yet. ", el("a", { href: "#/new" }, "Start one.")));
    } catch (error) { showError(box, error); }
  };
  await draw();
  timer = setInterval(draw, 2000);
}

// The choices the API accepts (the upload's `format`, GenerationOptions' `mode` and `judges`).
const SEED_FORMATS = [
  ["self_instruct", "Self-Instruct JSONL (one task per line)"],
  ["natural_instructions", "Natural Instructions task file"],
  ["alpaca", "Alpaca JSON records"],
  ["lines", "plain text, one instruction per line"],
];
const MODES = [
  ["paper", "paper (three steps)"],
  ["batched", "batched (Alpaca-style)"],
  ["unnatural", "unnatural (cores and their rephrasings)"],
];
const JUDGES = [
  ["instruction", "instruction judge (keeps or drops each candidate)", false],
  ["answer", "answer judge (grades 1-3)", true],
  ["faithfulness", "faithfulness judge (grades 1-3, instances with an input)", true],
];
const BALANCE = [  // [option, control id, label, attributes]
  ["classification_share", "balance-classification-share", "Classification share (0-1)", { min: "0", max: "1", step: "0.01" }],
  ["input_share", "balance-input-share", "Share with an input (0-1)", { min: "0", max: "1", step: "0.01" }],
  ["max_per_verb", "balance-max-per-verb", "Most instructions per root verb", { min: "1", step: "1" }],
];

function labelled(text, control) {
  return el("p", {}, el("label", {}, `${text} `, control));
}

function choices(id, pairs) {
  return el("select", { id }, pairs.map(([value, label]) => el("option", { value }, label)));
}

function backendSelect() {
  // Filled from GET /v1/backends; the empty choice leaves `backend` out (the server's default).
  const select = el("select", { id: "backend" }, el("option", { value: "" }, "default"));
  api("/v1/backends").then((backends) => {
    const names = backends.map((b) => b.name).filter((name) => name !== "default");
    select.append(...names.map((name) => el("option", { value: name }, name)));
  }).catch((error) => { select.title = `backends not listed: ${error.message}`; });
  return select;
}

function judgeFieldset() {
  const rows = JUDGES.map(([name, label, graded]) => el("p", {},
    el("label", {}, el("input", { type: "checkbox", id: `judge-${name}` }), ` ${label}`),
    graded ? el("label", {}, " lowest grade kept ",
      el("input", { type: "number", id: `judge-${name}-threshold`, min: "1", max: "3", placeholder: "2" })) : null));
  return el("fieldset", { id: "judges" }, el("legend", {}, "LLM judges (paper mode)"), rows);
}

function balanceFieldset() {
  const rows = BALANCE.map(([, id, label, attrs]) =>
    labelled(label, el("input", { type: "number", id, placeholder: "none", ...attrs })));
  return el("fieldset", { id: "balance" }, el("legend", {}, "Balance while generating (paper mode)"), rows);
}

function newJobView() {
  const message = el("div", { id: "new-job-message" });
  const form = el("form", { id: "new-job" },
    labelled("Seed tasks", el("input", { type: "file", id: "seed-file", accept: ".jsonl,.json,.txt", required: "" })),
    labelled("Seed file format", choices("seed-format", SEED_FORMATS)),
    labelled("Instructions to generate", el("input", { type: "number", id: "num-instructions", value: "100", min: "1", required: "" })),
    labelled("Mode", choices("mode", MODES)),
    labelled("Rephrasings per core (unnatural)", el("input", { type: "number", id: "reformulations", min: "0", max: "10", placeholder: "3" })),
    labelled("Backend", backendSelect()),
    labelled("RNG seed", el("input", { type: "number", id: "rng-seed", placeholder: "random" })),
    judgeFieldset(), balanceFieldset(),
    labelled("Preview instructions", el("input", { type: "number", id: "preview-instructions", value: "20", min: "1", max: "200" })),
    el("button", { type: "submit", id: "start-job" }, "Upload and start"), " ",
    el("button", { type: "button", id: "preview-job", title: "Run the recipe for a few instructions and project the full job's cost" }, "Preview"),
    message);
  const submit = async (preview) => {
    if (!form.reportValidity()) return;
    message.replaceChildren(el("p", { class: "muted" }, "Uploading..."));
    try {
      const job = await startJob(preview);
      location.hash = `#/jobs/${job.id}`;
    } catch (error) { showError(message, error); }
  };
  form.addEventListener("submit", (event) => { event.preventDefault(); submit(false); });
  form.querySelector("#preview-job").addEventListener("click", () => submit(true));
  view.replaceChildren(el("section", {}, el("h1", {}, "New job"), form));
}

async function startJob(preview = false) {
  const data = new FormData();
  data.append("file", document.getElementById("seed-file").files[0]);
  data.append("format", document.getElementById("seed-format").value);
  const seedSet = await api("/v1/seed-sets", { method: "POST", body: data });
  const body = { seed_set_id: seedSet.id,
    num_instructions: Number(document.getElementById("num-instructions").value), options: formOptions() };
  if (preview && inputValue("preview-instructions")) body.preview_instructions = Number(inputValue("preview-instructions"));
  return api(preview ? "/v1/jobs/preview" : "/v1/jobs", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

function spentText(cost) {
  // The list's short form of a job's spend: its cost where the backend has prices, else tokens.
  if (!cost) return "";
  return cost.cost !== null ? `${cost.cost}` : `${cost.prompt_tokens + cost.completion_tokens} tokens`;
}

function costLine(job) {
  // Tokens and cost so far, the projected total while the job runs, and the cache's hits.
  const c = job.cost;
  if (!c) return null;
  const parts = [`${c.prompt_tokens + c.completion_tokens} tokens so far`];
  if (c.cost !== null) parts.push(`cost ${c.cost}`);
  if (c.projected) {
    const total = c.projected.cost ?? c.projected.prompt_tokens;
    parts.push(`projected total ${c.projected.cost ? "cost" : "prompt tokens"} ${total.expected} (${total.low}-${total.high})`);
  }
  parts.push(`${c.cache_hits} cache hits`);
  return el("p", { id: "job-cost" }, parts.join("; "));
}

function projectionTable(job) {
  const p = job.projection;
  if (!p) return null;
  const rows = ["requests", "prompt_tokens", "completion_tokens", "cost", "wall_seconds"].map((name) => {
    const span = p[name];
    return el("tr", {}, el("td", {}, name.replace(/_/g, " ")),
      ...(span ? [span.expected, span.low, span.high] : ["-", "-", "-"]).map((v) => el("td", { class: "num" }, String(v))));
  });
  const y = p.yield.accepted_per_step1_request;
  return el("div", { id: "projection" },
    el("h2", {}, `Projected for ${p.target} instructions (95% range)`),
    el("table", {}, el("tr", {}, ...["", "expected", "low", "high"].map((h) => el("th", {}, h))), rows),
    el("p", { class: "muted" }, `Yield: ${y.expected} accepted per step-1 request (${y.low}-${y.high}); rejected: `,
      Object.entries(p.yield.rejection_reasons).map(([k, v]) => `${k} ${v}`).join(", ") || "none"));
}

function inputValue(id) {
  return document.getElementById(id).value.trim();
}

function formOptions() {
  // Only what was chosen: the rest is left to the API's defaults, and the API judges the mix.
  const options = { mode: inputValue("mode") };
  if (inputValue("backend")) options.backend = inputValue("backend");
  if (inputValue("rng-seed")) options.seed = Number(inputValue("rng-seed"));
  if (inputValue("reformulations")) options.reformulations = Number(inputValue("reformulations"));
  const judges = judgeOptions(), balance = balanceOptions();
  if (judges) options.judges = judges;
  if (balance) options.balance = balance;
  return options;
}

function judgeOptions() {
  const judges = {};
  for (const [name, , graded] of JUDGES) {
    if (!document.getElementById(`judge-${name}`).checked) continue;
    const threshold = graded ? inputValue(`judge-${name}-threshold`) : "";
    judges[name] = threshold ? { threshold: Number(threshold) } : {};
  }
  return Object.keys(judges).length ? judges : null;
}

function balanceOptions() {
  const balance = {};
  for (const [option, id] of BALANCE) if (inputValue(id) !== "") balance[option] = Number(inputValue(id));
  return Object.keys(balance).length ? balance : null;
}

async function jobView(jobId) {
  const head = el("section", { id: "job-head" }, el("p", { class: "muted" }, "Loading..."));
  const setup = el("section", { id: "job-setup", class: "grid" });
  const report = el("section", { id: "report" }, el("h2", {}, "Report"), el("p", { class: "muted" }, "Loading..."));
  const items = el("section", { id: "items" });
  view.replaceChildren(head, setup, report, items);
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
        drawSetup(setup, job);
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
    costLine(job),
    job.kind === "preview" ? el("p", { class: "muted" }, `A preview of a job of ${job.preview_target} instructions.`) : null,
    projectionTable(job),
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
      ...extendControl(job),
      job.from_preview ? el("a", { id: "from-preview", href: `#/jobs/${job.from_preview}` }, `follows preview ${job.from_preview.slice(0, 8)}`) : null,
      job.kind === "preview" && job.projection ? el("button", { id: "start-full-job", onclick: async () => {
        try {
          const full = await api("/v1/jobs", { method: "POST", headers: { "content-type": "application/json" },
            body: JSON.stringify({ seed_set_id: job.seed_set_id, num_instructions: job.preview_target,
              options: job.options, from_preview: job.id }) });
          location.hash = `#/jobs/${full.id}`;
        } catch (error) { alert(error.message); }
      } }, "Start the full job") : null,
      el("span", { class: "muted" }, "Download"), format, container,
      el("button", { id: "download-button", onclick: () => download(job.id, format.value, container.value) }, "Download"),
      el("button", { id: "dataset-button", title: "A Hugging Face dataset folder, zipped: README.md (the dataset card) and the data file",
        onclick: () => downloadDataset(job.id, format.value, container.value) }, "Dataset card (.zip)")),
  ].filter(Boolean));
}

function extendControl(job) {
  // A succeeded job grows to a higher target, keeping what it has; a budget stop cannot grow.
  if (job.status !== "succeeded" || job.stopped_reason) return [];
  const target = el("input", { id: "extend-target", type: "number", min: job.num_instructions + 1,
    max: 1000000, step: 1, value: job.num_instructions * 2, "aria-label": "New target" });
  return [target, el("button", { id: "extend-button", title: "Continue this job up to this many accepted instructions in total", onclick: async () => {
    try {
      await api(`/v1/jobs/${job.id}/extend`, { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ num_instructions: Number(target.value) }) });
      route();  // polls the running job again
    } catch (error) { alert(error.message); }
  } }, "Extend")];
}

// --- the job's options and balance ------------------------------------------------------------

function drawSetup(box, job) {
  const balance = job.progress.balance;
  box.replaceChildren(...[optionsList(job), balance ? balanceTable(balance) : null].filter(Boolean));
}

function flatten(value, prefix = "") {
  // Nested options as dotted names: {judges: {answer: {threshold: 3}}} -> judges.answer.threshold.
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return [[prefix, Array.isArray(value) ? value.join(", ") : String(value)]];
  }
  const entries = Object.entries(value);
  if (!entries.length) return [[prefix, "on (defaults)"]];
  return entries.flatMap(([name, inner]) => flatten(inner, prefix ? `${prefix}.${name}` : name));
}

function optionsList(job) {
  // The mode, backend and RNG seed always; every other option only where it is not the default.
  const always = [["mode", job.options.mode], ["backend", job.options.backend || "default"], ["RNG seed", job.rng_seed]];
  const changed = flatten(job.changed_options || {}).filter(([name]) => !["mode", "backend", "seed"].includes(name));
  const rows = [...always, ...changed].flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]);
  return el("div", {}, el("h2", {}, "Options"), el("dl", { id: "job-options" }, rows),
    el("p", { class: "muted" }, "Options not listed have their default values."));
}

function balanceTable(balance) {
  const shareRow = (label, part) => el("tr", {}, el("td", {}, label), el("td", { class: "num" }, share(part.target)),
    el("td", { class: "num" }, share(part.actual)), el("td", { class: "num" }, part.known));
  return el("div", {}, el("h2", {}, "Balance: targets and what the job reached"),
    el("table", { id: "balance-targets" },
      el("tr", {}, el("th", {}, ""), el("th", { class: "num" }, "target"), el("th", { class: "num" }, "reached"),
        el("th", { class: "num" }, "of tasks decided")),
      shareRow("classification tasks", balance.classification_share),
      shareRow("tasks with an input", balance.input_share),
      el("tr", {}, el("td", {}, "most per root verb"), el("td", { class: "num" }, balance.max_per_verb ?? "-"),
        el("td", { class: "num", colspan: "2" }, `${balance.rejected_at_verb_cap} rejected at the cap`))));
}

async function download(jobId, format, container) {
  await save(`/v1/jobs/${jobId}/export?format=${format}&container=${container}`, `${jobId}.${format}.${container}`);
}

async function downloadDataset(jobId, format, container) {
  await save(`/v1/jobs/${jobId}/dataset.zip?format=${format}&container=${container}`, `${jobId}.dataset.zip`);
}

async function save(path, filename) {
  // Fetched rather than linked, so the API key (when there is one) goes with the request.
  const response = await api(path);
  const blob = await response.blob();
  const link = el("a", { href: URL.createObjectURL(blob), download: filename });
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

function judgeTable(data) {
  // Grades per judge as the report counts them; only the judges the job ran.
  const judges = (data.recipe && data.recipe.options.judges) || {};
  const graded = ["answer", "faithfulness"].filter((name) => judges[name]);
  const rows = graded.map((name) => el("tr", {}, el("td", {}, name),
    ["1", "2", "3"].map((grade) => el("td", { class: "num" }, data.judges[name][grade] || 0)),
    el("td", { class: "num" }, judges[name].threshold ?? 2)));
  return el("div", {}, el("h2", {}, "Judge scores"),
    graded.length ? el("table", { id: "judge-scores" }, el("tr", {}, el("th", {}, "judge"),
      el("th", { class: "num" }, "grade 1"), el("th", { class: "num" }, "grade 2"), el("th", { class: "num" }, "grade 3"),
      el("th", { class: "num" }, "lowest kept")), rows) : null,
    judges.instruction ? el("p", { id: "judge-dropped" },
      `The instruction judge dropped ${data.judges.instructions_dropped} instructions.`) : null);
}

function unnaturalCounts(data) {
  return el("p", { id: "unnatural-counts" }, `Unnatural mode: ${data.instructions.accepted} core examples accepted; `,
    `rephrasings of them kept, each its own example: ${data.reformulations}.`);
}

function drawReport(box, data) {
  const usage = data.usage;
  const unnatural = data.reformulations !== null && data.reformulations !== undefined;
  box.replaceChildren(...[
    el("h2", {}, "Report"),
    unnatural ? unnaturalCounts(data) : null,
    el("p", {}, `Classification tasks: ${share(data.classification_share)}; instances without input: `,
      `${share(data.empty_input_share)}; tokens per accepted example: ${usage.tokens_per_accepted_example ?? "-"}`,
      usage.cost !== null ? `; cost ${usage.cost} (${usage.cost_per_accepted_example} per example)` : ""),
    data.preview ? previewComparison(data.preview) : null,
    el("div", { class: "grid" },
      data.judges ? judgeTable(data) : null,
      rejectionTable("Instructions", data.instructions, "instruction-rejections"),
      rejectionTable("Instances", data.instances, "instance-rejections"),
      verbChart(data.verbs),
      histogramChart("ROUGE-L to the nearest seed", data.rouge_l.to_nearest_seed, { id: "rouge-seed-chart" }),
      histogramChart("ROUGE-L to the nearest other instruction", data.rouge_l.to_nearest_instruction, { id: "rouge-other-chart" }),
      histogramChart("Instruction length (words)", data.lengths.instruction_words, { labelDigits: 0 }),
      histogramChart("Input length (words)", data.lengths.input_words, { labelDigits: 0 }),
      histogramChart("Output length (words)", data.lengths.output_words, { labelDigits: 0 })),
  ].filter(Boolean));
}

function previewComparison(compared) {
  // A finished job beside the projection of the preview it followed.
  const p = compared.projection;
  const rows = ["requests", "prompt_tokens", "completion_tokens", "cost", "wall_seconds"].map((name) => {
    const span = p ? p[name] : null;
    return el("tr", {}, el("td", {}, name.replace(/_/g, " ")),
      el("td", { class: "num" }, span ? `${span.expected} (${span.low}-${span.high})` : "-"),
      el("td", { class: "num" }, String(compared.actual[name] ?? "-")),
      el("td", {}, name in compared.within_range ? (compared.within_range[name] ? "in range" : "out of range") : ""));
  });
  return el("div", { id: "preview-comparison" }, el("h3", {}, "Projected by the preview, and what happened"),
    el("table", {}, el("tr", {}, ...["", "projected", "actual", ""].map((h) => el("th", {}, h))), rows));
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
      const columns = itemColumns(viewSelect.value, report);
      table.replaceChildren(el("tr", {}, columns.map((c) => el("th", { class: c.cls.startsWith("num") ? "num" : null }, c.head))),
        ...page.items.map((item) => el("tr", { class: "item" }, columns.map((c) => el("td", { class: c.cls }, c.cell(item))))));
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

function itemColumns(viewName, report) {
  // The table's columns for a view; judge grades and core/rephrasing only for jobs that have them.
  const instances = viewName !== "rejected_instructions";
  const recipe = report.recipe || { options: {} };
  const judges = recipe.options.judges || {};
  const columns = [{ head: "instruction", cls: "cell", cell: (i) => i.instruction }];
  if (instances) {
    columns.push({ head: "input", cls: "cell", cell: (i) => i.input }, { head: "output", cls: "cell", cell: (i) => i.output });
    if (recipe.mode === "unnatural") columns.push({ head: "core / rephrasing", cls: "variant", cell: variantOf });
    for (const name of ["answer", "faithfulness"].filter((n) => judges[n])) {
      columns.push({ head: `${name} grade`, cls: `num ${name}-score`, cell: (i) => i[`${name}_score`] ?? "-" });
    }
  }
  if (viewName !== "accepted") columns.push({ head: "reason", cls: "reason", cell: (i) => i.reason });
  if (!instances) {
    columns.push({ head: "nearest (ROUGE-L)", cls: "cell muted",
      cell: (i) => (i.nearest ? `${i.nearest} (${Number(i.max_rouge).toFixed(2)})` : "") });
  }
  return columns;
}

function variantOf(item) {
  // Ids shortened as on the rest of the page: a rephrasing names the core it rephrases.
  return item.variant ? `rephrasing ${item.variant} of ${item.core_id.slice(0, 8)}` : `core ${item.instruction_id.slice(0, 8)}`;
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
