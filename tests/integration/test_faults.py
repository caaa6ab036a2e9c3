"""Faults a long job must survive on the real stack: killed workers, restarted Redis and PostgreSQL,
a flaky or vanished LLM backend, and budgets. Each ends with exact counts and no duplicates."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import create_engine, func, select

from app.models import Instance, Instruction
from tests.integration.conftest import upload
from tests.support import services
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.stack import ServiceStack, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def flaky_llm() -> Iterator[FakeLLMServer]:
    """Slow enough that a job is mid-round when we strike, with 5xx and 429 mixed in."""
    config = FakeLLMConfig(seed=11, latency_s=0.15, error_rate_5xx=0.05, rate_limit_rate=0.05)
    with FakeLLMServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def fault_stack(
    pg_url: str, broker_url: str, flaky_llm: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceStack]:
    tmp = tmp_path_factory.mktemp("faults")
    env = {
        "DATABASE_URL": pg_url,
        "CELERY_BROKER_URL": broker_url,
        "OPENAI_BASE_URL": flaky_llm.base_url,
        "OPENAI_API_KEY": "test-key",
        "SELFINSTRUCT_DATA_DIR": str(tmp / "data"),
        # The lease, heartbeat and sweep intervals are the production defaults (a killed
        # worker's job moves again within a minute). Retries, LLM timeouts and the outage limit
        # are shortened only so the LLM-outage tests fail their jobs in seconds rather than after
        # the default 15 minutes of backoff.
        "SELFINSTRUCT_TASK_RETRY_BACKOFF_S": "0.2",
        "SELFINSTRUCT_LLM_MAX_RETRIES": "1",
        "SELFINSTRUCT_LLM_TIMEOUT_S": "5",
        "SELFINSTRUCT_LLM_UNREACHABLE_TIMEOUT_S": "4",
    }
    with ServiceStack(env, tmp / "logs") as running:
        running.start_api()
        yield running


@pytest.fixture(scope="module")
def client(fault_stack: ServiceStack) -> Iterator[httpx.Client]:
    with fault_stack.client(fault_stack.create_key("fault tests")) as c:
        yield c


def start_job(client: httpx.Client, seeds: Path, target: int, **options: object) -> str:
    seed_set = upload(client, seeds)
    response = client.post(
        "/v1/jobs",
        json={"seed_set_id": seed_set["id"], "num_instructions": target, "options": options},
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_until(
    client: httpx.Client, job_id: str, accepted_at_least: int, timeout_s: float = 90
) -> None:
    deadline = time.monotonic() + timeout_s
    while (
        client.get(f"/v1/jobs/{job_id}").json()["progress"]["instructions_accepted"]
        < accepted_at_least
    ):
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.2)


def assert_exact(pg_url: str, job_id: str, target: int) -> None:
    """Exactly `target` accepted instructions; no instruction text or example stored twice."""
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        accepted = conn.scalars(
            select(Instruction.text).where(
                Instruction.job_id == job_id, Instruction.accepted.is_(True)
            )
        ).all()
        examples = conn.execute(
            select(Instance.instruction_id, Instance.input, Instance.output).where(
                Instance.job_id == job_id, Instance.accepted.is_(True)
            )
        ).all()
        rounds = conn.execute(
            select(Instruction.round, func.count())
            .where(Instruction.job_id == job_id)
            .group_by(Instruction.round)
        ).all()
    engine.dispose()
    assert len(accepted) == target
    assert len(set(accepted)) == target
    assert len(set(examples)) == len(examples) > 0
    assert rounds  # every stored round is whole: (job, round, slot) is unique


def test_worker_killed_twice_mid_round(
    client: httpx.Client, fault_stack: ServiceStack, pg_url: str, default_seeds: Path
) -> None:
    worker = fault_stack.start_worker()
    job_id = start_job(client, default_seeds, 40, seed=5)
    for strike in (5, 20):
        wait_until(client, job_id, strike)
        fault_stack.kill_worker(worker)  # SIGKILL to the whole worker, pool and all
        time.sleep(1)
        worker = fault_stack.start_worker()
    job = wait_for_status(client, job_id, timeout_s=240)
    assert job["status"] == "succeeded", fault_stack.logs()
    assert job["progress"]["instructions_accepted"] == 40
    assert_exact(pg_url, job_id, 40)
    fault_stack.kill_worker(worker, sig=15)


@pytest.mark.chaos  # restarts the services every test shares: runs alone (see the Makefile)
def test_redis_and_postgres_restarted_mid_job(
    client: httpx.Client, fault_stack: ServiceStack, pg_url: str, default_seeds: Path
) -> None:
    worker = fault_stack.start_worker()
    job_id = start_job(client, default_seeds, 40, seed=6)
    wait_until(client, job_id, 8)
    services.restart_redis()  # without persistence: queued messages are gone
    wait_until(client, job_id, 18, timeout_s=120)
    services.restart_postgres()
    job = wait_for_status(client, job_id, timeout_s=240)
    assert job["status"] == "succeeded", fault_stack.logs()
    assert_exact(pg_url, job_id, 40)
    fault_stack.kill_worker(worker, sig=15)


def test_token_budget_stops_cleanly(
    client: httpx.Client, fault_stack: ServiceStack, default_seeds: Path
) -> None:
    worker = fault_stack.start_worker()
    job_id = start_job(client, default_seeds, 500, seed=7, max_total_tokens=6000)
    job = wait_for_status(client, job_id, timeout_s=180)
    assert job["status"] == "succeeded", fault_stack.logs()
    assert job["stopped_reason"] == "token_budget"
    assert 0 < job["progress"]["instructions_accepted"] < 500
    # A budget is a cap on what is sent: nothing went out that could pass it, and what is left
    # is less than the most one more instruction's steps 2 and 3 could use.
    used = job["progress"]["prompt_tokens"] + job["progress"]["completion_tokens"]
    assert 6000 / 2 < used <= 6000
    response = client.get(f"/v1/jobs/{job_id}/examples.jsonl")
    assert response.status_code == 200 and response.text.strip()
    fault_stack.kill_worker(worker, sig=15)


def test_request_budget(
    client: httpx.Client, fault_stack: ServiceStack, default_seeds: Path
) -> None:
    worker = fault_stack.start_worker()
    job_id = start_job(client, default_seeds, 500, seed=8, max_llm_requests=12)
    job = wait_for_status(client, job_id, timeout_s=180)
    assert job["status"] == "succeeded" and job["stopped_reason"] == "request_budget"
    assert 12 - 2 <= job["progress"]["llm_requests"] <= 12  # an instruction needs two
    fault_stack.kill_worker(worker, sig=15)


def test_unreachable_backend_fails_with_a_clear_message(
    client: httpx.Client, fault_stack: ServiceStack, flaky_llm: FakeLLMServer, default_seeds: Path
) -> None:
    worker = fault_stack.start_worker()
    flaky_llm.fail_next(100_000, status=503)
    try:
        job_id = start_job(client, default_seeds, 10, seed=9)
        job = wait_for_status(client, job_id, timeout_s=120)
    finally:
        flaky_llm.reset()
    assert job["status"] == "failed"
    assert "unreachable" in job["error"] or "error budget" in job["error"]
    assert "503" in job["error"]
    fault_stack.kill_worker(worker, sig=15)


def test_error_budget(
    client: httpx.Client, fault_stack: ServiceStack, flaky_llm: FakeLLMServer, default_seeds: Path
) -> None:
    worker = fault_stack.start_worker()
    flaky_llm.fail_next(100_000, status=500)
    try:
        job_id = start_job(client, default_seeds, 10, seed=10, max_llm_errors=3)
        job = wait_for_status(client, job_id, timeout_s=120)
    finally:
        flaky_llm.reset()
    assert job["status"] == "failed" and "error budget" in job["error"], job
    fault_stack.kill_worker(worker, sig=15)


def test_redis_flushed_queue_is_resent(
    client: httpx.Client,
    fault_stack: ServiceStack,
    pg_url: str,
    broker_url: str,
    default_seeds: Path,
) -> None:
    """Work queued while no worker runs, then lost: the sweeper of a new worker re-sends it."""
    job_id = start_job(client, default_seeds, 6, seed=12)
    redis.Redis.from_url(broker_url).flushdb()
    worker = fault_stack.start_worker()
    job = wait_for_status(client, job_id, timeout_s=120)
    assert job["status"] == "succeeded", fault_stack.logs()
    assert_exact(pg_url, job_id, 6)
    fault_stack.kill_worker(worker, sig=15)
