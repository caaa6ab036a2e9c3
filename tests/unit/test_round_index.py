"""A worker's cached ROUGE index catches up with rounds other workers committed (SQLite)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.db import session_scope
from app.models import Job
from app.selfinstruct.options import GenerationOptions
from app.services import pipeline
from app.services.llm import llm_for
from tests.support.fake_llm import FakeLLMServer
from tests.support.sqlite_db import forget_settings, new_job, stored_seed_set, use_sqlite


@pytest.fixture
def job_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_llm: FakeLLMServer, default_seeds: Path
) -> Iterator[object]:
    use_sqlite(tmp_path / "rounds.db", monkeypatch, fake_llm.base_url)
    created = new_job(stored_seed_set(default_seeds), 1000, GenerationOptions(seed=3))
    yield created
    pipeline.forget_job_index(created)  # type: ignore[arg-type]
    forget_settings()


def _pool(job_id: object) -> list[str]:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return [text for _, text in pipeline._accepted_texts(session, job.id)]


def test_a_stale_index_adds_only_the_rounds_it_missed(job_id: object) -> None:
    pipeline.run_round(job_id, 1, llm_for)  # type: ignore[arg-type]
    stale = copy.deepcopy(pipeline._indexes[job_id])  # type: ignore[index]
    assert stale.rounds_completed == 1
    for round_no in (2, 3):  # committed by "another worker"
        pipeline.run_round(job_id, round_no, llm_for)  # type: ignore[arg-type]
    current = pipeline._indexes[job_id]  # type: ignore[index]
    assert len(current.machine_texts) > len(stale.machine_texts)

    pipeline._indexes[job_id] = stale  # type: ignore[index]
    with session_scope() as session:
        job = session.get(Job, job_id)
        options = GenerationOptions.model_validate(job.options)  # type: ignore[union-attr]
        caught_up = pipeline._job_index(session, job, [], options)  # type: ignore[arg-type]
    assert caught_up is stale and caught_up.rounds_completed == 3
    assert caught_up.machine_texts == current.machine_texts == _pool(job_id)
    assert caught_up.text_rounds == current.text_rounds  # what each round's prompts may show
    assert len(caught_up.index) == len(current.index)
    assert [caught_up.index.text(i) for i in range(len(current.index))] == [
        current.index.text(i) for i in range(len(current.index))
    ]
    # Round 4 runs on the caught-up index exactly as on a fresh one.
    pipeline.run_round(job_id, 4, llm_for)  # type: ignore[arg-type]
    assert pipeline._indexes[job_id].machine_texts == _pool(job_id)  # type: ignore[index]
