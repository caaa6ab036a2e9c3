"""The dashboard's verb chart in headless Chromium: no label is clipped at the chart's edge or
painted over by a bar; a label too long for its room ends in an ellipsis instead of being cut."""

from __future__ import annotations

import shutil
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
