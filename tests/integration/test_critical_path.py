"""The critical path never waits behind bulk work: a round goes to a queue of its own, which
workers read first, so it waits for a free pool process at most, never for a backlog."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from app.models import Job
from tests.integration.conftest import upload
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.stack import ServiceStack, llm_stack, queued_bulk_messages, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLASSIFY_S = 2.0  # every classification answer takes this long: each instance task at least


@pytest.fixture(scope="module")
def slow_llm() -> Iterator[FakeLLMServer]:
    config = FakeLLMConfig(seed=61, slow_kinds=("classify",), slow_rate=1.0, slow_s=CLASSIFY_S)
    with FakeLLMServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def path_stack(
    pg_url: str,
    broker_url: str,
    slow_llm: FakeLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceStack]:
    with llm_stack(
        pg_url=pg_url,
        broker_url=broker_url,
        llm_url=slow_llm.base_url,
        tmp=tmp_path_factory.mktemp("critical-path"),
        # One instruction per instance task: a large job makes a long queue of bulk work fast.
        SELFINSTRUCT_INSTRUCTIONS_PER_INSTANCE_TASK="1",
    ) as running:
        yield running


def rounds_completed(pg_url: str, job_id: str) -> int:
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        rounds = conn.scalar(select(Job.rounds_completed).where(Job.id == job_id))
    engine.dispose()
    return int(rounds or 0)


def start_job(client: httpx.Client, seed_set_id: str, target: int, **options: object) -> str:
    body = {"seed_set_id": seed_set_id, "num_instructions": target, "options": options}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_a_round_does_not_wait_behind_a_backlog_of_instance_tasks(
    path_stack: ServiceStack,
    slow_llm: FakeLLMServer,
    pg_url: str,
    broker_url: str,
    default_seeds: Path,
) -> None:
    with path_stack.client(path_stack.create_key("critical path")) as client:
        seed_set = upload(client, default_seeds)["id"]
        big = start_job(client, seed_set, 100, seed=43, requests_per_round=10)
        deadline = time.monotonic() + 120
        while queued_bulk_messages(broker_url) < 20:
            assert time.monotonic() < deadline, path_stack.logs()
            time.sleep(0.05)
        ahead = queued_bulk_messages(broker_url)
        small, queued_at = start_job(client, seed_set, 3, seed=44), time.monotonic()
        while rounds_completed(pg_url, small) < 1:
            assert time.monotonic() < deadline, path_stack.logs()
            time.sleep(0.05)
        waited = time.monotonic() - queued_at
        slow_llm.config.slow_rate = 0.0  # the rest of both jobs at full speed
        jobs = [wait_for_status(client, j, timeout_s=300) for j in (small, big)]
    # Behind the backlog, the round would start only once two processes had worked through it.
    fifo_at_best = ahead * CLASSIFY_S / 2
    print(f"small job's first round: {waited:.1f} s; behind {ahead} tasks: >= {fifo_at_best:.0f} s")
    assert waited < fifo_at_best / 3, (waited, ahead)
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], path_stack.logs()
