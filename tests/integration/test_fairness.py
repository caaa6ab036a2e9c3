"""Fairness between API keys on the real stack: one key's large jobs cannot keep another key's
small job waiting behind their whole backlog."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.config import get_settings
from app.services import fairness
from tests.integration.conftest import upload
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.stack import ServiceStack, llm_stack, queued_bulk_messages, wait_for_status

pytestmark = pytest.mark.integration


def test_priority_grows_with_the_backlog() -> None:
    assert [fairness.priority_for_backlog(n) for n in (0, 1, 2, 3, 4, 8, 100, 10**6)] == [
        0,
        1,
        2,
        2,
        3,
        4,
        7,
        9,
    ]


def test_backlog_counts_in_redis(broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", broker_url)
    monkeypatch.setenv("DATABASE_URL", os.environ.get("TEST_DATABASE_URL", "sqlite://"))
    get_settings.cache_clear()
    try:
        owner = uuid.uuid4()
        assert [fairness.claim_priority(owner) for _ in range(5)] == [0, 1, 2, 2, 3]
        assert fairness.claim_priority(uuid.uuid4()) == 0  # another key starts at the top
        for _ in range(5):
            fairness.message_started(owner)
        assert fairness.backlog(owner) == 0
        fairness.message_started(owner)  # more starts than sends (a retry): clipped at zero
        assert fairness.backlog(owner) == 0
        ttl = redis.Redis.from_url(broker_url).ttl(f"selfinstruct:backlog:{owner}")
        assert 0 < ttl <= 900
    finally:
        get_settings.cache_clear()


INSTANCE_ANSWER_S = 0.4  # each instance prompt (input-first) takes this long


@pytest.fixture(scope="module")
def slowish_llm() -> Iterator[FakeLLMServer]:
    """Slow instance answers, fast instruction rounds: the big jobs pile up instance batches."""
    config = FakeLLMConfig(
        seed=5,
        slow_rate=1.0,
        slow_s=INSTANCE_ANSWER_S,
        slow_kinds=("instances_input_first", "instances_output_first"),
    )
    with FakeLLMServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def one_worker_stack(
    pg_url: str,
    broker_url: str,
    slowish_llm: FakeLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceStack]:
    """One worker process, so that every job competes for it; one instruction per instance task
    (instead of 5) so that the big jobs' backlog is many messages deep."""
    with llm_stack(
        pg_url=pg_url,
        broker_url=broker_url,
        llm_url=slowish_llm.base_url,
        tmp=tmp_path_factory.mktemp("fair"),
        concurrency=1,
        SELFINSTRUCT_INSTRUCTIONS_PER_INSTANCE_TASK="1",
    ) as running:
        yield running


def test_a_small_job_of_another_key_does_not_wait_behind_a_big_backlog(
    one_worker_stack: ServiceStack, default_seeds: Path, broker_url: str
) -> None:
    big_key = one_worker_stack.create_key("big")
    small_key = one_worker_stack.create_key("small")
    with one_worker_stack.client(big_key) as big, one_worker_stack.client(small_key) as small:
        big_seeds = upload(big, default_seeds)
        big_jobs = [
            big.post(
                "/v1/jobs",
                json={
                    "seed_set_id": big_seeds["id"],
                    "num_instructions": 40,
                    "options": {"seed": n},
                },
            ).json()["id"]
            for n in range(3)
        ]
        deadline = time.monotonic() + 120
        while (queued := queued_bulk_messages(broker_url)) < 25:
            assert time.monotonic() < deadline, f"no backlog built: {queued} queued"
            time.sleep(0.2)
        small_seeds = upload(small, default_seeds)
        started = time.monotonic()
        small_job = small.post(
            "/v1/jobs", json={"seed_set_id": small_seeds["id"], "num_instructions": 2}
        ).json()["id"]
        finished = wait_for_status(small, small_job, timeout_s=300)
        small_wall = time.monotonic() - started
        for j in big_jobs:
            assert wait_for_status(big, j, timeout_s=900)["status"] == "succeeded"
    assert finished["status"] == "succeeded"
    # First in, first out, the small job would start only after the `queued` messages ahead of
    # it, each at least one slow instance answer: `queued * INSTANCE_ANSWER_S` seconds at best.
    fifo_at_best = queued * INSTANCE_ANSWER_S
    print(f"small job: {small_wall:.1f} s; behind {queued} messages FIFO: >= {fifo_at_best:.1f} s")
    assert small_wall < fifo_at_best / 2, (small_wall, queued)
