"""A fresh SQLite database with the settings pointed at it and at a test LLM, for unit tests of
the services that need stored jobs but no PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.config import get_settings
from app.db import reset_engine, session_scope
from app.main import create_app
from app.migrate import upgrade_database
from app.models import InstancesState, Instruction
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.seeds import parse_seed_jsonl
from app.services import completion, instances, pipeline
from app.services.jobs import create_job
from app.services.llm import llm_for, reset_llm_clients
from app.services.seed_sets import create_seed_set


def use_sqlite(path: Path, monkeypatch: pytest.MonkeyPatch, llm_url: str) -> None:
    url = f"sqlite:///{path}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("OPENAI_BASE_URL", llm_url)
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    forget_settings()
    upgrade_database(url)


@contextmanager
def in_process_api(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, **env: str
) -> Iterator[TestClient]:
    """The app on embedded SQLite in `data_dir` (no broker, no configured backend), with the
    settings in `env` on top: the API's own behaviour, without services."""
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "OPENAI_BASE_URL", "SELFINSTRUCT_AUTH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SELFINSTRUCT_DATA_DIR", str(data_dir))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    reset_engine()
    upgrade_database(get_settings().resolved_database_url)
    with TestClient(create_app()) as client:
        yield client
    forget_settings()


def forget_settings() -> None:
    get_settings.cache_clear()
    reset_engine()
    reset_llm_clients()


def stored_seed_set(seeds: Path) -> uuid.UUID:
    tasks = parse_seed_jsonl(
        seeds.read_bytes(), max_bytes=10**7, max_line_bytes=10**6, max_tasks=10**4
    )
    with session_scope() as session:
        return create_seed_set(session, name="seeds", tasks=tasks).id


def new_job(seed_set_id: uuid.UUID, target: int, options: GenerationOptions) -> uuid.UUID:
    with session_scope() as session:
        return create_job(
            session, seed_set_id=seed_set_id, num_instructions=target, options=options
        ).id


def run_to_end(job_id: uuid.UUID) -> None:
    """Drive a job as its tasks would, in one process: its rounds, then every pending
    instruction's instances (failures left as the task's last retry leaves them)."""
    round_no: int | None = 1
    while round_no is not None:
        round_no = pipeline.run_round(job_id, round_no, llm_for).next_round
    with session_scope() as session:
        pending = list(
            session.scalars(
                select(Instruction.id).where(
                    Instruction.job_id == job_id,
                    Instruction.instances_state == InstancesState.PENDING,
                )
            )
        )
    if pending:
        try:
            instances.generate_instances(job_id, pending, llm_for)
        except instances.InstancesWaiting as waiting:
            instances.mark_instances_failed(job_id, waiting.instruction_ids)
    completion.finalize_if_complete(job_id)
