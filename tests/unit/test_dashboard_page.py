"""The dashboard in headless Chromium, with the API stubbed in the page: the verb chart's labels
are never clipped at the chart's edge or painted over by a bar (a label too long for its room ends
in an ellipsis), a job's head and report show counts from the same poll, and the Extend control
sends the new target."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

UI = Path(__file__).resolve().parents[2] / "app" / "ui"

REPORT_VERBS = {
    "parsed": 40,
    "sample": 40,
    "parser": "test",
    "top_verbs": [
        {"verb": "write", "count": 60, "objects": [["story", 20], ["checklist", 4], ["poem", 3]]},
        {"verb": "internationalize", "count": 12, "objects": [["application", 5]]},
        {"verb": "create", "count": 30, "objects": [["checklist", 6], ["characteristics", 5]]},
        {"verb": "give", "count": 8, "objects": [["list", 8]]},
    ],
}

MEASURE_LABELS = """
const svg = verbChart(arguments[0]).querySelector("svg");
svg.setAttribute("style", "width: 520px");
document.body.append(svg);
const width = svg.viewBox.baseVal.width;
const nodes = [...svg.children];
return nodes.filter((n) => n.tagName === "text").map((text) => {
  const box = text.getBBox();
  const later = nodes.slice(nodes.indexOf(text) + 1).filter((n) => n.tagName === "rect");
  const coveredBy = later.filter((r) => {
    const b = r.getBBox();
    return b.x < box.x + box.width - 0.5 && box.x < b.x + b.width - 0.5 && b.y < box.y + box.height && box.y < b.y + b.height;
  }).length;
  const inBar = text.getAttribute("fill") === "#fff";
  const bar = nodes.filter((n) => n.tagName === "rect").map((r) => r.getBBox())
    .find((b) => b.x <= box.x && box.x < b.x + b.width && b.y <= box.y + box.height / 2 && box.y + box.height / 2 <= b.y + b.height);
  return { text: text.childNodes[0].textContent, left: box.x, right: box.x + box.width, width,
           coveredBy, inBar, barRight: bar ? bar.x + bar.width : null };
});
"""


@pytest.fixture(scope="module")
def page() -> Iterator[object]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        if os.environ.get("SELFINSTRUCT_REQUIRE_BROWSER") == "1":  # CI: a skip would hide it
            pytest.fail("chromium and chromedriver are required (apt-get install chromium)")
        pytest.skip("chromium and chromedriver not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.get((UI / "index.html").as_uri())  # app.js defines verbChart; no API is needed
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def labels(page: object) -> list[dict]:
    return page.execute_script(MEASURE_LABELS, REPORT_VERBS)  # type: ignore[attr-defined]


def names_in(verbs: dict) -> set[str]:
    rows = verbs["top_verbs"]
    return (
        {row["verb"] for row in rows} | {o for row in rows for o, _ in row["objects"]} | {"other"}
    )


def test_every_label_is_a_whole_name_or_ends_in_an_ellipsis(labels: list[dict]) -> None:
    names = names_in(REPORT_VERBS)
    for label in labels:
        shown = label["text"]
        assert shown in names or (
            shown.endswith("\u2026") and any(n.startswith(shown[:-1]) for n in names)
        ), shown
    verbs = {label["text"] for label in labels if not label["inBar"]}
    assert {"write", "internationalize", "create", "give"} <= verbs


def test_no_label_is_clipped_or_painted_over(labels: list[dict]) -> None:
    for label in labels:
        assert label["left"] >= 0 and label["right"] <= label["width"], label
        assert label["coveredBy"] == 0, label
        if label["inBar"]:
            assert label["barRight"] is not None and label["right"] <= label["barRight"], label


STUB_API = """
const jobId = arguments[0];
window.stub = { accepted: 0, requests: 0, finishAt: arguments[1] };
const histogram = { edges: [0, 1], counts: [0] };
const part = (n) => ({ by_reason: {}, examples: {}, accepted: n, generated: n, over_target: 0 });
const job = () => ({
  id: jobId, status: stub.accepted >= stub.finishAt ? "succeeded" : "running", num_instructions: 400,
  error: null, rerun_of: null, backend_load: null, options: { mode: "paper" }, changed_options: {}, rng_seed: 1,
  progress: { instructions_accepted: stub.accepted, instances_accepted: stub.accepted, llm_requests: 1,
              prompt_tokens: 1, completion_tokens: 1, rounds_completed: 1 },
});
const report = () => ({
  classification_share: 0.1, empty_input_share: 0.2,
  usage: { tokens_per_accepted_example: null, cost: null },
  instructions: part(stub.accepted), instances: part(stub.accepted),
  verbs: { top_verbs: [], parsed: 0, sample: 0, parser: "stub" },
  rouge_l: { to_nearest_seed: histogram, to_nearest_instruction: histogram },
  lengths: { instruction_words: histogram, input_words: histogram, output_words: histogram },
});
window.fetch = async (path) => {
  stub.requests += 1;
  let body;
  if (path.includes("/report")) body = report();
  else if (path.includes("/items")) body = { items: [], total: 0 };
  else {  // the job moves on between any two reads of its status
    if (stub.accepted < stub.finishAt) stub.accepted += 7;
    body = job();
  }
  return { ok: true, status: 200, headers: { get: () => "application/json" }, json: async () => body };
};
location.hash = `#/jobs/${jobId}`;
"""

READ_COUNTS = """
const head = document.getElementById("job-accepted");
const table = document.querySelector("#instruction-rejections");
if (!head || !table) return null;
return { head: parseInt(head.textContent, 10),
         report: parseInt(table.parentElement.querySelector("h2").textContent.split(": ")[1], 10),
         requests: window.stub.requests };
