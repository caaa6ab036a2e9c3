"""The response cache on the real stack (PostgreSQL, Redis, API and worker processes): a rerun
of a finished job sends nothing the backend answered before and produces the same examples,
another key's identical job is sent in full, and a job whose worker was killed re-sends no
request whose answer had been stored."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from app.config import DEFAULT_BACKEND
from app.llm.base import LLMRequest
from app.models import Instance, Instruction, Job, ResponseCacheEntry
from app.services.response_cache import request_digest
from tests.integration.conftest import upload
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.stack import ServiceStack, llm_stack, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    """Not deterministic, no HTTP faults: a prompt asked again gets another answer, and every
    request it sees was sent by a job."""
    with FakeLLMServer(FakeLLMConfig(seed=71, truncate_rate=0.0)) as server:
        yield server


@pytest.fixture(scope="module")
def cache_stack(
    pg_url: str, broker_url: str, llm: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceStack]:
    with llm_stack(
        pg_url=pg_url,
        broker_url=broker_url,
        llm_url=llm.base_url,
        tmp=tmp_path_factory.mktemp("response-cache"),
        # A killed worker's claims run out soon, and the sweeper sends its work again.
        SELFINSTRUCT_JOB_LEASE_S="6",
        SELFINSTRUCT_HEARTBEAT_INTERVAL_S="1",
        SELFINSTRUCT_SWEEP_INTERVAL_S="1",
    ) as running:
        yield running


def start_job(client: httpx.Client, seeds: Path, target: int, **options: object) -> str:
    seed_set = upload(client, seeds)["id"]
    body = {"seed_set_id": seed_set, "num_instructions": target, "options": options}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def examples(db: Engine, job_id: str) -> list[tuple[str, str, str]]:
    with db.connect() as conn:
        rows = conn.execute(
            select(Instruction.text, Instance.input, Instance.output)
            .join(Instance, Instance.instruction_id == Instruction.id)
            .where(Instance.job_id == uuid.UUID(job_id), Instance.accepted.is_(True))
        ).all()
    return sorted((text, input_, output) for text, input_, output in rows)


def finished(client: httpx.Client, stack: ServiceStack, job_id: str) -> dict[str, Any]:
    job = wait_for_status(client, job_id, timeout_s=180)
    assert job["status"] == "succeeded", (job, stack.logs())
    return job


def test_a_rerun_sends_nothing_it_had_answered_and_repeats_the_examples(
    cache_stack: ServiceStack, llm: FakeLLMServer, db: Engine, default_seeds: Path
) -> None:
    with cache_stack.client(cache_stack.create_key("alice")) as alice:
        job_id = start_job(alice, default_seeds, 20, seed=5, response_cache="all")
        first = finished(alice, cache_stack, job_id)
        sent = len(llm.requests)
        assert sent > 0 and first["progress"]["cache_hits"] == 0
        cached = stored_digests(db)
        response = alice.post(f"/v1/jobs/{job_id}/rerun")
        assert response.status_code == 202, response.text
        again = finished(alice, cache_stack, response.json()["id"])
        owner = owner_of(db, job_id)
    # With rounds in flight, a rerun may send a round more or less than the first run did
    # before the target was reached: what it sends is only what was never answered.
    resent = [digest_of(body, owner) for body in llm.requests[sent:]]
    print(f"rerun: {len(resent)} of {again['progress']['llm_requests']} requests sent")
    assert not set(resent) & cached, "the rerun sent a request whose answer was stored"
    assert examples(db, again["id"]) == examples(db, job_id) != []
    progress = again["progress"]
    assert progress["cache_hits"] == progress["llm_requests"] - len(resent) > 0
    assert progress["llm_attempts"] == len(resent)
    with cache_stack.client(cache_stack.create_key("bob")) as bob:
        theirs = start_job(bob, default_seeds, 20, seed=5, response_cache="all")
        other = finished(bob, cache_stack, theirs)
    assert other["progress"]["cache_hits"] == 0
    assert len(llm.requests) - sent == other["progress"]["llm_requests"]


def stored_digests(db: Engine) -> set[str]:
    with db.connect() as conn:
        return set(conn.scalars(select(ResponseCacheEntry.digest)))


def owner_of(db: Engine, job_id: str) -> uuid.UUID | None:
    with db.connect() as conn:
        return conn.scalar(select(Job.owner_key_id).where(Job.id == uuid.UUID(job_id)))


def digest_of(body: dict[str, Any], owner: uuid.UUID | None) -> str:
    """The cache key of a request the server saw (a completion, on the default backend)."""
    request = LLMRequest(
        prompt=body["prompt"],
        max_tokens=body["max_tokens"],
        temperature=body["temperature"],
        top_p=body["top_p"],
        presence_penalty=body["presence_penalty"],
        frequency_penalty=body["frequency_penalty"],
        stop=tuple(body.get("stop") or ()),
    )
    return request_digest(owner, DEFAULT_BACKEND, body["model"], "completions", request)


def test_a_killed_workers_job_re_sends_no_stored_answer(
    cache_stack: ServiceStack, llm: FakeLLMServer, db: Engine, default_seeds: Path
) -> None:
    # Classifications take a while, so some are out (and some stored) when the worker dies.
    llm.config.slow_kinds, llm.config.slow_rate, llm.config.slow_s = ("classify",), 0.5, 1.0
    try:
        with cache_stack.client(cache_stack.create_key("carol")) as carol:
            before = stored_digests(db)
            job_id = start_job(carol, default_seeds, 60, seed=6)
            deadline = time.monotonic() + 120
            while len(stored_digests(db) - before) < 10:
                assert time.monotonic() < deadline, cache_stack.logs()
                time.sleep(0.1)
            for worker in cache_stack.workers:
                if worker.poll() is None:
                    cache_stack.kill_worker(worker)
            answered = stored_digests(db)
            sent_before_kill = len(llm.requests)
            cache_stack.start_worker()
            finished(carol, cache_stack, job_id)
    finally:
        llm.config.slow_kinds, llm.config.slow_rate, llm.config.slow_s = (), 0.0, 0.0
    owner = owner_of(db, job_id)
    after = [digest_of(body, owner) for body in llm.requests[sent_before_kill:]]
    print(f"after the kill: {len(after)} requests sent, {len(answered)} answers stored")
    assert after, "the job went on after the kill"
    assert not set(after) & answered, "a request whose answer was stored was sent again"
