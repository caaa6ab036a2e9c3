"""Claims on rounds and instance batches (SQLite): one live holder at a time, renewed by the
heartbeat, handed to a retry, released on any exit; the sweeper re-sends only dead or lost work."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.config import get_settings
from app.db import session_scope
from app.llm import concurrency
from app.models import InstancesState, Instruction, Job, LLMCall
from app.selfinstruct.options import GenerationOptions
from app.services import instances, job_index, leases, pipeline, sweeper
from app.services.budget import job_usage
from app.services.llm import llm_for, reset_llm_clients
from tests.support.fake_llm import FakeLLMServer, prompt_kind
from tests.support.sqlite_db import forget_settings, new_job, stored_seed_set, use_sqlite

LEASE_S = 30.0


@pytest.fixture
def job_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_llm: FakeLLMServer, default_seeds: Path
) -> Iterator[uuid.UUID]:
    monkeypatch.setenv("SELFINSTRUCT_JOB_LEASE_S", str(LEASE_S))
    # A gate of its own: the fake server is the session's, and its gate's adaptive limit would
    # carry what other modules' faults taught it (the timing tests here need its start).
    monkeypatch.setattr(concurrency, "_gates", {})
    use_sqlite(tmp_path / "leases.db", monkeypatch, fake_llm.base_url)
    created = new_job(stored_seed_set(default_seeds), 1000, GenerationOptions(seed=3))
    yield created
    job_index.forget_job_index(created)
    forget_settings()


def _job(job_id: uuid.UUID) -> Job:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def _claim_round(job_id: uuid.UUID, hold: leases.Hold, round_no: int = 1) -> bool:
    with session_scope() as session:
        return leases.claim_round(session, job_id, round_no, hold)


def _pending(job_id: uuid.UUID) -> list[uuid.UUID]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(Instruction.id)
                .where(
                    Instruction.job_id == job_id,
                    Instruction.instances_state == InstancesState.PENDING,
                )
                .order_by(Instruction.slot)
            )
        )


def _no_llm(_: object) -> object:
    raise AssertionError("a copy of held work must not call the LLM")


def test_a_round_has_one_live_holder(job_id: uuid.UUID) -> None:
    first, second = leases.Hold(job_id), leases.Hold(job_id)
    assert _claim_round(job_id, first)
    assert not _claim_round(job_id, second)
    assert _claim_round(job_id, leases.Hold(job_id, first.token))  # a retry it handed over to
    job = _job(job_id)
    assert job.round_claim_token == first.token
    assert job.round_claimed_by == leases.holder_name()
    with session_scope() as session:  # the holder went silent for a lease
        session.get(Job, job_id).round_claimed_until = datetime.now(UTC) - timedelta(seconds=1)  # type: ignore[union-attr]
    assert _claim_round(job_id, second)
    assert not _claim_round(job_id, leases.Hold(job_id), round_no=2)  # not the next round


def test_a_copy_of_a_held_round_skips_it_without_calling_the_llm(job_id: uuid.UUID) -> None:
    assert _claim_round(job_id, leases.Hold(job_id))
    result = pipeline.run_round(job_id, 1, _no_llm)  # type: ignore[arg-type]
    assert result.next_round is None and not result.instance_batches
    assert _job(job_id).rounds_completed == 0


def test_a_committed_round_frees_its_claim(job_id: uuid.UUID) -> None:
    result = pipeline.run_round(job_id, 1, llm_for)
    assert result.next_round == 2
    job = _job(job_id)
    assert job.rounds_completed == 1 and job.round_claim_token is None
    assert job.heartbeat_at is not None


def test_claims_are_released_when_the_task_raises(job_id: uuid.UUID) -> None:
    with pytest.raises(RuntimeError), leases.holding(job_id) as hold:
        assert _claim_round(job_id, hold)
        assert hold in leases.running_holds()
        raise RuntimeError("a bug in the task")
    assert hold not in leases.running_holds()
    job = _job(job_id)
    assert job.round_claim_token is None and job.round_claimed_until is None


def test_a_retry_inherits_the_claim_for_its_countdown(job_id: uuid.UUID) -> None:
    with leases.holding(job_id) as hold:
        assert _claim_round(job_id, hold)
        token = hold.hand_over(120)
    job = _job(job_id)
    assert job.round_claim_token == uuid.UUID(token)
    left = (job.round_claimed_until - datetime.now(UTC)).total_seconds()  # type: ignore[operator]
    assert 120 + LEASE_S - 5 < left <= 120 + LEASE_S
    assert not _claim_round(job_id, leases.Hold(job_id))  # a sweeper's copy skips it
    with leases.holding(job_id, token) as retry:
        assert _claim_round(job_id, retry)


def test_a_task_whose_claims_were_taken_over_leaves_the_new_holders_claims_alone(
    job_id: uuid.UUID,
) -> None:
    pipeline.run_round(job_id, 1, llm_for)
    first = _pending(job_id)[0]
    past = datetime.now(UTC) - timedelta(seconds=1)
    successor = leases.Hold(job_id)
    with leases.holding(job_id) as hold:
        assert _claim_round(job_id, hold, round_no=2)
        with session_scope() as session:
            assert leases.claim_instructions(session, job_id, [first], hold) == [first]
        with session_scope() as session:  # its lease ran out and another task took over
            session.get(Job, job_id).round_claimed_until = past  # type: ignore[union-attr]
            session.get(Instruction, first).claimed_until = past  # type: ignore[union-attr]
        assert _claim_round(job_id, successor, round_no=2)
        with session_scope() as session:
            assert leases.claim_instructions(session, job_id, [first], successor) == [first]
    assert _job(job_id).round_claim_token == successor.token
    with session_scope() as session:
        assert session.get(Instruction, first).claim_token == successor.token  # type: ignore[union-attr]


def test_the_heartbeat_renews_claims_while_the_task_runs(job_id: uuid.UUID) -> None:
    # beat_now() wakes the heartbeat at once, so the default interval stays: a heartbeat made
    # to spin every 50 ms read the settings while the next test's fixture was changing them,
    # and cached the old database's (seen once in CI: "no such table").
    with leases.holding(job_id) as hold:
        assert _claim_round(job_id, hold)
        before = _job(job_id)
        time.sleep(0.05)
        leases.beat_now()
        deadline = time.monotonic() + 5
        while _job(job_id).round_claimed_until == before.round_claimed_until:
            assert time.monotonic() < deadline, "the heartbeat did not renew the claim"
            time.sleep(0.02)
        after = _job(job_id)
    assert after.round_claimed_until > before.round_claimed_until  # type: ignore[operator]
    assert after.heartbeat_at > before.heartbeat_at  # type: ignore[operator]
    assert _job(job_id).round_claim_token is None  # released at the end


def test_instance_batches_skip_instructions_a_live_task_holds(
    job_id: uuid.UUID, fake_llm: FakeLLMServer
) -> None:
    pipeline.run_round(job_id, 1, llm_for)
    pending = _pending(job_id)
    assert len(pending) >= 3
    other = leases.Hold(job_id)
    with session_scope() as session:
        held = leases.claim_instructions(session, job_id, pending[:2], other)
    assert sorted(held) == sorted(pending[:2])
    before = len(fake_llm.requests)
    instances.generate_instances(job_id, pending, llm_for)
    assert set(_pending(job_id)) == set(pending[:2])  # the held ones are left to their holder
    assert len(fake_llm.requests) - before == 2 * (len(pending) - 2)  # classify + instances
    with session_scope() as session:  # the holder died: its claims expire
        for row in session.scalars(select(Instruction).where(Instruction.id.in_(held))):
            row.claimed_until = datetime.now(UTC) - timedelta(seconds=1)
    instances.generate_instances(job_id, pending, llm_for)
    assert _pending(job_id) == []
    with session_scope() as session:
        claims = session.execute(
            select(Instruction.claim_token, Instruction.claimed_until).where(
                Instruction.id.in_(pending)
            )
        ).all()
    assert set(claims) == {(None, None)}


def test_an_instance_task_takes_the_jobs_pending_instructions_nobody_holds(
    job_id: uuid.UUID, fake_llm: FakeLLMServer
) -> None:
    """Its message names one instruction; it also does the others nobody holds, so a pool
    process keeps its window full instead of waiting for its own batch's slowest request."""
    pipeline.run_round(job_id, 1, llm_for)
    pending = _pending(job_id)
    assert len(pending) >= 4
    other = leases.Hold(job_id)
    with session_scope() as session:
        leases.claim_instructions(session, job_id, pending[:1], other)
    before = len(fake_llm.requests)
    assert instances.generate_instances(job_id, pending[1:2], llm_for)
    assert _pending(job_id) == pending[:1]  # a live task's claim is left alone
    assert len(fake_llm.requests) - before == 2 * (len(pending) - 1)  # classify + instances


