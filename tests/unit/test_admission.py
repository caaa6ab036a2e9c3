"""The database gate: bounded waiting, fast 503s with Retry-After, and /healthz beside it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.admission import DatabaseGate, Overloaded, database_gate, request_slots
from app.config import get_settings
from app.db import get_engine, reset_engine
from app.main import create_app
from app.migrate import upgrade_database


def test_requests_beyond_the_slots_wait_their_turn() -> None:
    async def scenario() -> list[int]:
        gate = DatabaseGate(slots=2, max_wait_s=5, max_waiting=10)
        order: list[int] = []

        async def request(n: int) -> None:
            await gate.acquire()
            try:
                order.append(n)
                await asyncio.sleep(0.01)
            finally:
                gate.release()

        await asyncio.gather(*(request(n) for n in range(6)))
        assert gate.in_use == 0 and gate.waiting == 0 and gate.rejected == 0
        return order

    assert sorted(asyncio.run(scenario())) == list(range(6))


def test_a_full_queue_is_refused_at_once_with_a_retry_after() -> None:
    async def scenario() -> Overloaded:
        gate = DatabaseGate(slots=1, max_wait_s=30, max_waiting=1)
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await asyncio.wait_for(gate.acquire(), timeout=1)  # no waiting: refused now
        gate.release()
        await waiter
        gate.release()
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.retry_after_s >= 1
    assert "waiting for the database" in refused.detail


def test_a_wait_past_the_limit_ends_in_503() -> None:
    async def scenario() -> None:
        gate = DatabaseGate(slots=1, max_wait_s=0.05, max_waiting=10)
        await gate.acquire()
        with pytest.raises(Overloaded, match="no database slot within"):
            await gate.acquire()
        assert gate.waiting == 0 and gate.rejected == 1

    asyncio.run(scenario())


@pytest.fixture
def sqlite_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SELFINSTRUCT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SELFINSTRUCT_API_DB_WAIT_S", "0.2")  # so the test's 503 comes quickly
    get_settings.cache_clear()
    reset_engine()
    upgrade_database(get_settings().resolved_database_url)
    with TestClient(create_app()) as client:
        yield client
    get_settings.cache_clear()
    reset_engine()


def test_overload_is_a_503_with_retry_after_and_healthz_still_answers(
    sqlite_app: TestClient,
) -> None:
    assert sqlite_app.get("/v1/jobs").status_code == 200  # the gate binds to the app's loop
    gate = database_gate()
    assert gate.slots == min(get_settings().api_db_slots, request_slots(get_engine()))
    # Hold every slot, as if that many slow requests were in the database.
    assert gate._semaphore is not None
    gate._semaphore._value = 0  # type: ignore[attr-defined]
    try:
        response = sqlite_app.get("/v1/jobs?limit=7")  # not cached yet: needs the database
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()
        assert response.json()["error"] == "Overloaded"
        health = sqlite_app.get("/healthz")
        assert health.status_code == 200, health.text
    finally:
        gate._semaphore._value = gate.slots  # type: ignore[attr-defined]
    assert sqlite_app.get("/v1/jobs").status_code == 200


def test_slots_leave_room_beside_the_pool() -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import QueuePool

    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=10, max_overflow=10)
    assert request_slots(engine) == 17
