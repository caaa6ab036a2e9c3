"""Per-key limits and the loopback rule, on the in-process app with the embedded SQLite stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import cli
from app.config import get_settings
from app.db import session_scope
from app.services.keys import create_key
from tests.support.sqlite_db import in_process_api


@pytest.fixture
def app_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with in_process_api(
        tmp_path,
        monkeypatch,
        SELFINSTRUCT_AUTH="required",
        SELFINSTRUCT_MAX_JOBS_PER_MINUTE_PER_KEY="2",
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
    ) as client:
        yield client


def test_jobs_per_minute_limit_is_per_key(
    app_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.api.jobs as jobs_api

    monkeypatch.setattr(jobs_api, "enqueue_round", lambda *_, **__: None)  # no worker here
    with session_scope() as session:
        first = create_key(session, "first")[1]
        second = create_key(session, "second")[1]
    body = {"seed_tasks": [{"instruction": "Name a colour of the rainbow."}], "num_instructions": 2}
    auth = {"Authorization": f"Bearer {first}"}
    assert [app_client.post("/v1/jobs", json=body, headers=auth).status_code for _ in range(2)] == [
        202,
        202,
    ]
    limited = app_client.post("/v1/jobs", json=body, headers=auth)
    assert limited.status_code == 429 and "last minute" in limited.json()["detail"]
    other = app_client.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {second}"})
    assert other.status_code == 202
    assert app_client.get("/v1/jobs").status_code == 401


def test_serve_without_keys_refuses_a_public_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SELFINSTRUCT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SELFINSTRUCT_AUTH", "auto")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--no-embedded"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "not loopback" in result.output and "SELFINSTRUCT_AUTH=required" in result.output
