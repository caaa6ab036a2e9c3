"""A worker's cached ROUGE index catches up with rounds other workers committed (SQLite)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.db import session_scope
from app.models import Job
from app.selfinstruct.options import GenerationOptions
from app.services import job_index, pipeline, seed_sets
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
    job_index.forget_job_index(created)  # type: ignore[arg-type]
    forget_settings()


def _pool(job_id: object) -> list[str]:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return [text for _, text in job_index.accepted_texts(session, job.id)]


def test_a_stale_index_adds_only_the_rounds_it_missed(job_id: object) -> None:
    pipeline.run_round(job_id, 1, llm_for)  # type: ignore[arg-type]
    stale = copy.deepcopy(job_index._indexes[job_id])  # type: ignore[index]
    assert stale.rounds_completed == 1
    for round_no in (2, 3):  # committed by "another worker"
        pipeline.run_round(job_id, round_no, llm_for)  # type: ignore[arg-type]
    current = job_index._indexes[job_id]  # type: ignore[index]
    assert len(current.machine_texts) > len(stale.machine_texts)

    job_index._indexes[job_id] = stale  # type: ignore[index]
    with session_scope() as session:
        job = session.get(Job, job_id)
        options = GenerationOptions.model_validate(job.options)  # type: ignore[union-attr]
        caught_up = job_index.load_job_index(session, job, [], options)  # type: ignore[arg-type]
    assert caught_up is stale and caught_up.rounds_completed == 3
    assert caught_up.machine_texts == current.machine_texts == _pool(job_id)
    assert caught_up.text_rounds == current.text_rounds  # what each round's prompts may show
    assert len(caught_up.index) == len(current.index)
    assert [caught_up.index.text(i) for i in range(len(current.index))] == [
        current.index.text(i) for i in range(len(current.index))
    ]
    # Round 4 runs on the caught-up index exactly as on a fresh one.
    pipeline.run_round(job_id, 4, llm_for)  # type: ignore[arg-type]
    assert job_index._indexes[job_id].machine_texts == _pool(job_id)  # type: ignore[index]


def test_a_round_reads_neither_seed_tasks_nor_pool_it_already_holds(
    job_id: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round task plans and stores each round with what it holds: seed sets never change,
    and an index as new as the job needs no catch-up query."""
    pipeline.run_round(job_id, 1, llm_for)  # type: ignore[arg-type]
    reads: list[str] = []
    for module, name in ((seed_sets, "_read_seed_tasks"), (job_index, "accepted_texts")):
        original = getattr(module, name)

        def counted(
            *args: object, _original: Any = original, _name: str = name, **kw: object
        ) -> Any:
            reads.append(_name)
            return _original(*args, **kw)

        monkeypatch.setattr(module, name, counted)
    pipeline.run_round(job_id, 2, llm_for)  # type: ignore[arg-type]
    assert reads == []
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.rounds_completed == 2
    monkeypatch.undo()
    assert job_index._indexes[job_id].machine_texts == _pool(job_id)  # type: ignore[index]
