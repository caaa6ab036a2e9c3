"""The in-process API on embedded SQLite, with jobs accepted but never queued: for tests that
read what the API answers without a broker or a worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import get_settings
from app.db import reset_engine
from app.main import create_app
from app.migrate import upgrade_database


@pytest.fixture
def embedded_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    import app.api.jobs as jobs_api

    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "SELFINSTRUCT_AUTH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SELFINSTRUCT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setattr(jobs_api, "enqueue_round", lambda *_, **__: None)
    get_settings.cache_clear()
    reset_engine()
    upgrade_database(get_settings().resolved_database_url)
    with TestClient(create_app()) as client:
        yield client
    get_settings.cache_clear()
    reset_engine()
