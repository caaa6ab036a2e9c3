"""A job as a Hugging Face dataset folder: written by `selfinstruct download --dataset-dir`,
served zipped by the API, and loaded as is with `datasets.load_dataset(DIR)`."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from app.cli import cli
from app.config import get_settings
from tests.integration.conftest import upload
from tests.integration.test_service_flow import EXAMPLE_FIELDS
from tests.support.stack import wait_for_status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def finished_job(api: httpx.Client, default_seeds: Path) -> dict:  # type: ignore[type-arg]
    seed_set = upload(api, default_seeds)
    response = api.post(
        "/v1/jobs",
        json={"seed_set_id": seed_set["id"], "num_instructions": 8, "options": {"seed": 5}},
    )
    job = wait_for_status(api, response.json()["id"])
    assert job["status"] == "succeeded"
    return job


@pytest.fixture
def offline_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    return datasets


def _front_matter(folder: Path) -> dict:  # type: ignore[type-arg]
    text = (folder / "README.md").read_text()
    return yaml.safe_load(text.split("---\n")[1])


def test_cli_writes_a_folder_that_load_dataset_reads(
    api: httpx.Client,
    finished_job: dict,  # type: ignore[type-arg]
    offline_datasets,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "dataset"
    monkeypatch.setenv("SELFINSTRUCT_API_KEY", api.headers["Authorization"].removeprefix("Bearer "))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            cli,
            [
                "download",
                finished_job["id"],
                "--dataset-dir",
                str(folder),
                "--api-url",
                str(api.base_url),
            ],
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "README.md",
        "data/train.jsonl",
    ]
    loaded = offline_datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    examples = finished_job["progress"]["instances_accepted"]
    assert list(loaded) == ["train"]
    assert loaded["train"].num_rows == examples
    assert set(loaded["train"].column_names) == EXAMPLE_FIELDS
    meta = _front_matter(folder)
    assert meta["license"] == "apache-2.0"  # the bundled seed tasks
    assert meta["size_categories"] == ["n<1K"]
    body = (folder / "README.md").read_text()
    assert f"| instances accepted | {examples} |" in body
    assert "test-key" not in body and "127.0.0.1" not in body  # no backend key, no URL


def test_api_zip_unzips_to_the_same_files_and_loads(
    api: httpx.Client,
    finished_job: dict,  # type: ignore[type-arg]
    offline_datasets,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    response = api.get(
        f"/v1/jobs/{finished_job['id']}/dataset.zip",
        params={"format": "alpaca", "container": "parquet"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert "dataset.zip" in response.headers["content-disposition"]
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == ["README.md", "data/train.parquet"]
        archive.extractall(folder)
    loaded = offline_datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert loaded["train"].num_rows == finished_job["progress"]["instances_accepted"]
    assert set(loaded["train"].column_names) == {"instruction", "input", "output"}
    assert _front_matter(folder)["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train.parquet"}
    ]


def test_dataset_zip_of_an_unknown_job_is_404(api: httpx.Client) -> None:
    missing = api.get("/v1/jobs/00000000-0000-0000-0000-000000000000/dataset.zip")
    assert missing.status_code == 404
