"""Jobs through the Batch API on the real stack: same filters and storage as online jobs, each
batch paid for once even when the worker is killed while batches run, refusals fail clearly."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from app.config import Settings
from app.models import Instance, Instruction, LLMBatch, LLMCall
from tests.integration.conftest import stack_env, started_stack, upload
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.stack import ServiceStack, wait_for_status

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def batch_llm() -> Iterator[FakeLLMServer]:
    config = FakeLLMConfig(seed=21, batch_delay_s=1.0, error_rate_5xx=0.03)
    with FakeLLMServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def batch_stack(
    pg_url: str, broker_url: str, batch_llm: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceStack]:
    tmp = tmp_path_factory.mktemp("batch")
    # Batches complete in a second here, so polls come often; lease, heartbeat and sweeps are
    # the production defaults (a poll inherits its step's claim, see leases.py). Rounds run in
    # the test's own worker processes, so the stack starts none.
    env = stack_env(
        pg_url,
        broker_url,
        batch_llm,
        tmp,
        SELFINSTRUCT_BATCH_POLL_INTERVAL_S="0.3",
        SELFINSTRUCT_TASK_RETRY_BACKOFF_S="0.2",
        SELFINSTRUCT_INSTRUCTIONS_PER_INSTANCE_TASK="20",
    )
    with started_stack(env, tmp, workers=0) as running:
        yield running


@pytest.fixture(scope="module")
def client(batch_stack: ServiceStack) -> Iterator[httpx.Client]:
    with batch_stack.client(batch_stack.create_key("batch tests")) as c:
        yield c


def start_job(client: httpx.Client, seeds: Path, target: int, **options: object) -> str:
    seed_set = upload(client, seeds)
    response = client.post(
        "/v1/jobs",
        json={
            "seed_set_id": seed_set["id"],
            "num_instructions": target,
            "options": {"batch_api": True, "requests_per_round": 8, **options},
        },
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def stored(pg_url: str, job_id: str) -> dict[str, object]:
    engine = create_engine(pg_url)
    with engine.connect() as db:
        accepted = db.scalars(
            select(Instruction.text).where(
                Instruction.job_id == job_id, Instruction.accepted.is_(True)
            )
        ).all()
        examples = db.scalar(
            select(func.count()).select_from(Instance).where(Instance.job_id == job_id)
        )
        batches = db.execute(
            select(LLMBatch.key, LLMBatch.remote_id, LLMBatch.request_count, LLMBatch.status).where(
                LLMBatch.job_id == job_id
            )
        ).all()
        calls = db.scalar(select(func.count()).select_from(LLMCall).where(LLMCall.job_id == job_id))
        cached = db.scalar(
            select(func.count())
            .select_from(LLMCall)
            .where(LLMCall.job_id == job_id, LLMCall.cached.is_(True))
        )
    engine.dispose()
    return {"accepted": accepted, "examples": examples, "batches": batches, "calls": calls,
            "cached_calls": cached}  # fmt: skip


def status_of(pg_url: str, job_id: str, remote_id: str) -> str | None:
    rows = stored(pg_url, job_id)["batches"]
    return next((b.status for b in rows if b.remote_id == remote_id), None)  # type: ignore[attr-defined]


def remote_keys(server: FakeLLMServer, remote_ids: set[str]) -> list[str]:
    return [b["metadata"]["selfinstruct_key"] for i, b in server.batches.items() if i in remote_ids]


def on_server(rows: Iterable[Any]) -> list[Any]:
    """The batch rows (of `stored()`) that reached the server: the cache answered the rest."""
    return [b for b in rows if b.remote_id is not None]


def submitted_batches(pg_url: str, job_id: str) -> list[Any]:
    return on_server(stored(pg_url, job_id)["batches"])


def test_a_job_through_the_batch_api(
    client: httpx.Client,
    batch_stack: ServiceStack,
    batch_llm: FakeLLMServer,
    pg_url: str,
    default_seeds: Path,
) -> None:
    online_before = len(batch_llm.requests)
    batches_before = batch_llm.counts["batches_created"]
    with batch_stack.worker():
        job_id = start_job(client, default_seeds, 30, seed=3)
        job = wait_for_status(client, job_id, timeout_s=180)

    assert job["status"] == "succeeded", batch_stack.logs()
    assert job["options"]["batch_api"] is True
    assert job["progress"]["instructions_accepted"] == 30
    assert job["progress"]["instances_accepted"] > 30
    data = stored(pg_url, job_id)
    assert len(set(data["accepted"])) == 30  # type: ignore[arg-type]
    batches = data["batches"]
    # A round dropped past the target may leave its batch running until the sweeper cancels it;
    # the cache answers some steps.
    finished_or_running = {"completed", "cached", "in_progress", "validating", "cancelling", "cancelled"}  # fmt: skip
    assert {b.status for b in batches} <= finished_or_running  # type: ignore[attr-defined]
    assert "completed" in {b.status for b in batches}  # type: ignore[attr-defined]
    assert {b.key.split(":")[0] for b in batches} >= {"round 1", "classify", "instances"}  # type: ignore[attr-defined]
    # Every request went out in a batch: one batch per row, and no online completions.
    submitted = on_server(batches)
    assert batch_llm.counts["batches_created"] - batches_before == len(submitted)
    answered_in_batches = len(batch_llm.requests) - online_before
    assert answered_in_batches == sum(b.request_count for b in submitted)
    # The rest were answered by the response cache (temperature-0 steps an earlier job asked).
    assert data["calls"] == answered_in_batches + data["cached_calls"]  # type: ignore[operator]


def test_killed_worker_resumes_its_batches_without_paying_twice(
    client: httpx.Client,
    batch_stack: ServiceStack,
    batch_llm: FakeLLMServer,
    pg_url: str,
    default_seeds: Path,
) -> None:
    worker = batch_stack.start_worker()
    job_id = start_job(client, default_seeds, 30, seed=4)
    created = batch_llm.counts["batches_created"]
    started = time.monotonic()
    for strike in (1, 3):  # kill while the first and then a later batch runs
        wanted = created + strike
        left = 60 - (time.monotonic() - started)
        batch_stack.wait_until(lambda: batch_llm.counts["batches_created"] >= wanted, left, 0.05)  # noqa: B023
        batch_stack.kill_worker(worker)
        time.sleep(0.5)
        worker = batch_stack.start_worker()
    job = wait_for_status(client, job_id, timeout_s=240)
    batch_stack.kill_worker(worker, sig=15)

    assert job["status"] == "succeeded", batch_stack.logs()
    data = stored(pg_url, job_id)
    assert len(set(data["accepted"])) == len(data["accepted"]) == 30  # type: ignore[arg-type]
    remote_ids = {b.remote_id for b in data["batches"]}  # type: ignore[attr-defined]
    # A batch whose every answer failed is retired ("~" in its key) and submitted again: the
    # retry of a step, not the same answers bought twice.
    answered = {b.remote_id for b in data["batches"] if "~" not in b.key}  # type: ignore[attr-defined]
    keys = remote_keys(batch_llm, answered)
    duplicates = [k for k, n in collections.Counter(keys).items() if n > 1]
    assert not duplicates
    job_batches = [b for b in batch_llm.batches.values() if b["id"] in remote_ids]
    # A step the response cache answered whole (a classification an earlier job asked at
    # temperature 0) submitted nothing.
    submitted = [b for b in data["batches"] if b.status != "cached"]  # type: ignore[attr-defined]
    assert len(job_batches) == len(submitted)


def test_a_cancelled_job_cancels_the_batches_it_left_running(
    client: httpx.Client,
    batch_stack: ServiceStack,
    batch_llm: FakeLLMServer,
    pg_url: str,
    default_seeds: Path,
) -> None:
    """Batches here would run for an hour, so only a cancel at the server ends them; each
    worker's sweeper sends it, at the production sweep interval (the stack does not set it)."""
    sweep_s = Settings.model_fields["sweep_interval_s"].default
    batch_llm.config.batch_delay_s = 3600.0
    try:
        with batch_stack.worker():
            created = batch_llm.counts["batches_created"]
            cancels = batch_llm.counts["batches_cancelled"]
            job_id = start_job(client, default_seeds, 30, seed=5)
            batch_stack.wait_until(lambda: submitted_batches(pg_url, job_id), 60)
            assert batch_llm.counts["batches_created"] > created
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200

            def still_running() -> list[str]:
                ids = {b.remote_id for b in submitted_batches(pg_url, job_id)}
                return [
                    i
                    for i in ids
                    if batch_llm.batches[i]["status"] in ("validating", "in_progress")
                ]

            # Within two sweeps of the cancel, and a margin for a loaded machine.
            batch_stack.wait_until(lambda: not still_running(), 3 * sweep_s, every_s=0.2)
            rows = stored(pg_url, job_id)["batches"]
            submitted = on_server(rows)
            assert {b.status for b in submitted} <= {"cancelling", "cancelled"}, rows
            assert batch_llm.counts["batches_cancelled"] - cancels == len(submitted)
            time.sleep(sweep_s + 1)  # another sweep: nothing cancelled twice, nothing new submitted
            assert batch_llm.counts["batches_cancelled"] - cancels == len(submitted)
            assert len(stored(pg_url, job_id)["batches"]) == len(rows)  # type: ignore[arg-type]
    finally:
        batch_llm.config.batch_delay_s = 1.0


