"""The dashboard in headless Chromium (Debian's chromium and chromedriver, driven by Selenium):
upload seeds, start a job against the tests' LLM server, watch it finish, read the report, filter
rejected examples, download a file. A screenshot of the job page is kept in `artifacts/`."""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.stack import ServiceStack

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("SELFINSTRUCT_ARTIFACTS_DIR", REPO_ROOT / "artifacts"))


def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    paths = _browser_paths()
    if paths is None:
        if os.environ.get("SELFINSTRUCT_REQUIRE_BROWSER") == "1":
            pytest.fail(
                "chromium and chromedriver are required (apt-get install chromium chromium-driver)"
            )
        pytest.skip(
            "chromium and chromedriver not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,2200",
    ):
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(options=options, service=Service(executable_path=paths[1]))
    driver.execute_cdp_cmd(  # headless Chromium saves downloads only when told where
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.downloads = downloads  # type: ignore[attr-defined]
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition, timeout_s: float = 60, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the page is still rendering
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def test_dashboard_end_to_end(
    browser, api: httpx.Client, stack: ServiceStack, default_seeds: Path
) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    key = api.headers["authorization"].removeprefix("Bearer ")
    driver.get(f"{stack.url}/ui/")
    driver.find_element(By.ID, "key-input").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    assert driver.find_element(By.ID, "key-state").text == "key set"

    driver.get(f"{stack.url}/ui/#/new")
    wait_for(lambda: driver.find_element(By.ID, "seed-file"), what="the new-job form")
    driver.find_element(By.ID, "seed-file").send_keys(str(default_seeds))
    number = driver.find_element(By.ID, "num-instructions")
    number.clear()
    number.send_keys("20")
    driver.find_element(By.ID, "rng-seed").send_keys("4")
    driver.find_element(By.ID, "start-job").click()

    job_id = wait_for(
        lambda: driver.current_url.split("#/jobs/")[1] if "#/jobs/" in driver.current_url else None,
        what="the job page",
    )
    seen_running = wait_for(lambda: driver.find_element(By.ID, "job-status").text, what="a status")
    wait_for(
        lambda: driver.find_element(By.ID, "job-status").text == "succeeded",
        timeout_s=180,
        what="the job to succeed",
    )
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert seen_running in ("queued", "running", "succeeded")
    assert driver.find_element(By.ID, "job-accepted").text == "20 / 20"

    # The report as charts and tables.
    wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#verb-chart rect"), what="verb chart")
    assert driver.find_elements(By.CSS_SELECTOR, "#rouge-seed-chart rect")
    assert driver.find_elements(By.CSS_SELECTOR, "#rouge-other-chart rect")
    reasons = job["progress"]["instructions_rejected"]
    rows = driver.find_elements(By.CSS_SELECTOR, "#instruction-rejections tr")
    assert len(rows) == 1 + len(reasons)

    # Rejected instructions, filtered by one reason.
    Select(driver.find_element(By.ID, "items-view")).select_by_value("rejected_instructions")
    reason = max(reasons, key=reasons.get)
    wait_for(
        lambda: (
            reason
            in [
                o.get_attribute("value")
                for o in driver.find_elements(By.CSS_SELECTOR, "#items-reason option")
            ]
        ),
        what="reason options",
    )
    Select(driver.find_element(By.ID, "items-reason")).select_by_value(reason)
    wait_for(
        lambda: driver.find_element(By.ID, "items-count").text.endswith(f"of {reasons[reason]}"),
        what="the filtered count",
    )
    shown = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#items-table td.reason")]
    assert shown and set(shown) == {reason}

    # Search among accepted examples.
    Select(driver.find_element(By.ID, "items-view")).select_by_value("accepted")
    wait_for(
        lambda: (
            [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#items-table th")]
            == ["instruction", "input", "output"]
        ),
        what="the accepted view",
    )
    first = wait_for(
        lambda: driver.find_element(By.CSS_SELECTOR, "#items-table tr.item td").text,
        what="accepted examples",
    )
    driver.find_element(By.ID, "items-search").send_keys(first)
    wait_for(
        lambda: (
            all(
                first.lower() in r.text.lower()
                for r in driver.find_elements(By.CSS_SELECTOR, "#items-table tr.item")
            )
            and driver.find_elements(By.CSS_SELECTOR, "#items-table tr.item")
        ),
        what="search results",
    )

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "dashboard-job.png"))

    # Download the examples as Alpaca JSONL.
    Select(driver.find_element(By.ID, "download-format")).select_by_value("alpaca")
    Select(driver.find_element(By.ID, "download-container")).select_by_value("jsonl")
    driver.find_element(By.ID, "download-button").click()
    target = driver.downloads / f"{job_id}.alpaca.jsonl"
    wait_for(target.exists, what="the downloaded file")
    lines = [
        json.loads(line)
        for line in wait_for(lambda: target.read_text(), what="file content").splitlines()
    ]
    assert len(lines) == job["progress"]["instances_accepted"]
    assert {"instruction", "input", "output"} <= set(lines[0])

    # And as a dataset folder with its card, zipped (same format and container).
    driver.find_element(By.ID, "dataset-button").click()
    archive_path = driver.downloads / f"{job_id}.dataset.zip"
    wait_for(archive_path.exists, what="the downloaded dataset zip")
    with zipfile.ZipFile(archive_path) as archive:
        assert sorted(archive.namelist()) == ["README.md", "data/train.jsonl"]
        assert archive.read("README.md").startswith(b"---\n")

    # The jobs list shows it.
    driver.get(f"{stack.url}/ui/#/")
    wait_for(
        lambda: driver.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]'), what="jobs list"
    )
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
    assert "succeeded" in row.text
    assert " tokens" in row.text  # what it spent (no prices configured here), and cache hits
    assert [c.text for c in row.find_elements(By.TAG_NAME, "td")][-2].isdigit()

    # Rerun opens the new job, which links back to this one.
    driver.get(f"{stack.url}/ui/#/jobs/{job_id}")
    wait_for(lambda: driver.find_element(By.ID, "rerun-button"), what="the rerun button").click()
    rerun_id = wait_for(
        lambda: (
            driver.current_url.split("#/jobs/")[1]
            if driver.current_url.split("#/jobs/")[-1] != job_id
            else None
        ),
        what="the rerun's page",
    )
    link = wait_for(lambda: driver.find_element(By.ID, "rerun-of"), what="the link back")
    assert link.text == f"rerun of {job_id[:8]}"
    assert api.get(f"/v1/jobs/{rerun_id}").json()["rerun_of"] == job_id
    api.post(f"/v1/jobs/{rerun_id}/cancel")
