"""One limit on requests in flight per backend, shared by every worker process through Redis,
and shown to users: a job's status, GET /v1/backends, the dashboard's data and /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import upload
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.stack import ServiceStack, llm_stack, wait_for_status

pytestmark = [pytest.mark.integration]

CAP = 6  # far below what two workers with two pool processes each would send without the gate


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    # Answers take 50-150 ms, so that requests overlap and the cap is what holds them back.
    with FakeLLMServer(FakeLLMConfig(seed=71, latency_s=0.1)) as server:
        yield server


@pytest.fixture(scope="module")
def capped_stack(
    pg_url: str, broker_url: str, llm: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceStack]:
    with llm_stack(
        pg_url=pg_url,
        broker_url=broker_url,
        llm_url=llm.base_url,
        tmp=tmp_path_factory.mktemp("backend-concurrency"),
        SELFINSTRUCT_LLM_MAX_CONCURRENCY=str(CAP),
    ) as running:
        running.start_worker()  # a second worker process: the cap holds across both
        yield running


def test_the_backend_cap_holds_across_workers_and_status_shows_the_load(
    capped_stack: ServiceStack, llm: FakeLLMServer, default_seeds: Path
) -> None:
    with capped_stack.client(capped_stack.create_key("concurrency")) as client:
        seed_set = upload(client, default_seeds)["id"]
        body = {"seed_set_id": seed_set, "num_instructions": 60, "options": {"seed": 72}}
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        loads = []
        deadline = time.monotonic() + 120
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, capped_stack.logs()
            if job["backend_load"] is not None:
                loads.append(job["backend_load"])
            time.sleep(0.2)
        job = wait_for_status(client, job_id)
        backends = client.get("/v1/backends").json()
        metrics = client.get("/metrics").text
    assert job["status"] == "succeeded", capped_stack.logs()
    assert job["backend_load"] is None  # shown while the job runs
    assert loads and {load["backend"] for load in loads} == {"default"}
    assert all(1 <= load["concurrency_limit"] <= CAP for load in loads), loads
    assert max(load["in_flight"] for load in loads) > 0
    # The server never saw more at once than the cap, though four pool processes sent work.
    assert 1 < llm.max_in_flight <= CAP, llm.max_in_flight
    (default,) = backends
    assert default["name"] == "default" and default["max_concurrency"] == CAP
    assert 1 <= default["concurrency_limit"] <= CAP and default["in_flight"] == 0
    assert 'selfinstruct_llm_concurrency_limit{backend="default"}' in metrics
    assert 'selfinstruct_llm_in_flight{backend="default"} 0.0' in metrics
