"""Browsing a job's examples: views, text search and reason filter (SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import get_settings
from app.db import reset_engine, session_scope
from app.migrate import upgrade_database
from app.models import Instance, Instruction, Job, SeedSet
from app.services.browse import browse


@pytest.fixture
def job_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    url = f"sqlite:///{tmp_path / 'browse.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    reset_engine()
    upgrade_database(url)
    with session_scope() as session:
        seed_set = SeedSet(name="s", content_hash="0", task_count=0)
        session.add(seed_set)
        session.flush()
        job = Job(seed_set_id=seed_set.id, num_instructions=3, options={}, rng_seed=0)
        session.add(job)
        session.flush()
        texts = ["How would you convince a shop owner to try yoga?", "Write a haiku about rain."]
        for slot, text in enumerate(texts):
            row = Instruction(job_id=job.id, round=1, slot=slot, text=text, accepted=True)
            session.add(row)
            session.flush()
            session.add_all(
                [
                    Instance(job_id=job.id, instruction_id=row.id, position=0, input="",
                             output=f"Answer {slot}", accepted=True),
                    Instance(job_id=job.id, instruction_id=row.id, position=1, input="",
                             output="", accepted=False, reason="empty_output"),
                ]
            )  # fmt: skip
        session.add_all(
            Instruction(job_id=job.id, round=1, slot=2 + n, text=t, accepted=False, reason=r,
                        max_rouge=0.9, nearest="Write a haiku about rain.")
            for n, (t, r) in enumerate([("Write a haiku about rain!", "near_duplicate"),
                                        ("Draw a cat.", "blacklisted_keyword")])
        )  # fmt: skip
        session.flush()
        created = job.id
    yield created
    get_settings.cache_clear()
    reset_engine()


def test_views_search_and_reason_filter(job_id: object) -> None:
    with session_scope() as session:
        accepted = browse(session, job_id, "accepted")  # type: ignore[arg-type]
        assert accepted["total"] == 2 and accepted["items"][0]["output"] == "Answer 0"
        found = browse(
            session, job_id, "accepted", query="How would you CONVINCE a shop owner to try yoga?"
        )  # type: ignore[arg-type]
        assert [i["instruction"] for i in found["items"]] == [
            "How would you convince a shop owner to try yoga?"
        ]
        assert browse(session, job_id, "accepted", query="answer 1")["total"] == 1  # type: ignore[arg-type]
        rejected = browse(session, job_id, "rejected_instructions", reason="near_duplicate")  # type: ignore[arg-type]
        assert rejected["total"] == 1 and rejected["items"][0]["max_rouge"] == 0.9
        assert browse(session, job_id, "rejected_instances")["total"] == 2  # type: ignore[arg-type]
        page = browse(session, job_id, "rejected_instructions", limit=1, offset=1)  # type: ignore[arg-type]
        assert page["total"] == 2 and page["items"][0]["instruction"] == "Draw a cat."
