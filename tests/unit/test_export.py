"""A job's exports read from its rows (SQLite): Unnatural-Instructions examples keep their
constraints, variant and core in every container."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from app.config import get_settings
from app.db import reset_engine, session_scope
from app.migrate import upgrade_database
from app.models import Instance, Instruction, Job, SeedSet
from app.selfinstruct.formats import ExportFormat
from app.services.export import export_stream

CONSTRAINTS = 'The output should be one of: "Yes", "No".'
CORE = "Tell me if the number is prime."
REPHRASED = "Is the number a prime number?"


@pytest.fixture
def unnatural_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[uuid.UUID]:
    url = f"sqlite:///{tmp_path / 'export.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    reset_engine()
    upgrade_database(url)
    with session_scope() as session:
        seed_set = SeedSet(name="s", content_hash="0", task_count=0)
        session.add(seed_set)
        session.flush()
        job = Job(
            seed_set_id=seed_set.id, num_instructions=1, options={"mode": "unnatural"}, rng_seed=0
        )
        session.add(job)
        session.flush()
        extra = {"input": "13", "constraints": CONSTRAINTS}
        core = Instruction(job_id=job.id, round=1, slot=0, text=CORE, accepted=True, extra=extra)
        session.add(core)
        session.flush()
        rephrased = Instruction(job_id=job.id, round=1, slot=0, variant=1, core_id=core.id,
                                text=REPHRASED, accepted=True, extra=extra)  # fmt: skip
        session.add(rephrased)
        session.flush()
        session.add_all(
            Instance(job_id=job.id, instruction_id=row.id, position=0, input="13", output="Yes",
                     accepted=True)
            for row in (core, rephrased)
        )  # fmt: skip
        created = job.id
    yield created
    get_settings.cache_clear()
    reset_engine()


def _download(job_id: uuid.UUID, fmt: ExportFormat, container: str) -> list[dict[str, object]]:
    data = b"".join(export_stream(job_id, fmt, container))  # type: ignore[arg-type]
    if container == "parquet":
        return pq.read_table(io.BytesIO(data)).to_pylist()
    return [json.loads(line) for line in data.decode().splitlines()]


@pytest.mark.parametrize("container", ["jsonl", "parquet"])
def test_unnatural_examples_keep_constraints_variant_and_core(
    unnatural_job: uuid.UUID, container: str
) -> None:
    raw = _download(unnatural_job, ExportFormat.RAW, container)
    assert [r["constraints"] for r in raw] == [CONSTRAINTS, CONSTRAINTS]
    assert [r["variant"] for r in raw] == ["core", "reformulation"]
    assert raw[1]["core_id"] == raw[0]["core_id"] == raw[0]["instruction_id"]
    alpaca = _download(unnatural_job, ExportFormat.ALPACA, container)
    assert [r["instruction"] for r in alpaca] == [
        f"{CORE}\n\n{CONSTRAINTS}",
        f"{REPHRASED}\n\n{CONSTRAINTS}",
    ]
    assert [(r["variant"], r["core_id"]) for r in alpaca] == [
        (r["variant"], r["core_id"]) for r in raw
    ]
    chat = _download(unnatural_job, ExportFormat.OPENAI_CHAT, container)
    assert chat[0]["messages"][0]["content"] == f"{CORE}\n\n{CONSTRAINTS}\n\n13"