"""


def test_head_and_report_show_the_same_poll(page: object) -> None:
    driver = page
    driver.get((UI / "index.html").as_uri())  # type: ignore[attr-defined]
    driver.execute_script(STUB_API, "0" * 8 + "-0000-0000-0000-" + "0" * 12, 10_000)  # type: ignore[attr-defined]
    samples = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        counts = driver.execute_script(READ_COUNTS)  # type: ignore[attr-defined]
        if counts:
            samples.append(counts)
        time.sleep(0.25)
    assert samples and max(s["head"] for s in samples) >= 14  # it polled more than once
    assert all(s["head"] == s["report"] for s in samples), samples


def test_polling_stops_once_the_finished_job_is_drawn(page: object) -> None:
    driver = page
    driver.get((UI / "index.html").as_uri())  # type: ignore[attr-defined]
    driver.execute_script(STUB_API, "1" * 8 + "-0000-0000-0000-" + "1" * 12, 21)  # type: ignore[attr-defined]
    read = lambda: driver.execute_script(READ_COUNTS)  # type: ignore[attr-defined]  # noqa: E731
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not ((c := read()) and c["head"] == 21):
        time.sleep(0.2)
    assert read()["report"] == 21
    requests = read()["requests"]
    time.sleep(3.5)
    assert read()["requests"] == requests


# --- the new-job form ---------------------------------------------------------------------------

STUB_FORM = """
window.sent = [];
window.jobAnswer = arguments[0];
const reply = (status, data) => ({ ok: status < 400, status, statusText: "",
  headers: { get: () => "application/json" }, json: async () => data });
