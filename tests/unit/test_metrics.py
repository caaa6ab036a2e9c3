"""Prometheus metrics read from the stored rows (SQLite here), in the text format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.config import get_settings
from app.db import reset_engine, session_scope
from app.migrate import upgrade_database
from app.models import Instance, Instruction, Job, LLMCall, SeedSet
from app.services.metrics import build_registry


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    reset_engine()
    upgrade_database(url)
    yield
    get_settings.cache_clear()
    reset_engine()


def samples(queue: list[tuple[str, int]] | None = None) -> dict[tuple[str, tuple], float]:  # type: ignore[type-arg]
    registry, requests, _ = build_registry((lambda: queue) if queue is not None else None)
    requests.labels("GET", "/v1/jobs/{job_id}", "200").inc(3)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_come_from_the_stored_rows(database: None) -> None:
    with session_scope() as session:
        seed_set = SeedSet(name="s", content_hash="0", task_count=0)
        session.add(seed_set)
        session.flush()
        job = Job(seed_set_id=seed_set.id, num_instructions=2, options={}, rng_seed=0)
        session.add(job)
        session.flush()
        kept = Instruction(job_id=job.id, round=1, slot=0, text="a", accepted=True)
        session.add_all(
            [
                kept,
                Instruction(job_id=job.id, round=1, slot=1, text="b", accepted=False,
                            reason="near_duplicate"),
                Instruction(job_id=job.id, round=1, slot=2, text="c", accepted=False,
                            reason="near_duplicate"),
                Instruction(job_id=job.id, round=1, slot=3, text="d", accepted=False,
                            reason="over_target"),
            ]
        )  # fmt: skip
        session.flush()
        session.add(
            Instance(job_id=job.id, instruction_id=kept.id, position=0, input="", output="x",
                     accepted=True)
        )  # fmt: skip
        session.add_all(
            LLMCall(job_id=job.id, purpose=p, ok=ok, prompt_tokens=10, completion_tokens=5,
                    latency_ms=ms)
            for p, ok, ms in [("instructions", True, 200), ("classify", True, 80),
                              ("classify", False, 3000)]
        )  # fmt: skip
    found = samples(queue=[("selfinstruct", 7)])
    assert found[("selfinstruct_jobs", (("status", "queued"),))] == 1
    assert (
        found[("selfinstruct_instructions_total", (("outcome", "accepted"), ("reason", "")))] == 1
    )
    rejected = (("outcome", "rejected"), ("reason", "near_duplicate"))
    assert found[("selfinstruct_instructions_total", rejected)] == 2
    surplus = (("outcome", "over_target"), ("reason", ""))
    assert found[("selfinstruct_instructions_total", surplus)] == 1  # not a rejection
    assert not any(
        labels == (("outcome", "rejected"), ("reason", "over_target")) for _, labels in found
    )
    assert found[("selfinstruct_instances_total", (("outcome", "accepted"), ("reason", "")))] == 1
    assert (
        found[("selfinstruct_llm_requests_total", (("ok", "false"), ("purpose", "classify")))] == 1
    )
    assert found[("selfinstruct_llm_tokens_total", (("kind", "prompt"),))] == 30
    classify = ("purpose", "classify")
    assert found[("selfinstruct_llm_latency_seconds_bucket", (("le", "0.1"), classify))] == 1
    assert found[("selfinstruct_llm_latency_seconds_bucket", (("le", "5.0"), classify))] == 2
    assert found[("selfinstruct_llm_latency_seconds_count", (classify,))] == 2
    assert found[("selfinstruct_llm_latency_seconds_sum", (classify,))] == pytest.approx(3.08)
    assert found[("selfinstruct_queue_depth", (("queue", "selfinstruct"),))] == 7
    http = (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200"))
    assert found[("selfinstruct_http_requests_total", http)] == 3


def test_a_broker_outage_leaves_the_queue_gauge_empty(database: None) -> None:
    def down() -> list[tuple[str, int]]:
        raise ConnectionError("broker down")

    registry, _, _ = build_registry(down)
    text = generate_latest(registry).decode()
    assert "selfinstruct_queue_depth" in text and "selfinstruct_queue_depth{" not in text


def test_response_cache_hits_are_counted_by_purpose(database: None) -> None:
    with session_scope() as session:
        seed_set = SeedSet(name="s", content_hash="0", task_count=0)
        session.add(seed_set)
        session.flush()
        job = Job(seed_set_id=seed_set.id, num_instructions=2, options={}, rng_seed=0)
        session.add(job)
        session.flush()
        session.add_all(
            LLMCall(job_id=job.id, purpose=purpose, ok=True, cached=cached, attempts=0 if cached else 1)
            for purpose, cached in [("instructions", True), ("instructions", True),
                                    ("instructions", False), ("instances", False)]
        )  # fmt: skip
    found = samples()
    assert found[("selfinstruct_llm_cache_hits_total", (("purpose", "instructions"),))] == 2
    assert found[("selfinstruct_llm_cache_hits_total", (("purpose", "instances"),))] == 0