@pytest.mark.slow
def test_a_step_waits_the_production_poll_interval_without_being_sent_again(
    client: httpx.Client,
    batch_stack: ServiceStack,
    batch_llm: FakeLLMServer,
    pg_url: str,
    default_seeds: Path,
) -> None:
    """The production poll interval (60 s) is twice the production job lease (30 s): between
    two polls the step's claim must stay alive, or the sweeper would take the job for stalled
    and send the step again. This worker restores the default interval over the module's
    shortened one. About 70 s: one full interval, then the job is cancelled."""
    poll_s = Settings.model_fields["batch_poll_interval_s"].default
    assert poll_s > Settings.model_fields["job_lease_s"].default  # what this test is about
    before = set(batch_llm.batches)
    job_id = None
    with batch_stack.worker(env={"SELFINSTRUCT_BATCH_POLL_INTERVAL_S": str(poll_s)}):
        try:
            job_id = start_job(client, default_seeds, 30, seed=6)
            batch_stack.wait_until(lambda: set(batch_llm.batches) - before, 60)
            first = next(iter(set(batch_llm.batches) - before))
            # The batch is done after 1 s, but nothing reads it before the next poll.
            polled_after = batch_stack.wait_until(
                lambda: status_of(pg_url, job_id, first) == "completed", 1.5 * poll_s, every_s=0.5
            )
            assert poll_s - 5 <= polled_after, polled_after
            job = client.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "running"
            assert f"job {job_id} stalled" not in batch_stack.logs()
            rows = stored(pg_url, job_id)["batches"]
            assert [b.remote_id for b in rows if b.key.startswith("round 1:")] == [first]  # type: ignore[attr-defined]
            keys = remote_keys(batch_llm, set(batch_llm.batches) - before)
            assert len(keys) == len(set(keys))  # no step was submitted twice
        finally:
            if job_id is not None:
                client.post(f"/v1/jobs/{job_id}/cancel")