const fields = (body) => Object.fromEntries([...body.entries()].map(([k, v]) => [k, typeof v === "string" ? v : v.name]));
window.fetch = async (path, options = {}) => {
  const body = options.body instanceof FormData ? fields(options.body) : options.body ? JSON.parse(options.body) : null;
  sent.push({ path, method: options.method || "GET", body });
  if (path === "/v1/backends") return reply(200, [{ name: "default", models: [] }, { name: "vllm", models: ["m1"] }]);
  if (path === "/v1/seed-sets") return reply(201, { id: "seed-set-1" });
  if (path === "/v1/jobs" && options.method === "POST") return reply(...jobAnswer);
  return reply(404, { error: "NotFound", detail: "not stubbed" });
};
location.hash = "#/new";
"""

FILL_FORM = """
const [values, checked] = arguments;
for (const [id, value] of Object.entries(values)) document.getElementById(id).value = value;
for (const id of checked) document.getElementById(id).checked = true;
document.getElementById("start-job").click();
"""

SENT = "return window.sent.filter((r) => r.method === 'POST');"


def submit_form(
    driver: object,
    seed_file: Path,
    values: dict[str, str],
    checked: list[str],
    answer: list[object],
) -> list[dict]:
    """Fill the new-job form against the stubbed API; the POSTs it sent once it has finished."""
    from selenium.webdriver.common.by import By

    driver.get((UI / "index.html").as_uri())  # type: ignore[attr-defined]
    driver.execute_script(STUB_FORM, answer)  # type: ignore[attr-defined]
    backend = 'document.querySelector("#backend option[value=vllm]")'
    wait_until(lambda: driver.execute_script(f"return !!{backend};"))  # type: ignore[attr-defined]
    driver.find_element(By.ID, "seed-file").send_keys(str(seed_file))  # type: ignore[attr-defined]
    driver.execute_script(FILL_FORM, values, checked)  # type: ignore[attr-defined]
    wait_until(lambda: len(driver.execute_script(SENT)) == 2)  # type: ignore[attr-defined]
    return driver.execute_script(SENT)  # type: ignore[attr-defined]


def wait_until(condition: object, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"instruction": "Name a colour."}\n')
    return path


ACCEPTED = [202, {"id": "2" * 8 + "-0000-0000-0000-" + "2" * 12}]


@pytest.mark.parametrize(
    ("values", "checked", "options", "seed_format"),
    [
        ({}, [], {"mode": "paper"}, "self_instruct"),
        ({"seed-format": "alpaca"}, [], {"mode": "paper"}, "alpaca"),
        (
            {"mode": "unnatural", "reformulations": "5", "rng-seed": "7"},
            [],
            {"mode": "unnatural", "reformulations": 5, "seed": 7},
            "self_instruct",
        ),
        ({"backend": "vllm"}, [], {"mode": "paper", "backend": "vllm"}, "self_instruct"),
        (
            {"judge-answer-threshold": "3", "judge-faithfulness-threshold": ""},
            ["judge-instruction", "judge-answer", "judge-faithfulness"],
            {
                "mode": "paper",
                "judges": {"instruction": {}, "answer": {"threshold": 3}, "faithfulness": {}},
            },
            "self_instruct",
        ),
        (
            {"judge-answer-threshold": "1"},
            [],  # a threshold without its judge's box ticked asks for no judge
            {"mode": "paper"},
            "self_instruct",
        ),
        (
            {
                "balance-classification-share": "0.5",
                "balance-input-share": "0.25",
                "balance-max-per-verb": "4",
            },
            [],
            {
                "mode": "paper",
                "balance": {"classification_share": 0.5, "input_share": 0.25, "max_per_verb": 4},
            },
            "self_instruct",
        ),
    ],
)
def test_each_form_control_is_sent_to_the_api(
    page: object,
    seed_file: Path,
    values: dict[str, str],
    checked: list[str],
    options: dict,
    seed_format: str,
) -> None:
    upload, create = submit_form(page, seed_file, values, checked, ACCEPTED)
    assert upload["path"] == "/v1/seed-sets"
    assert upload["body"] == {"file": "seeds.jsonl", "format": seed_format}
    assert create["path"] == "/v1/jobs"
    assert create["body"] == {
        "seed_set_id": "seed-set-1",
        "num_instructions": 100,
        "options": options,
    }


def test_an_invalid_combination_shows_the_apis_message(
    page: object, seed_file: Path, embedded_api: object
) -> None:
    options = {"mode": "batched", "balance": {"classification_share": 0.5}}
    task = {"instruction": "Name a colour.", "instances": [{"input": "", "output": "Red."}]}
    job = {"seed_tasks": [task], "num_instructions": 2, "options": options}
    refused = embedded_api.post("/v1/jobs", json=job)  # type: ignore[attr-defined]
    assert refused.status_code == 422
    values = {"mode": "batched", "balance-classification-share": "0.5"}
    _, create = submit_form(page, seed_file, values, [], [422, refused.json()])
    assert create["body"]["options"] == options
    read = "const m = document.querySelector('#new-job-message [role=alert]'); return m && m.textContent;"
    wait_until(lambda: page.execute_script(read))  # type: ignore[attr-defined]
    shown = page.execute_script(read)  # type: ignore[attr-defined]
    assert shown == "ValidationError: " + refused.json()["detail"]  # the detail once, not repeated
    assert "balance: steers the paper mode's prompts" in shown
    assert page.execute_script("return location.hash;") == "#/new"  # type: ignore[attr-defined]


# --- the job page ---------------------------------------------------------------------------------

STUB_JOB_PAGE = """
const [job, report, items] = arguments;
const histogram = { edges: [0, 1], counts: [0] };
const part = (n) => ({ by_reason: {}, examples: {}, accepted: n, generated: n, over_target: 0 });
const fullReport = { classification_share: 0.1, empty_input_share: 0.2,
  usage: { tokens_per_accepted_example: null, cost: null },
  instructions: part(2), instances: part(3), verbs: { top_verbs: [], parsed: 0, sample: 0, parser: "stub" },
  rouge_l: { to_nearest_seed: histogram, to_nearest_instruction: histogram },
  lengths: { instruction_words: histogram, input_words: histogram, output_words: histogram }, ...report };
const fullJob = { status: "succeeded", num_instructions: 2, error: null, rerun_of: null, backend_load: null,
  rng_seed: 7, ...job, progress: { instructions_accepted: 2, instances_accepted: 3, llm_requests: 1,
  prompt_tokens: 1, completion_tokens: 1, rounds_completed: 1, balance: null, ...job.progress } };
