"""Every training format and container, downloaded over HTTP and loaded with Hugging Face datasets."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import upload
from tests.integration.test_service_flow import EXAMPLE_FIELDS
from tests.support.stack import wait_for_status

pytestmark = pytest.mark.integration

FORMATS = ("raw", "alpaca", "openai_chat", "sharegpt", "prompt_completion")
COLUMNS = {
    "raw": EXAMPLE_FIELDS,
    "alpaca": {"instruction", "input", "output"},
    "openai_chat": {"messages"},
    "sharegpt": {"conversations"},
    "prompt_completion": {"prompt", "completion"},
}


@pytest.fixture(scope="module")
def finished_job(api: httpx.Client, default_seeds: Path) -> dict:  # type: ignore[type-arg]
    seed_set = upload(api, default_seeds)
    response = api.post(
        "/v1/jobs",
        json={"seed_set_id": seed_set["id"], "num_instructions": 8, "options": {"seed": 4}},
    )
    job = wait_for_status(api, response.json()["id"])
    assert job["status"] == "succeeded"
    return job


@pytest.mark.parametrize("container", ["jsonl", "json", "parquet"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_loads_with_datasets(
    api: httpx.Client,
    finished_job: dict,  # type: ignore[type-arg]
    fmt: str,
    container: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    params = {"format": fmt, "container": container, "system_prompt": "You are helpful."}
    response = api.get(f"/v1/jobs/{finished_job['id']}/export", params=params)
    assert response.status_code == 200, response.text
    path = tmp_path / f"data.{container}"
    path.write_bytes(response.content)
    builder = "parquet" if container == "parquet" else "json"
    loaded = datasets.load_dataset(
        builder, data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
    )
    examples = finished_job["progress"]["instances_accepted"]
    if fmt == "prompt_completion":
        assert 0 < loaded.num_rows <= examples
    else:
        assert loaded.num_rows == examples
    assert set(loaded.column_names) == COLUMNS[fmt]
    if fmt == "openai_chat":
        for row in loaded:
            assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]


def test_export_errors(api: httpx.Client, finished_job: dict) -> None:  # type: ignore[type-arg]
    bad = api.get(f"/v1/jobs/{finished_job['id']}/export", params={"format": "csv"})
    assert bad.status_code == 422 and "format" in bad.json()["detail"]
    missing = api.get("/v1/jobs/00000000-0000-0000-0000-000000000000/export")
    assert missing.status_code == 404


def test_alpaca_json_array(api: httpx.Client, finished_job: dict) -> None:  # type: ignore[type-arg]
    response = api.get(
        f"/v1/jobs/{finished_job['id']}/export", params={"format": "alpaca", "container": "json"}
    )
    records = json.loads(response.text)
    assert isinstance(records, list) and records
    assert set(records[0]) == {"instruction", "input", "output"}
