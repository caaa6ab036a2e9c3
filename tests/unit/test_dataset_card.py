"""The dataset card: front matter the Hugging Face Hub reads (parsed back with yaml.safe_load),
its size buckets and license choice, the zip the API serves for a job (SQLite), and the CLI
that unpacks it into a folder."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import cli
from app.client import APIClient
from app.config import get_settings
from app.data import DEFAULT_SEED_LICENSE
from app.db import reset_engine, session_scope
from app.migrate import upgrade_database
from app.models import Instance, Instruction, Job, SeedSet
from app.selfinstruct.dataset_card import (
    CardData,
    DataFile,
    LicenseChoice,
    card_languages,
    choose_license,
    front_matter,
    hub_license_id,
    render_card,
    seed_source_licenses,
    size_category,
)
from app.selfinstruct.seed_formats import SeedFormat, to_seed_jsonl
from app.selfinstruct.seeds import parse_seed_jsonl
from app.services import dataset_card as dataset_card_service

REPORT: dict[str, Any] = {
    "rouge_l": {
        "to_nearest_seed": {"median": 0.21, "mean": 0.25},
        "to_nearest_earlier_instruction": {"median": 0.3, "mean": 0.31},
    },
    "lengths": {"instruction_words": {"median": 12.0, "mean": 13.5}},
    "classification_share": 0.25,
    "empty_input_share": 0.6,
    "usage": {"tokens_per_accepted_example": 812.4, "cost": None},
    "verbs": {"top_verbs": [{"verb": "write", "count": 9, "objects": [["poem", 3]]}]},
}

CARD = CardData(
    job_id="0b7c1f9e-0000-0000-0000-000000000001",
    pretty_name="Self-Instruct: seeds: v2 (job 0b7c1f9e)",
    status="succeeded",
    stopped_reason="target_reached",
    data_files=[DataFile("train", "data/train.jsonl", 42)],
    record_format="raw",
    license=LicenseChoice("mit", "the seed tasks' license (MIT)"),
    languages=["en"],
    mode="batched",
    backend="vllm",
    model="llama-3-8b",
    rng_seed=7,
    template_version="2024-05",
    num_instructions=40,
    seed_set_name="seeds: v2",
    seed_tasks=12,
    seed_set_hash="ab" * 32,
    changed_options={"mode": "batched", "seed": 7, "judges": {"answer": {"threshold": 3}}},
    llm_requests=31,
    instructions_accepted=40,
    instructions_rejected={"rouge_similar": 5, "too_short": 2},
    instances_accepted=42,
    instances_rejected={"empty_output": 1},
    report=REPORT,
)


def _split(text: str) -> tuple[dict[str, Any], str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_front_matter_parses_and_names_the_split_for_load_dataset() -> None:
    meta, body = _split(render_card(CARD))
    assert meta == front_matter(CARD)
    assert meta["pretty_name"] == CARD.pretty_name  # the colon is quoted, not a mapping
    assert meta["license"] == "mit"
    assert meta["language"] == ["en"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["task_categories"] == ["text-generation"]
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train.jsonl"}]}
    ]
    assert "load_dataset(" in body and "| batched |" in body and "| llama-3-8b |" in body
    assert "| judges.answer.threshold | 3 |" in body
    assert "| rouge_similar | 5 |" in body and "| empty_output | 1 |" in body
    assert "| ROUGE-L to the nearest seed task | 0.21 / 0.25 |" in body
    assert "| write | 9 | poem (3) |" in body
    assert "Partial export" not in body


def test_a_running_job_is_marked_as_a_partial_export() -> None:
    _, body = _split(render_card(replace(CARD, status="running", finished=False, report=None)))
    assert "**Partial export:** the job was running" in body
    assert "## Quality report" not in body


@pytest.mark.parametrize(
    ("rows", "bucket"),
    [
        (0, "n<1K"),
        (999, "n<1K"),
        (1000, "1K<n<10K"),
        (9999, "1K<n<10K"),
        (10_000, "10K<n<100K"),
        (100_000, "100K<n<1M"),
        (999_999, "100K<n<1M"),
        (1_000_000, "1M<n<10M"),
        (10**12, "n>1T"),
    ],
)
def test_size_buckets(rows: int, bucket: str) -> None:
    assert size_category(rows) == bucket


@pytest.mark.parametrize(
    ("name", "hub_id"),
    [
        ("MIT", "mit"),
        ("Apache 2.0", "apache-2.0"),
        ("Apache License 2.0", "apache-2.0"),
        ("CC BY-SA 4.0", "cc-by-sa-4.0"),
        ("cc_by_4.0", "cc-by-4.0"),
        ("CC0", "cc0-1.0"),
        ("My Company License", "other"),
        ("Unknown", None),
        ("", None),
    ],
)
def test_license_names_become_hub_ids(name: str, hub_id: str | None) -> None:
    assert hub_license_id(name) == hub_id


def test_license_choice() -> None:
    ours = {"bundled_license": DEFAULT_SEED_LICENSE}
    assert choose_license(["MIT", "MIT"], bundled_seeds=False, **ours).license == "mit"
    mixed = choose_license(["MIT", "CC BY 4.0"], bundled_seeds=False, **ours)
    assert mixed.license == "other" and "CC BY 4.0, MIT" in mixed.why
    assert choose_license(["Unknown"], bundled_seeds=True, **ours).license == "apache-2.0"
    assert choose_license([], bundled_seeds=False, **ours).license == "unknown"
    # Seeds that state a license win over the bundled set's (a copy with a license line).
    assert choose_license(["CC BY 4.0"], bundled_seeds=True, **ours).license == "cc-by-4.0"


def test_licenses_and_languages_from_seed_sources() -> None:
    sources = [None, {"license": ["CC BY 4.0"]}, {"license": "MIT", "language": ["de", "fr"]}]
    assert seed_source_licenses(sources) == ["CC BY 4.0", "MIT"]
    assert card_languages(sources) == ["de", "fr"]
    assert card_languages([None, {"language": "not a code!"}]) == ["en"]


def test_table_cells_cannot_break_the_table() -> None:
    card = replace(CARD, changed_options={"keyword_blacklist": ["a|b", "c\nd"]})
    assert "| keyword_blacklist | a\\|b, c d |" in render_card(card)


# --- the API's zip, on SQLite with a job that is accepted but never runs -----------------------

SEEDS = [
    {"instruction": "Write a haiku about the given season.", "source": {"license": "CC BY 4.0"}},
    {"instruction": "Name the capital of the given country.", "source": {"language": "en"}},
]


def test_dataset_zip_of_a_job(embedded_api: TestClient) -> None:
    lines = "".join(json.dumps(seed) + "\n" for seed in SEEDS)
    seed_set = embedded_api.post(
        "/v1/seed-sets", files={"file": ("seeds.jsonl", lines, "application/x-ndjson")}
    ).json()
    job = embedded_api.post(
        "/v1/jobs", json={"seed_set_id": seed_set["id"], "num_instructions": 5}
    ).json()
    response = embedded_api.get(f"/v1/jobs/{job['id']}/dataset.zip", params={"format": "alpaca"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert f'filename="{job["id"]}.dataset.zip"' in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == ["README.md", "data/train.jsonl"]
        assert archive.read("data/train.jsonl") == b""  # queued: nothing generated yet
        meta, body = _split(archive.read("README.md").decode())
    assert meta["license"] == "cc-by-4.0"
    assert meta["size_categories"] == ["n<1K"]
    assert "**Partial export:** the job was queued" in body
    assert "| backend | default |" in body
    assert "http" not in body  # the backend by name, never its URL


def test_dataset_zip_errors(embedded_api: TestClient) -> None:
    missing = embedded_api.get("/v1/jobs/00000000-0000-0000-0000-000000000000/dataset.zip")
    assert missing.status_code == 404
    bad = embedded_api.get(
        "/v1/jobs/00000000-0000-0000-0000-000000000000/dataset.zip", params={"container": "csv"}
    )
    assert bad.status_code == 422 and "container" in bad.json()["detail"]


def test_natural_instructions_seeds_keep_their_instance_license() -> None:
    task = {"Definition": ["Answer the question."], "Instance License": ["CC BY 4.0"]}
    lines = to_seed_jsonl(json.dumps(task).encode(), SeedFormat.NATURAL_INSTRUCTIONS)
    (seed,) = parse_seed_jsonl(lines, max_bytes=10**6, max_line_bytes=10**6, max_tasks=10)
    assert seed_source_licenses([seed.source]) == ["CC BY 4.0"]


# --- the CLI's --dataset-dir --------------------------------------------------------------------


def _serve_zip(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str] | None]:
    asked: list[dict[str, str] | None] = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("README.md", "---\nlicense: mit\n---\n")
        archive.writestr("data/train.jsonl", '{"instruction": "i"}\n')

    def stream(self: APIClient, url: str, params: dict[str, str] | None) -> Iterator[bytes]:
        assert url == "/v1/jobs/j1/dataset.zip"
        asked.append(params)
        yield buffer.getvalue()

    monkeypatch.setattr(APIClient, "_stream", stream)
    return asked


def test_cli_unpacks_the_dataset_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _serve_zip(monkeypatch)
    folder = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["download", "j1", "--dataset-dir", str(folder), "-f", "alpaca"]
    )
    assert result.exit_code == 0, result.output
    assert asked == [{"format": "alpaca", "container": "jsonl"}]
    assert (folder / "README.md").read_text().startswith("---\nlicense: mit")
    assert (folder / "data" / "train.jsonl").exists()
    assert "wrote README.md, data/train.jsonl to" in " ".join(result.stderr.split())


def test_cli_refuses_a_non_empty_folder_and_other_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = _serve_zip(monkeypatch)
    (tmp_path / "kept.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["download", "j1", "--dataset-dir", str(tmp_path)])
    message = " ".join(result.stderr.split())
    assert result.exit_code == 1 and "exists and is not an empty directory" in message
    both = CliRunner().invoke(
        cli, ["download", "j1", "--dataset-dir", str(tmp_path / "new"), "-o", "x.jsonl"]
    )
    assert both.exit_code == 2 and "--dataset-dir" in both.stderr
    assert asked == [] and (tmp_path / "kept.txt").read_text() == "mine"


# --- streaming: the data file leaves before the card is built ----------------------------------


@pytest.fixture
def big_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[uuid.UUID]:
    """A job with 3,000 stored examples of varied text (enough for deflate to emit as it goes)."""
    url = f"sqlite:///{tmp_path / 'card.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    reset_engine()
    upgrade_database(url)
    with session_scope() as session:
        seed_set = SeedSet(name="s", content_hash="0", task_count=0)
        session.add(seed_set)
        session.flush()
        job = Job(seed_set_id=seed_set.id, num_instructions=3000, options={}, rng_seed=0)
        session.add(job)
        session.flush()
        for n in range(3000):
            row = Instruction(job_id=job.id, round=1, slot=n, text=f"Task {n}.", accepted=True)
            session.add(row)
            session.flush()
            session.add(Instance(job_id=job.id, instruction_id=row.id, position=0,
                                 input=uuid.uuid4().hex, output=uuid.uuid4().hex, accepted=True))  # fmt: skip
        created = job.id
    yield created
    get_settings.cache_clear()
    reset_engine()


def test_the_zip_streams_the_data_before_the_card(
    big_job: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_card_data = dataset_card_service.card_data

    def card_data(*args: Any, **kwargs: Any) -> CardData:
        events.append("card")
        return real_card_data(*args, **kwargs)

    monkeypatch.setattr(dataset_card_service, "card_data", card_data)
    chunks = []
    for chunk in dataset_card_service.dataset_zip(big_job):
        events.append("chunk")
        chunks.append(chunk)
    assert events.index("card") > 1  # data chunks went out before the card was built
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert len(archive.read("data/train.jsonl").splitlines()) == 3000
        meta, body = _split(archive.read("README.md").decode())
    assert meta["size_categories"] == ["1K<n<10K"]
    assert meta["license"] == "unknown"  # no seed task states one, and they are not ours
    assert "3000 instruction-following examples" in body
