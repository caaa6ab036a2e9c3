"""Chaos: three jobs on two workers against a fault-injecting backend (10 % 5xx, 10 % 429,
5 % garbage, occasional slow answers), with workers killed twice and Redis restarted once.
Every job must end with exactly its target, nothing stored twice and nothing lost."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from app.models import Instance, InstancesState, Instruction
from tests.integration.conftest import upload
from tests.support import services
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.stack import ServiceStack, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.chaos]

TARGETS = (30, 30, 20)


@pytest.fixture(scope="module")
def hostile_llm() -> Iterator[FakeLLMServer]:
    config = FakeLLMConfig(
        seed=21,
        latency_s=0.05,
        error_rate_5xx=0.10,
        rate_limit_rate=0.10,
        garbage_rate=0.05,
        slow_rate=0.02,
        slow_s=3.0,
    )
    with FakeLLMServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def chaos_stack(
    pg_url: str,
    broker_url: str,
    hostile_llm: FakeLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceStack]:
    tmp = tmp_path_factory.mktemp("chaos")
    env = {
        "DATABASE_URL": pg_url,
        "CELERY_BROKER_URL": broker_url,
        "OPENAI_BASE_URL": hostile_llm.base_url,
        "OPENAI_API_KEY": "test-key",
        "SELFINSTRUCT_DATA_DIR": str(tmp / "data"),
        # Lease, heartbeat and sweeps at their production defaults; fast retries only keep the
        # many injected 5xx and 429 answers from spreading the test over minutes.
        "SELFINSTRUCT_TASK_RETRY_BACKOFF_S": "0.2",
        "SELFINSTRUCT_LLM_MAX_RETRIES": "1",
        "SELFINSTRUCT_LLM_TIMEOUT_S": "10",
    }
    with ServiceStack(env, tmp / "logs") as running:
        running.start_api()
        yield running


def accepted(client: httpx.Client, job_id: str) -> int:
    return client.get(f"/v1/jobs/{job_id}").json()["progress"]["instructions_accepted"]


def wait_for(client: httpx.Client, job_id: str, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while accepted(client, job_id) < count:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_chaos(
    chaos_stack: ServiceStack,
    hostile_llm: FakeLLMServer,
    pg_url: str,
    default_seeds: Path,
) -> None:
    with chaos_stack.client(chaos_stack.create_key("chaos")) as client:
        workers = [chaos_stack.start_worker(), chaos_stack.start_worker()]
        seed_set = upload(client, default_seeds)
        job_ids = []
        for n, target in enumerate(TARGETS):
            response = client.post(
                "/v1/jobs",
                json={
                    "seed_set_id": seed_set["id"],
                    "num_instructions": target,
                    "options": {"seed": n},
                },
            )
            assert response.status_code == 202
            job_ids.append(response.json()["id"])
        first, second, _ = job_ids

        wait_for(client, first, 8)
        chaos_stack.kill_worker(workers[0])  # SIGKILL, mid-round
        workers[0] = chaos_stack.start_worker()
        wait_for(client, first, 16)
        services.restart_redis()
        wait_for(client, second, 15)
        chaos_stack.kill_worker(workers[1])
        workers[1] = chaos_stack.start_worker()

        jobs = [wait_for_status(client, j, timeout_s=300) for j in job_ids]
        exported = {
            j: len(client.get(f"/v1/jobs/{j}/examples.jsonl").text.splitlines()) for j in job_ids
        }
    assert [j["status"] for j in jobs] == ["succeeded"] * 3, chaos_stack.logs()

    engine = create_engine(pg_url)
    duplicates = lost = 0
    with engine.connect() as conn:
        for job_id, target in zip(job_ids, TARGETS, strict=True):
            texts = conn.scalars(
                select(Instruction.text).where(
                    Instruction.job_id == job_id, Instruction.accepted.is_(True)
                )
            ).all()
            assert len(texts) == target
            duplicates += len(texts) - len(set(texts))
            examples = conn.execute(
                select(Instance.instruction_id, Instance.input, Instance.output).where(
                    Instance.job_id == job_id, Instance.accepted.is_(True)
                )
            ).all()
            duplicates += len(examples) - len(set(examples))
            lost += abs(exported[job_id] - len(examples))
            lost += (
                conn.scalar(
                    select(func.count()).where(
                        Instruction.job_id == job_id,
                        Instruction.accepted.is_(True),
                        Instruction.instances_state != InstancesState.DONE,
                    )
                )
                or 0
            )
    engine.dispose()
    faults = {k: v for k, v in hostile_llm.counts.items() if k.startswith("fault_")}
    summary = {
        "jobs": len(job_ids),
        "instructions": sum(TARGETS),
        "examples": sum(exported.values()),
        "llm_requests": len(hostile_llm.requests),
        "faults": faults,
        "workers_killed": 2,
        "redis_restarts": 1,
        "examples_lost": lost,
        "duplicates": duplicates,
    }
    print("chaos summary:", json.dumps(summary, sort_keys=True))
    assert duplicates == 0 and lost == 0
    assert faults.get("fault_5xx") and faults.get("fault_429") and faults.get("fault_garbage")
