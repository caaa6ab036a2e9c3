"""A balanced job reruns the same (SQLite, a deterministic test server): its prompts are steered
by steps 2 and 3 of earlier rounds, so they must not depend on how far the instance tasks had
got when the next round was planned."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import Instruction, LLMCall
from app.selfinstruct.options import BalanceTargets, GenerationOptions
from app.services import instances, pipeline
from app.services.jobs import create_job
from app.services.llm import llm_for
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.sqlite_db import forget_settings, stored_seed_set, use_sqlite

TARGET = 40
BALANCE = BalanceTargets(classification_share=0.5, input_share=0.7)


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    config = FakeLLMConfig(seed=5, deterministic=True, imitate_mix=True, truncate_rate=0.0)
    with FakeLLMServer(config) as server:
        yield server


@pytest.fixture
def seed_set_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llm: FakeLLMServer, default_seeds: Path
) -> Iterator[uuid.UUID]:
    use_sqlite(tmp_path / "balanced.db", monkeypatch, llm.base_url)
    yield stored_seed_set(default_seeds)
    forget_settings()


def new_job(seed_set_id: uuid.UUID) -> uuid.UUID:
    options = GenerationOptions(seed=9, balance=BALANCE)
    with session_scope() as session:
        return create_job(
            session, seed_set_id=seed_set_id, num_instructions=TARGET, options=options
        ).id


def run_instances(job_id: uuid.UUID, batches: list[list[uuid.UUID]]) -> None:
    for batch in batches:
        instances.generate_instances(job_id, batch, llm_for)


def drive(job_id: uuid.UUID, *, instances_lag: int) -> int:
    """The job's rounds as workers run them, with each round's instance tasks finishing only
    after `instances_lag` more rounds have been tried (0: before the next round is planned).
    A round that must wait for them (pipeline.InstancesPending) is tried again once they are
    done, as its task would be. Returns how many times a round waited."""
    round_no: int | None = 1
    waited = 0
    late: list[list[list[uuid.UUID]]] = []
    for _ in range(200):
        if round_no is None:
            break
        try:
            result = pipeline.run_round(job_id, round_no, llm_for)
        except pipeline.InstancesPending:
            waited += 1
            run_instances(job_id, late.pop(0))
            continue
        late.append(result.instance_batches)
        while len(late) > instances_lag:
            run_instances(job_id, late.pop(0))
        round_no = result.next_round
    for batches in late:
        run_instances(job_id, batches)
    return waited


def accepted(job_id: uuid.UUID) -> list[tuple[int, int, str, bool | None]]:
    with session_scope() as session:
        rows = session.execute(
            select(
                Instruction.round, Instruction.slot, Instruction.text, Instruction.is_classification
            )
            .where(Instruction.job_id == job_id, Instruction.accepted.is_(True))
            .order_by(Instruction.round, Instruction.slot)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def prompt_hashes(job_id: uuid.UUID) -> list[tuple[str, int | None, str | None]]:
    with session_scope() as session:
        rows = session.execute(
            select(LLMCall.purpose, LLMCall.round, LLMCall.prompt_sha256).where(
                LLMCall.job_id == job_id, LLMCall.purpose == "instructions"
            )
        ).all()
    return sorted(tuple(r) for r in rows)  # type: ignore[misc]


def test_a_balanced_job_accepts_the_same_however_late_its_instances_come(
    seed_set_id: uuid.UUID,
) -> None:
    prompt = new_job(seed_set_id)
    waits_of_prompt = drive(prompt, instances_lag=0)
    late = new_job(seed_set_id)
    waits_of_late = drive(late, instances_lag=2)
    assert len(accepted(prompt)) >= TARGET
    assert accepted(late) == accepted(prompt)
    assert prompt_hashes(late) == prompt_hashes(prompt)
    # The late job's rounds waited for the instance tasks they are steered by.
    assert waits_of_prompt == 0 and waits_of_late > 0
