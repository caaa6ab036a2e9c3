"""The dashboard in headless Chromium, with the API stubbed in the page: the verb chart's labels
are never clipped at the chart's edge or painted over by a bar (a label too long for its room ends
in an ellipsis), and a job's head and report show counts from the same poll."""

from __future__ import annotations

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
  error: null, rerun_of: null, backend_load: null,
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