window.fetch = async (path) => {
  const body = path.includes("/report") ? fullReport : path.includes("/items") ? { items, total: items.length } : fullJob;
  return { ok: true, status: 200, headers: { get: () => "application/json" }, json: async () => body };
};
location.hash = `#/jobs/${job.id}`;
"""

READ_TABLE = """
const table = document.getElementById(arguments[0]);
return table && [...table.querySelectorAll("tr")].map((tr) => [...tr.children].map((c) => c.textContent));
"""

READ_OPTIONS = """
const list = document.getElementById("job-options");
return list && [...list.querySelectorAll("dt")].map((dt) => [dt.textContent, dt.nextElementSibling.textContent]);
"""

CORE, REPHRASING = "a" * 8 + "-0000-0000-0000-" + "a" * 12, "b" * 8 + "-0000-0000-0000-" + "b" * 12

JUDGED_JOB = {
    "id": "3" * 8 + "-0000-0000-0000-" + "3" * 12,
    "options": {"mode": "paper", "backend": "vllm", "seed": None},
    "changed_options": {
        "backend": "vllm",
        "judges": {"instruction": {}, "answer": {"threshold": 3}},
        "balance": {"classification_share": 0.5, "max_per_verb": 4},
    },
    "progress": {
        "balance": {
            "classification_share": {"target": 0.5, "actual": 0.4, "known": 20},
            "input_share": {"target": None, "actual": 0.75, "known": 12},
            "max_per_verb": 4,
            "rejected_at_verb_cap": 6,
        }
    },
}
JUDGED_REPORT = {
    "recipe": {
        "mode": "paper",
        "options": {"judges": {"instruction": {}, "answer": {"threshold": 3}}},
    },
    "judges": {"answer": {"1": 4, "3": 9}, "faithfulness": {}, "instructions_dropped": 5},
    "reformulations": None,
}
JUDGED_ITEMS = [
    {"id": "i1", "instruction": "Sort the list.", "input": "3, 1", "output": "1, 3",
     "reason": None, "instruction_id": CORE, "variant": 0, "core_id": None,
     "answer_score": 3, "faithfulness_score": None},
]  # fmt: skip


def open_job_page(driver: object, job: dict, report: dict, items: list[dict]) -> None:
    driver.get((UI / "index.html").as_uri())  # type: ignore[attr-defined]
    driver.execute_script(STUB_JOB_PAGE, job, report, items)  # type: ignore[attr-defined]
    wait_until(lambda: driver.execute_script(READ_TABLE, "items-table"))  # type: ignore[attr-defined]


def test_the_job_page_shows_options_balance_and_judge_scores(page: object) -> None:
    open_job_page(page, JUDGED_JOB, JUDGED_REPORT, JUDGED_ITEMS)
    read = page.execute_script  # type: ignore[attr-defined]
    shown = read(READ_OPTIONS)
    assert shown[:3] == [["mode", "paper"], ["backend", "vllm"], ["RNG seed", "7"]]
    assert sorted(shown[3:]) == [  # in the API's order (the driver does not keep the stub's)
        ["balance.classification_share", "0.5"],
        ["balance.max_per_verb", "4"],
        ["judges.answer.threshold", "3"],
        ["judges.instruction", "on (defaults)"],
    ]
    assert read(READ_TABLE, "balance-targets")[1:] == [
        ["classification tasks", "50.0%", "40.0%", "20"],
        ["tasks with an input", "-", "75.0%", "12"],
        ["most per root verb", "4", "6 rejected at the cap"],
    ]
    assert read(READ_TABLE, "judge-scores") == [
        ["judge", "grade 1", "grade 2", "grade 3", "lowest kept"],
        ["answer", "4", "0", "9", "3"],
    ]
    assert "dropped 5 instructions" in read(
        "return document.getElementById('judge-dropped').textContent;"
    )
    assert read(READ_TABLE, "items-table") == [
        ["instruction", "input", "output", "answer grade"],
        ["Sort the list.", "3, 1", "1, 3", "3"],
    ]


UNNATURAL_JOB = {
    "id": "4" * 8 + "-0000-0000-0000-" + "4" * 12,
    "options": {"mode": "unnatural", "backend": None, "seed": 7},
    "changed_options": {"mode": "unnatural", "seed": 7, "reformulations": 1},
    "progress": {"reformulations_accepted": 1},
}
UNNATURAL_REPORT = {
    "recipe": {"mode": "unnatural", "options": {}},
    "judges": None,
    "reformulations": 1,
}
UNNATURAL_ITEMS = [
    {"id": "i1", "instruction": "Name a fruit.", "input": "", "output": "Apple", "reason": None,
     "instruction_id": CORE, "variant": 0, "core_id": None},
    {"id": "i2", "instruction": "Which fruit comes to mind?", "input": "", "output": "Apple",
     "reason": None, "instruction_id": REPHRASING, "variant": 1, "core_id": CORE},
]  # fmt: skip


def test_the_job_page_tells_cores_from_rephrasings(page: object) -> None:
    open_job_page(page, UNNATURAL_JOB, UNNATURAL_REPORT, UNNATURAL_ITEMS)
    read = page.execute_script  # type: ignore[attr-defined]
    assert read(READ_OPTIONS) == [  # mode and seed once, though both differ from the defaults
        ["mode", "unnatural"],
        ["backend", "default"],
        ["RNG seed", "7"],
        ["reformulations", "1"],
    ]
    assert read(READ_TABLE, "balance-targets") is None and read(READ_TABLE, "judge-scores") is None
    counts = read("return document.getElementById('unnatural-counts').textContent;")
    assert "2 core examples accepted" in counts and "rephrasings of them kept" in counts
    assert counts.endswith(": 1.")
    assert read(READ_TABLE, "items-table") == [
        ["instruction", "input", "output", "core / rephrasing"],
        ["Name a fruit.", "", "Apple", "core aaaaaaaa"],
        ["Which fruit comes to mind?", "", "Apple", "rephrasing 1 of aaaaaaaa"],
    ]


# --- growing a finished job ------------------------------------------------------------------------

STUB_EXTEND = """
const jobId = arguments[0];
window.extended = [];
const histogram = { edges: [0, 1], counts: [0] };
const part = (n) => ({ by_reason: {}, examples: {}, accepted: n, generated: n, over_target: 0 });
const job = () => ({ id: jobId, status: extended.length ? "running" : "succeeded",
  num_instructions: extended.length ? extended[0].num_instructions : 100, error: null, rerun_of: null,
  stopped_reason: null, backend_load: null, options: { mode: "paper" }, changed_options: {}, rng_seed: 1,
  progress: { instructions_accepted: 100, instances_accepted: 100, llm_requests: 1, prompt_tokens: 1,
              completion_tokens: 1, rounds_completed: 3, balance: null } });
