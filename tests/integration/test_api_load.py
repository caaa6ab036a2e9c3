"""The API under many pollers, on the real stack with production defaults (pool sizes, the
database gate, API keys required): everyone is answered, nothing 5xx, /healthz stays fast."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.integration.conftest import upload
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.stack import ServiceStack, llm_stack, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLLERS = 500
READS_PER_POLLER = 4


@pytest.fixture(scope="module")
def slow_llm() -> Iterator[FakeLLMServer]:
    """Answers after about 0.3 s, so the job is still running while the pollers read it."""
    with FakeLLMServer(FakeLLMConfig(seed=11, latency_s=0.3)) as server:
        yield server


@pytest.fixture(scope="module")
def load_stack(
    pg_url: str,
    broker_url: str,
    slow_llm: FakeLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceStack]:
    with llm_stack(
        pg_url=pg_url,
        broker_url=broker_url,
        llm_url=slow_llm.base_url,
        tmp=tmp_path_factory.mktemp("load"),
    ) as running:
        yield running


async def _poll(
    session: aiohttp.ClientSession, url: str, statuses: Counter[int], latencies: list[float]
) -> None:
    for _ in range(READS_PER_POLLER):
        started = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
            statuses[response.status] += 1
        latencies.append(time.perf_counter() - started)


def _health_probe(base: str, stop: threading.Event, latencies: list[float]) -> None:
    """In a thread of its own with a plain client: the pollers' event loop, busy with 500
    connections, must not delay the probe's own timing."""
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - started)
            stop.wait(0.1)


async def _pollers(
    base: str, key: str, job_id: str
) -> tuple[Counter[int], list[float], list[float]]:
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    health: list[float] = []
    stop = threading.Event()
    connector = aiohttp.TCPConnector(limit=POLLERS)
    headers = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as s:
        probe = threading.Thread(target=_health_probe, args=(base, stop, health))
        probe.start()
        await asyncio.gather(
            *(_poll(s, f"{base}/v1/jobs/{job_id}", statuses, latencies) for _ in range(POLLERS))
        )
        stop.set()
        probe.join(30)
    return statuses, latencies, health


def test_500_pollers_of_a_running_job_are_all_answered(
    load_stack: ServiceStack, default_seeds: Path
) -> None:
    key = load_stack.create_key("pollers")
    with load_stack.client(key) as api:
        seed_set = upload(api, default_seeds)
        job = api.post(
            "/v1/jobs", json={"seed_set_id": seed_set["id"], "num_instructions": 40}
        ).json()
        deadline = time.monotonic() + 60
        while api.get(f"/v1/jobs/{job['id']}").json()["progress"]["llm_requests"] == 0:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.2)

        started = time.monotonic()
        statuses, latencies, health = asyncio.run(_pollers(load_stack.url, key, job["id"]))
        elapsed = time.monotonic() - started

        mid_job = api.get(f"/v1/jobs/{job['id']}").json()
        finished = wait_for_status(api, job["id"], timeout_s=300)

    total = POLLERS * READS_PER_POLLER
    print(
        json.dumps(
            {
                "requests": total,
                "seconds": round(elapsed, 2),
                "p50_ms": round(statistics.median(latencies) * 1000),
                "p99_ms": round(sorted(latencies)[int(0.99 * (total - 1))] * 1000),
                "healthz_max_ms": round(max(health) * 1000),
            }
        )
    )
    assert statuses == {200: total}, statuses
    assert elapsed < 90, elapsed
    # Generous: the 500 pollers run in this process on the same two cores as the server.
    assert health and max(health) < 2.0, max(health)
    assert mid_job["status"] in ("running", "succeeded")
    assert finished["status"] == "succeeded"
    assert finished["progress"]["instructions_accepted"] == 40


def test_progress_of_a_finished_job_matches_its_rows(
    load_stack: ServiceStack, default_seeds: Path
) -> None:
    """The cached summary is exact once the job has finished: counted after the end."""
    key = load_stack.create_key("exact")
    with load_stack.client(key) as api:
        seed_set = upload(api, default_seeds)
        job = api.post(
            "/v1/jobs", json={"seed_set_id": seed_set["id"], "num_instructions": 12}
        ).json()
        # Poll hard while it runs, so summaries are cached at every stage of the job.
        while api.get(f"/v1/jobs/{job['id']}").json()["status"] in ("queued", "running"):
            time.sleep(0.02)
        finished = wait_for_status(api, job["id"])
        lines = api.get(f"/v1/jobs/{job['id']}/examples.jsonl").text.splitlines()
    progress = finished["progress"]
    assert progress["instances_accepted"] == len(lines)
    assert progress["instructions_accepted"] == 12
    with_examples = {json.loads(line)["instruction_id"] for line in lines}
    assert progress["instructions_with_instances"] >= len(with_examples)


def test_healthz_answers_while_the_database_queue_is_full(load_stack: ServiceStack) -> None:
    """/healthz reads the background checker's result: it never waits behind requests."""
    key = load_stack.create_key("health")

    async def flood_and_probe() -> list[float]:
        headers = {"Authorization": f"Bearer {key}"}
        connector = aiohttp.TCPConnector(limit=800)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as s:

            async def read() -> int:
                async with s.get(f"{load_stack.url}/v1/jobs?limit=200") as r:
                    await r.read()
                    return r.status

            flood = [asyncio.create_task(read()) for _ in range(800)]
            await asyncio.sleep(1.0)  # the 800 are connected and queued for the database
            probes = []
            async with aiohttp.ClientSession() as plain:
                for _ in range(10):
                    started = time.perf_counter()
                    async with plain.get(f"{load_stack.url}/healthz") as r:
                        assert r.status == 200
                    probes.append(time.perf_counter() - started)
                    await asyncio.sleep(0.05)
            statuses = await asyncio.gather(*flood)
            assert set(statuses) <= {200, 503}, Counter(statuses)
            return probes

    probes = asyncio.run(flood_and_probe())
    # The probe shares this process's loop with the 800 flooding requests: generous bound.
    assert max(probes) < 2.0, probes
    with httpx.Client(base_url=load_stack.url, timeout=10) as plain:
        assert plain.get("/healthz").json()["status"] == "ok"
