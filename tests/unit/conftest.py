"""The in-process API on embedded SQLite, with jobs accepted but never queued: for tests that
read what the API answers without a broker or a worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.support.sqlite_db import in_process_api


@pytest.fixture
def embedded_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    import app.api.jobs as jobs_api

    monkeypatch.setattr(jobs_api, "enqueue_round", lambda *_, **__: None)
    with in_process_api(tmp_path, monkeypatch, OPENAI_BASE_URL="http://127.0.0.1:9/v1") as client:
        yield client