const report = { classification_share: 0.1, empty_input_share: 0.2,
  usage: { tokens_per_accepted_example: null, cost: null }, instructions: part(100), instances: part(100),
  verbs: { top_verbs: [], parsed: 0, sample: 0, parser: "stub" },
  rouge_l: { to_nearest_seed: histogram, to_nearest_instruction: histogram },
  lengths: { instruction_words: histogram, input_words: histogram, output_words: histogram } };
window.fetch = async (path, options = {}) => {
  if (path.endsWith("/extend")) extended.push({ path, method: options.method, ...JSON.parse(options.body) });
  const body = path.includes("/report") ? report : path.includes("/items") ? { items: [], total: 0 } : job();
  return { ok: true, status: 200, headers: { get: () => "application/json" }, json: async () => body };
};
location.hash = `#/jobs/${jobId}`;
"""


def test_the_extend_control_sends_the_new_target_and_follows_the_running_job(
    page: object,
) -> None:
    driver = page
    job_id = "4" * 8 + "-0000-0000-0000-" + "4" * 12
    driver.get((UI / "index.html").as_uri())  # type: ignore[attr-defined]
    driver.execute_script(STUB_EXTEND, job_id)  # type: ignore[attr-defined]
    find = "return document.getElementById(arguments[0]);"
    wait_until(lambda: driver.execute_script(find, "extend-button"))  # type: ignore[attr-defined]
    target = driver.execute_script(find, "extend-target")  # type: ignore[attr-defined]
    assert target.get_attribute("min") == "101" and target.get_attribute("value") == "200"
    target.clear()
    target.send_keys("300")
    driver.execute_script(find, "extend-button").click()  # type: ignore[attr-defined]
    status = "const s = document.getElementById('job-status'); return s && s.textContent;"
    wait_until(lambda: driver.execute_script(status) == "running")  # type: ignore[attr-defined]
    sent = driver.execute_script("return window.extended;")  # type: ignore[attr-defined]
    assert sent == [
        {"path": f"/v1/jobs/{job_id}/extend", "method": "POST", "num_instructions": 300}
    ]
    accepted = driver.execute_script(find, "job-accepted").text  # type: ignore[attr-defined]
    assert accepted == "100 / 300"
    assert driver.execute_script(find, "extend-button") is None  # a running job cannot grow
