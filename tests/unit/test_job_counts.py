"""A job's counters, on SQLite with the test server, agree with the rows they describe: what a
user reads in progress, the report and /metrics."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models import Instance, InstancesState, Instruction, Job, JobSummary, LLMCall
from app.schemas import Progress
from app.selfinstruct.options import GenerationOptions
from app.services import completion, instances, pipeline
from app.services.balance import undecided_through
from app.services.call_totals import total
from app.services.export import iter_rejected
from app.services.jobs import job_progress, job_usage
from app.services.llm import llm_for
from app.services.report import job_report
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.metrics import metric_samples
from tests.support.sqlite_db import (
    forget_settings,
    new_job,
    run_to_end,
    stored_seed_set,
    use_sqlite,
)


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(FakeLLMConfig(seed=8, truncate_rate=0.0)) as server:
        yield server


@pytest.fixture
def seed_set_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llm: FakeLLMServer, default_seeds: Path
) -> Iterator[uuid.UUID]:
    use_sqlite(tmp_path / "counts.db", monkeypatch, llm.base_url)
    yield stored_seed_set(default_seeds)
    forget_settings()


def progress_of(job_id: uuid.UUID) -> Progress:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job_progress(session, job)


def test_candidates_past_the_target_are_counted_apart_from_rejections(
    seed_set_id: uuid.UUID,
) -> None:
    # One round of five prompts brings more than three instructions: the rest is surplus.
    job_id = new_job(seed_set_id, 3, GenerationOptions(seed=1, rounds_in_flight=1))
    run_to_end(job_id)
    progress = progress_of(job_id)
    assert progress.instructions_accepted == 3 and progress.instructions_over_target > 0
    assert "over_target" not in progress.instructions_rejected
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        report = job_report(session, job).instructions
    assert report.over_target == progress.instructions_over_target
    assert report.by_reason == progress.instructions_rejected
    assert report.rejected == sum(progress.instructions_rejected.values())
    assert report.generated == report.accepted + report.rejected + report.over_target
    lines = [r for r in iter_rejected(job_id) if r["kind"] == "instruction"]
    surplus = [r for r in lines if r["reason"] == "over_target"]
    assert len(surplus) == report.over_target
    assert {r["status"] for r in surplus} == {"over_target"}
    assert {r["status"] for r in lines if r not in surplus} <= {"rejected"}


def instructions_with_a_stored_instance(job_id: uuid.UUID) -> int:
    with session_scope() as session:
        return session.scalar(
            select(func.count(func.distinct(Instance.instruction_id))).where(
                Instance.job_id == job_id
            )
        )  # type: ignore[return-value]


def test_after_a_budget_stop_only_instructions_with_instances_count_as_such(
    seed_set_id: uuid.UUID,
) -> None:
    options = GenerationOptions(seed=1, rounds_in_flight=1, max_llm_requests=20)
    job_id = new_job(seed_set_id, 40, options)
    run_to_end(job_id)
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.stopped_reason == "request_budget"
        given_up = session.scalar(
            select(func.count()).where(
                Instruction.job_id == job_id, Instruction.instances_state == InstancesState.FAILED
            )
        )
    assert given_up  # accepted in step 1, then left without instances by the stop
    progress = progress_of(job_id)
    assert progress.instructions_with_instances == instructions_with_a_stored_instance(job_id)
    assert progress.instructions_with_instances < progress.instructions_accepted


def test_instructions_whose_instance_requests_failed_have_no_instances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_seeds: Path
) -> None:
    failing = ("instances_input_first", "instances_output_first")
    monkeypatch.setenv("SELFINSTRUCT_LLM_MAX_RETRIES", "1")  # fail fast
    with FakeLLMServer(FakeLLMConfig(seed=8, failing_kinds=failing)) as server:
        use_sqlite(tmp_path / "failing.db", monkeypatch, server.base_url)
        job_id = new_job(stored_seed_set(default_seeds), 4, GenerationOptions(seed=1))
        run_to_end(job_id)
    progress = progress_of(job_id)
    assert progress.instructions_accepted == 4
    assert progress.instructions_with_instances == 0 == progress.instances_accepted


def test_retried_failures_are_counted_by_kind_in_progress_calls_and_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_seeds: Path
) -> None:
    """A third of the attempts fail and are retried: progress, the call rows and /metrics
    count every attempt the server saw, by how it failed."""
    # Which attempts fail depends on the order requests arrive in, so the job is large enough
    # that both kinds come up whatever the order (about 60 attempts), and the counts below
    # hold also for a request that ran out of retries.
    config = FakeLLMConfig(seed=3, truncate_rate=0.0, error_rate_5xx=0.2, rate_limit_rate=0.15)
    monkeypatch.setenv("SELFINSTRUCT_LLM_MAX_RETRIES", "6")
    with FakeLLMServer(config) as server:
        use_sqlite(tmp_path / "flaky.db", monkeypatch, server.base_url)
        job_id = new_job(stored_seed_set(default_seeds), 8, GenerationOptions(seed=1))
        run_to_end(job_id)
        sent, faults = len(server.requests), dict(server.counts)
    progress = progress_of(job_id)
    assert faults.get("fault_5xx") and faults.get("fault_429"), faults
    assert progress.llm_attempts == sent
    assert progress.llm_retries == sent - progress.llm_requests
    assert progress.llm_failed_attempts == {
        "http_429": faults["fault_429"],
        "http_5xx": faults["fault_5xx"],
    }
    with session_scope() as session:
        calls = session.execute(
            select(LLMCall.attempts, LLMCall.attempt_errors).where(LLMCall.job_id == job_id)
        ).all()
    assert sum(attempts for attempts, _ in calls) == sent
    assert all((attempts > 1) == (errors is not None) for attempts, errors in calls)
    found = metric_samples()
    assert (
        sum(v for (name, _), v in found.items() if name == "selfinstruct_llm_attempts_total")
        == sent
    )
    retries = sum(v for (name, _), v in found.items() if name == "selfinstruct_llm_retries_total")
    assert retries == progress.llm_retries
    by_kind = Counter[str]()
    for (name, labels), value in found.items():
        if name == "selfinstruct_llm_failed_attempts_total":
            by_kind[dict(labels)["kind"]] += int(value)
    assert by_kind == progress.llm_failed_attempts


def test_a_job_succeeds_once_no_accepted_instruction_of_any_round_waits_for_instances(
    seed_set_id: uuid.UUID,
) -> None:
    job_id = new_job(seed_set_id, 1000, GenerationOptions(seed=1))
    for round_no in (1, 2):
        pipeline.run_round(job_id, round_no, llm_for)
    with session_scope() as session:
        first, every = (undecided_through(session, job_id, r) for r in (1, None))
        session.get(Job, job_id).instructions_complete = True  # type: ignore[union-attr]
    assert 0 < first < every
    assert not completion.finalize_if_complete(job_id)  # round 2's instructions still wait
    with session_scope() as session:
        pending = session.scalars(
            select(Instruction.id).where(
                Instruction.job_id == job_id,
                Instruction.instances_state == InstancesState.PENDING,
            )
        ).all()
    instances.generate_instances(job_id, list(pending), llm_for)
    assert completion.finalize_if_complete(job_id)
    with session_scope() as session:
        assert undecided_through(session, job_id, None) == 0


def test_calls_per_purpose_add_up_to_the_rows_and_are_kept_with_the_summary(
    seed_set_id: uuid.UUID,
) -> None:
    """A status read takes progress and the live projection's per-purpose calls from one
    summary row: the same figures as summing the job's llm_calls rows directly."""
    job_id = new_job(seed_set_id, 12, GenerationOptions(seed=4))
    run_to_end(job_id)
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        progress, calls = job_usage(session, job)
        direct = session.execute(
            select(
                LLMCall.purpose,
                func.count(),
                func.sum(LLMCall.prompt_tokens),
                func.sum(LLMCall.completion_tokens),
                func.sum(LLMCall.latency_ms),
            )
            .where(LLMCall.job_id == job_id)
            .group_by(LLMCall.purpose)
        ).all()
        stored = session.get(JobSummary, job_id)
        assert stored is not None and stored.calls is not None
        assert job_usage(session, job)[1] == calls  # read back from the summary row
    by_purpose = {c.purpose: c for c in calls}
    assert {"instructions", "classify"} <= set(by_purpose)
    for purpose, n, prompt, completion_tokens, latency_ms in direct:
        kept = by_purpose[purpose]
        assert (kept.requests, kept.prompt_tokens, kept.completion_tokens) == (
            n,
            prompt,
            completion_tokens,
        )
        assert kept.answered_latency_ms <= latency_ms
    every = total(calls)
    assert (every.requests, every.prompt_tokens) == (progress.llm_requests, progress.prompt_tokens)
    assert total(calls, "instructions").requests == progress.step1_requests