def test_a_rerun_of_a_batch_job_answers_from_the_response_cache(
    client: httpx.Client,
    batch_stack: ServiceStack,
    batch_llm: FakeLLMServer,
    pg_url: str,
    default_seeds: Path,
) -> None:
    """A finished Batch API job's rerun submits no batch for what was answered: its steps'
    requests are answered by the cache, and the examples are the same."""
    batch_llm.config.error_rate_5xx = 0.0  # a failed answer would be asked again, and differ
    try:
        with batch_stack.worker():
            job_id = start_job(client, default_seeds, 12, seed=8, response_cache="all")
            first = wait_for_status(client, job_id, timeout_s=180)
            assert first["status"] == "succeeded", batch_stack.logs()
            sent, created = len(batch_llm.requests), batch_llm.counts["batches_created"]
            response = client.post(f"/v1/jobs/{job_id}/rerun")
            assert response.status_code == 202, response.text
            again = wait_for_status(client, response.json()["id"], timeout_s=180)
    finally:
        batch_llm.config.error_rate_5xx = 0.03
    assert again["status"] == "succeeded", batch_stack.logs()
    before, after = stored(pg_url, job_id), stored(pg_url, again["id"])
    assert before["examples"] == after["examples"] and before["examples"]
    assert sorted(before["accepted"]) == sorted(after["accepted"])  # type: ignore[type-var]
    progress = again["progress"]
    # With rounds in flight a rerun may ask for a round the first run never needed: only that
    # goes out in a batch.
    resent = len(batch_llm.requests) - sent
    assert progress["cache_hits"] == progress["llm_requests"] - resent > 0, progress
    assert batch_llm.counts["batches_created"] - created <= 2
    assert "cached" in {b.status for b in after["batches"]}  # type: ignore[attr-defined]


def test_instances_the_backend_always_fails_are_given_up_after_the_task_retries(
    client: httpx.Client, batch_stack: ServiceStack, batch_llm: FakeLLMServer, default_seeds: Path
) -> None:
    """Each retry of a step on the Batch API submits a new batch and polls it; the polls must
    not reset the retry count, or a request the backend always fails is paid for forever."""
    # Two retries instead of the default eight keep this test short; the bound is the same code.
    batch_llm.config.failing_kinds = ("instances_input_first", "instances_output_first")
    created = batch_llm.counts["batches_created"]
    try:
        with batch_stack.worker(env={"SELFINSTRUCT_TASK_MAX_RETRIES": "2"}):
            job_id = start_job(client, default_seeds, 8, seed=6)
            job = wait_for_status(client, job_id, timeout_s=120)
    finally:
        batch_llm.config.failing_kinds = ()
    assert job["status"] in ("succeeded", "failed"), batch_stack.logs()
    assert job["progress"]["instances_accepted"] == 0  # every instance request failed
    instance_batches = [
        b
        for b in list(batch_llm.batches.values())[created:]
        if b["metadata"]["selfinstruct_key"].startswith("instances")
    ]
    # At most one instance task per round and 20 instructions (this stack's task size).
    progress = job["progress"]
    tasks = progress["rounds_completed"] * -(-progress["instructions_accepted"] // 20)
    # The first attempt and two retries of each instance task; no more.
    assert 0 < len(instance_batches) <= 3 * tasks, len(instance_batches)


def test_a_refused_batch_fails_the_job_with_the_reason(
    client: httpx.Client, batch_stack: ServiceStack, batch_llm: FakeLLMServer, default_seeds: Path
) -> None:
    worker = batch_stack.start_worker()
    batch_llm.config.batch_refuse = True
    try:
        job_id = start_job(client, default_seeds, 10, seed=5)
        job = wait_for_status(client, job_id, timeout_s=60)
    finally:
        batch_llm.config.batch_refuse = False
        batch_stack.kill_worker(worker, sig=15)
    assert job["status"] == "failed"
    assert "Batch API refused" in job["error"] and "not available in the Batch API" in job["error"]