def _prompt_kinds(requests: list[dict]) -> list[str]:
    return [prompt_kind(r.get("prompt") or r["messages"][-1]["content"]) for r in requests]


def test_an_unnatural_instance_task_takes_the_jobs_pending_cores_nobody_holds(
    job_id: uuid.UUID, fake_llm: FakeLLMServer
) -> None:
    """Unnatural mode's steps 2 and 3 stream as paper mode's do: a task named for one core
    also does the others nobody holds."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.options = GenerationOptions(seed=3, mode="unnatural").model_dump(mode="json")
    pending: list[uuid.UUID] = []
    for round_no in range(1, 6):  # one round's answers brought only 2 cores once
        pipeline.run_round(job_id, round_no, llm_for)
        pending = _pending(job_id)
        if len(pending) >= 3:
            break
    assert len(pending) >= 3  # one held elsewhere, one named, at least one to take
    other = leases.Hold(job_id)
    with session_scope() as session:
        leases.claim_instructions(session, job_id, pending[:1], other)
    before = len(fake_llm.requests)
    assert instances.generate_instances(job_id, pending[1:2], llm_for)
    assert _pending(job_id) == pending[:1]  # a live task's claim is left alone
    kinds = _prompt_kinds(fake_llm.requests[before:])
    assert kinds.count("unnatural_output") == len(pending) - 1


def test_an_instance_task_takes_nothing_more_after_its_slice(
    job_id: uuid.UUID, fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After INSTANCE_SLICE_S (shortened here to none at all) a task does only what it has, so
    that other jobs' tasks get the pool process."""
    monkeypatch.setattr(instances, "INSTANCE_SLICE_S", 0.0)
    pipeline.run_round(job_id, 1, llm_for)
    pending = _pending(job_id)
    assert instances.generate_instances(job_id, pending[:1], llm_for)
    assert set(_pending(job_id)) == set(pending[1:])


