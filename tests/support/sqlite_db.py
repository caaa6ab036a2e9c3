"""A fresh SQLite database with the settings pointed at it and at a test LLM, for unit tests of
the services that need stored jobs but no PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from app.config import get_settings
from app.db import reset_engine, session_scope
from app.migrate import upgrade_database
from app.selfinstruct.seeds import parse_seed_jsonl
from app.services.llm import reset_llm_clients
from app.services.seed_sets import create_seed_set


def use_sqlite(path: Path, monkeypatch: pytest.MonkeyPatch, llm_url: str) -> None:
    url = f"sqlite:///{path}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("OPENAI_BASE_URL", llm_url)
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    forget_settings()
    upgrade_database(url)


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
