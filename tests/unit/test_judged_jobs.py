"""Jobs with an answer judge, end to end on SQLite: a judge that writes something other than a
grade keeps the examples without a score, and one that rejects everything says so."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import Instance, Job
from app.schemas import Progress
from app.selfinstruct.options import GenerationOptions
from app.services.jobs import job_progress
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.sqlite_db import (
    forget_settings,
    new_job,
    run_to_end,
    stored_seed_set,
    use_sqlite,
)

TARGET = 12
AN_EXAMPLE_NOT_A_GRADE = " Example 1\nInput: a short text about tea.\nOutput: Tea is a drink."


def run_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_seeds: Path, grader_answer: str
) -> uuid.UUID:
    """A paper job with the answer judge, driven until it finishes."""
    config = FakeLLMConfig(seed=4, truncate_rate=0.0, grader_answer=grader_answer)
    with FakeLLMServer(config) as server:
        use_sqlite(tmp_path / "judged.db", monkeypatch, server.base_url)
        options = GenerationOptions(seed=2, judges={"answer": {}})  # type: ignore[arg-type]
        job_id = new_job(stored_seed_set(default_seeds), TARGET, options)
        run_to_end(job_id)
    return job_id


def final_progress(job_id: uuid.UUID) -> Progress:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "succeeded"
        return job_progress(session, job)


@pytest.fixture(autouse=True)
def _forget_settings() -> Iterator[None]:
    yield
    forget_settings()


def test_a_judge_answer_that_is_no_grade_keeps_the_example_without_a_score(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_seeds: Path
) -> None:
    job_id = run_job(tmp_path, monkeypatch, default_seeds, AN_EXAMPLE_NOT_A_GRADE)
    progress = final_progress(job_id)
    assert "judge_low_score" not in progress.instances_rejected
    assert progress.instances_accepted > 0 and progress.warnings == []
    with session_scope() as session:
        scores = set(
            session.scalars(
                select(Instance.answer_score).where(
                    Instance.job_id == job_id, Instance.accepted.is_(True)
                )
            )
        )
    assert scores == {None}


def test_a_judge_that_rejects_everything_says_so_in_the_jobs_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_seeds: Path
) -> None:
    job_id = run_job(tmp_path, monkeypatch, default_seeds, " Grade: 1")
    progress = final_progress(job_id)
    assert progress.instances_accepted == 0
    rejected = progress.instances_rejected["judge_low_score"]
    assert [w for w in progress.warnings if "answer judge" in w] == [
        f"the answer judge rejected {rejected} of the {rejected} instances it judged "
        "(judge_low_score): check that its backend answers its prompt as asked"
    ]