def test_instance_slices_are_spread_around_their_mean() -> None:
    """Tasks of a job start together; slices of different lengths let them stop taking work
    at different times (the default slice, 30 s on average)."""
    started = time.monotonic()
    lengths = [
        instances._TakeMore(uuid.uuid4(), leases.Hold(uuid.uuid4()), GenerationOptions()).until
        - started
        for _ in range(200)
    ]
    low = instances.INSTANCE_SLICE_S * (1 - instances.SLICE_SPREAD)
    high = instances.INSTANCE_SLICE_S * (1 + instances.SLICE_SPREAD)
    assert (low, high) == (15.0, 30.0 * 1.5)
    assert all(low <= length <= high + 1.0 for length in lengths)
    assert max(lengths) - min(lengths) > 15.0  # not one length for all


def test_a_task_that_took_more_hands_all_its_unfinished_instructions_to_its_retry(
    job_id: uuid.UUID, fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline.run_round(job_id, 1, llm_for)
    pending = _pending(job_id)
    monkeypatch.setenv("SELFINSTRUCT_LLM_MAX_RETRIES", "0")  # fail at once, not after backoffs
    get_settings.cache_clear()
    reset_llm_clients()
    fake_llm.fail_next(10_000)
    try:
        with pytest.raises(instances.InstancesWaiting) as waiting:
            instances.generate_instances(job_id, pending[:1], llm_for)
    finally:
        fake_llm.reset()  # the server is the session's
    assert set(waiting.value.instruction_ids) == set(pending)
    assert set(_pending(job_id)) == set(pending)  # nothing lost, nothing marked failed


def test_the_sweeper_leaves_live_work_alone(job_id: uuid.UUID) -> None:
    with leases.holding(job_id) as hold:
        assert _claim_round(job_id, hold)
        assert sweeper.stalled_jobs() == []
        # Even a job quiet for longer than the lease keeps a round whose claim is live.
        with session_scope() as session:
            job = session.get(Job, job_id)
            job.heartbeat_at = datetime.now(UTC) - timedelta(seconds=2 * LEASE_S)  # type: ignore[union-attr]
            job.round_claimed_until = datetime.now(UTC) + timedelta(seconds=LEASE_S)  # type: ignore[union-attr]
        assert sweeper.stalled_jobs() == []


def test_the_sweeper_resends_a_dead_round_even_when_the_job_is_busy(job_id: uuid.UUID) -> None:
    assert _claim_round(job_id, leases.Hold(job_id))  # a task that then died
    later = datetime.now(UTC) + timedelta(seconds=LEASE_S + 1)
    with session_scope() as session:  # other tasks of the job beat on
        session.get(Job, job_id).heartbeat_at = later  # type: ignore[union-attr]
    (resend,) = sweeper.stalled_jobs(now=later)
    assert resend.round_no == 1 and resend.instance_batches == []
    assert _job(job_id).round_claim_token is None
    assert sweeper.stalled_jobs(now=later) == []  # one sweeper re-sends it, once


def test_the_sweeper_resends_a_quiet_jobs_unclaimed_work_once_per_lease(
    job_id: uuid.UUID,
) -> None:
    pipeline.run_round(job_id, 1, llm_for)
    pending = _pending(job_id)
    later = datetime.now(UTC) + timedelta(seconds=LEASE_S + 1)
    (resend,) = sweeper.stalled_jobs(now=later)
    assert resend.round_no == 2
    assert [i for batch in resend.instance_batches for i in batch] == pending
    assert sweeper.stalled_jobs(now=later) == []
    (again,) = sweeper.stalled_jobs(now=later + timedelta(seconds=LEASE_S + 1))
    assert again.round_no == 2


def test_the_sweeper_resends_only_the_dead_part_of_a_busy_job(job_id: uuid.UUID) -> None:
    pipeline.run_round(job_id, 1, llm_for)
    pending = _pending(job_id)
    dead, live = leases.Hold(job_id), leases.Hold(job_id)
    with session_scope() as session:
        session.get(Job, job_id)
        leases.claim_instructions(session, job_id, pending[:2], dead)
        leases.claim_instructions(session, job_id, pending[2:], live)
    assert _claim_round(job_id, live, round_no=2)
    later = datetime.now(UTC) + timedelta(seconds=LEASE_S + 1)
    leases.renew([live], now=later)  # the live task's heartbeat goes on; the dead one's stopped
    (resend,) = sweeper.stalled_jobs(now=later + timedelta(seconds=1))
    assert resend.round_no is None
    assert resend.instance_batches == [pending[:2]]


def test_instructions_of_a_batch_are_stored_as_each_finishes(
    job_id: uuid.UUID, fake_llm: FakeLLMServer
) -> None:
    """A worker killed in the middle of an instance batch loses only what is still in flight:
    the instructions whose answers are in are stored while the others' requests are out."""
    import threading

    pipeline.run_round(job_id, 1, llm_for)
    pending = _pending(job_id)
    assert len(pending) >= 4
    config = fake_llm.config
    # Every second classification is slow: with a random half, all of them were, 1 run in 16.
    config.slow_kinds, config.slow_every, config.slow_s = ("classify",), 2, 3.0
    try:
        worker = threading.Thread(
            target=instances.generate_instances, args=(job_id, pending, llm_for)
        )
        started = time.monotonic()
        worker.start()
        stored = 0
        while stored == 0 and time.monotonic() - started < 2.8:
            stored = len(pending) - len(_pending(job_id))
            time.sleep(0.02)
        early = time.monotonic() - started < 3.0  # no slow classification can be back yet
        worker.join()
    finally:
        config.slow_kinds, config.slow_every, config.slow_s = (), 0, 0.0
    assert early and 0 < stored < len(pending), stored
    assert _pending(job_id) == []


def _set_options(job_id: uuid.UUID, **changes: object) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.options = {**job.options, **changes}


def test_an_instance_task_sends_only_what_the_token_budget_has_room_for(
    job_id: uuid.UUID, fake_llm: FakeLLMServer
) -> None:
    """A budget is a cap on what is sent: an instruction starts only once the job's budget
    holds all its requests may use, and the task stops the job when nothing more fits."""
    pipeline.run_round(job_id, 1, llm_for)
    pending = _pending(job_id)
    with session_scope() as session:
        used_by_round = job_usage(session, job_id).tokens
    budget = used_by_round + 2500  # room for a couple of instructions, not for all of them
    _set_options(job_id, max_total_tokens=budget)
    assert instances.generate_instances(job_id, pending, llm_for)
    with session_scope() as session:
        used = job_usage(session, job_id).tokens
        states = list(
            session.scalars(select(Instruction.instances_state).where(Instruction.id.in_(pending)))
        )
    job = _job(job_id)
    assert used <= budget
    assert job.stopped_reason == "token_budget" and job.instructions_complete
    assert InstancesState.DONE in states and InstancesState.FAILED in states
    assert InstancesState.PENDING not in states


def test_an_instance_task_sends_only_what_the_request_budget_has_room_for(
    job_id: uuid.UUID, fake_llm: FakeLLMServer
) -> None:
    pipeline.run_round(job_id, 1, llm_for)
    with session_scope() as session:
        used_by_round = job_usage(session, job_id).requests
    _set_options(job_id, max_llm_requests=used_by_round + 5)  # two instructions and a half
    assert instances.generate_instances(job_id, _pending(job_id), llm_for)
    with session_scope() as session:
        assert job_usage(session, job_id).requests == used_by_round + 4
    assert _job(job_id).stopped_reason == "request_budget"


def test_a_retry_does_not_ask_again_for_the_classifications_it_has(
    job_id: uuid.UUID, fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A classification is stored as soon as it is back: the task sent again after its worker
    died (here: after its instance requests failed) asks only for the instances."""
    pipeline.run_round(job_id, 1, llm_for)
    pending = _pending(job_id)
    monkeypatch.setenv("SELFINSTRUCT_LLM_MAX_RETRIES", "0")  # fail at once, not after backoffs
    get_settings.cache_clear()
    reset_llm_clients()
    original = fake_llm.config  # the server is the session's
    fake_llm.config = replace(
        original, failing_kinds=("instances_input_first", "instances_output_first")
    )
    try:
        with pytest.raises(instances.InstancesWaiting):
            instances.generate_instances(job_id, pending, llm_for)
    finally:
        fake_llm.config = original
    before = len(fake_llm.requests)
    assert instances.generate_instances(job_id, pending, llm_for)
    kinds = [prompt_kind(body.get("prompt", "")) for body in fake_llm.requests[before:]]
    assert "classify" not in kinds and len(kinds) == len(pending)
    with session_scope() as session:
        classified = session.scalar(
            select(func.count())
            .select_from(LLMCall)
            .where(LLMCall.job_id == job_id, LLMCall.purpose == "classify")
        )
    assert classified == len(pending)  # each answered and recorded once
    assert not _pending(job_id)
