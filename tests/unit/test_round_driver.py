"""Step 1 as a stream (SQLite, a deterministic test server whose answers come back out of
order): several rounds in flight, yet the job accepts exactly what it accepts round by round."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from rouge_score import rouge_scorer
from sqlalchemy import func, select

from app.config import get_settings
from app.db import session_scope
from app.models import Instruction, Job, JobStatus, LLMAnswer, LLMCall
from app.selfinstruct.options import GenerationOptions
from app.services import completion, journal, leases, pipeline, round_driver, scores, slices
from app.services.calls import CallRecord, record_calls
from app.services.jobs import create_job
from app.services.llm import llm_for, reset_llm_clients
from app.services.seed_sets import load_seed_tasks
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.sqlite_db import forget_settings, stored_seed_set, use_sqlite

TARGET = 60


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    # 10-30 ms per answer, drawn per request: rounds sent together come back in any order.
    config = FakeLLMConfig(seed=5, deterministic=True, latency_s=0.02, truncate_rate=0.0)
    with FakeLLMServer(config) as server:
        yield server


@pytest.fixture
def seed_set_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llm: FakeLLMServer, default_seeds: Path
) -> Iterator[uuid.UUID]:
    use_sqlite(tmp_path / "stream.db", monkeypatch, llm.base_url)
    yield stored_seed_set(default_seeds)
    forget_settings()


def new_job(seed_set_id: uuid.UUID, target: int = TARGET, **options: object) -> uuid.UUID:
    with session_scope() as session:
        job = create_job(
            session,
            seed_set_id=seed_set_id,
            num_instructions=target,
            options=GenerationOptions(seed=9, **options),  # type: ignore[arg-type]
        )
        return job.id


def accepted(job_id: uuid.UUID) -> list[tuple[int, int, str]]:
    with session_scope() as session:
        rows = session.execute(
            select(Instruction.round, Instruction.slot, Instruction.text)
            .where(Instruction.job_id == job_id, Instruction.accepted.is_(True))
            .order_by(Instruction.round, Instruction.slot)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def stream(job_id: uuid.UUID) -> int:
    """Drive the job as its round tasks would; the number of tasks it took."""
    next_round, tasks = 1, 0
    while next_round is not None:
        tasks += 1
        with leases.holding(job_id) as hold:
            result = round_driver.run_rounds(job_id, next_round, llm_for, hold, lambda _: None)
        next_round = result.next_round
        assert tasks < 100
    return tasks


def test_a_streamed_job_accepts_what_the_same_job_accepts_round_by_round(
    seed_set_id: uuid.UUID, llm: FakeLLMServer
) -> None:
    streamed = new_job(seed_set_id)
    stream(streamed)
    many_at_once = llm.max_in_flight
    one_by_one = new_job(seed_set_id)
    round_no = 1
    while (result := pipeline.run_round(one_by_one, round_no, llm_for)).next_round is not None:
        round_no = result.next_round
    assert accepted(streamed) == accepted(one_by_one)
    assert len(accepted(streamed)) == TARGET
    # More than one round's requests (5) were out at once.
    assert many_at_once > GenerationOptions().requests_per_round


def test_rounds_show_only_what_was_accepted_rounds_in_flight_earlier(
    seed_set_id: uuid.UUID, llm: FakeLLMServer
) -> None:
    job_id = new_job(seed_set_id, rounds_in_flight=3)
    stream(job_id)
    rounds_of = {text: round_no for round_no, _, text in accepted(job_id)}
    prompts = [r["prompt"] for r in llm.requests if "prompt" in r]
    assert prompts
    shown_late = []
    for prompt in prompts:
        shown = [t for t in rounds_of if t in prompt]
        # A prompt of round r may show round q's instructions only when q <= r - 3; prompts
        # are not labelled by round, so check the weaker, order-free consequence: no prompt
        # shows an instruction of one of the last three rounds the job stored.
        last = max(rounds_of.values())
        shown_late += [t for t in shown if rounds_of[t] > last - 3]
    assert not shown_late
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.instructions_complete


def test_stored_scores_are_rouge_scores_against_the_pool_each_candidate_met(
    seed_set_id: uuid.UUID, llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds are stored before their candidates' highest ROUGE-L is searched for; what is
    stored once the stream is over is rouge-score's against the seeds and every instruction
    accepted before the candidate (its round's earlier ones included)."""
    stored_later: list[int] = []
    store_scores = pipeline.store_scores

    def counted(pending: pipeline.PendingScores) -> None:
        with session_scope() as session:  # the round is committed without its scores
            stored_later.append(
                session.scalar(
                    select(func.count()).where(
                        Instruction.id.in_([row_id for row_id, _ in pending.rows]),
                        Instruction.max_rouge.is_(None),
                    )
                )
                or 0
            )
        store_scores(pending)

    monkeypatch.setattr(pipeline, "store_scores", counted)
    job_id = new_job(seed_set_id, rounds_in_flight=3)
    stream(job_id)
    assert stored_later and all(stored_later)
    assert scores_checked(job_id, seed_set_id) > TARGET


def scores_checked(job_id: uuid.UUID, seed_set_id: uuid.UUID) -> int:
    """Assert that every candidate compared with the pool has rouge-score's highest ROUGE-L
    against the seeds and every instruction accepted before it (its round's earlier ones
    included), and the nearest text; the number of candidates checked."""
    compared = {None, "near_duplicate", "over_target", "judge_dropped", "verb_cap"}
    with session_scope() as session:
        pool = [s.instruction for s in load_seed_tasks(session, seed_set_id)]
        rows = session.execute(
            select(Instruction.text, Instruction.reason, Instruction.max_rouge, Instruction.nearest)
            .where(Instruction.job_id == job_id, Instruction.variant == 0)
            .order_by(Instruction.round, Instruction.slot)
        ).all()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    checked = 0
    for text, reason, max_rouge, nearest in rows:
        if reason in compared:
            scores = [scorer.score(item, text)["rougeL"].fmeasure for item in pool]
            top = max(scores)
            assert (max_rouge, nearest) == (top, pool[scores.index(top)] if top else None)
            checked += 1
        if reason is None:
            pool.append(text)
    return checked


@pytest.mark.parametrize("mode", ["batched", "unnatural"])
def test_batched_and_unnatural_rounds_are_decided_first_and_scored_exactly_after(
    seed_set_id: uuid.UUID, mode: str
) -> None:
    """These modes decide with the threshold test alone, as paper mode does; the highest
    ROUGE-L and nearest text of every candidate are still rouge-score's once stored."""
    job_id = new_job(seed_set_id, target=30, mode=mode)
    stream(job_id)
    assert unscored(job_id) == 0
    assert scores_checked(job_id, seed_set_id) >= 30


def unscored(job_id: uuid.UUID) -> int:
    with session_scope() as session:
        return (
            session.scalar(
                select(func.count()).where(
                    Instruction.job_id == job_id,
                    Instruction.pool_items.is_not(None),
                    Instruction.max_rouge.is_(None),
                )
            )
            or 0
        )


def lose_score_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the worker died after each round's commit, before its scores were written."""
    monkeypatch.setattr(pipeline, "store_scores", lambda pending: None)


def test_scores_a_dead_worker_never_wrote_are_stored_before_the_job_completes(
    seed_set_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = new_job(seed_set_id, rounds_in_flight=3)
    with monkeypatch.context() as patch:
        lose_score_writes(patch)
        stream(job_id)
    assert unscored(job_id) > 0  # the last task's (each task stores what those before it left)
    # Steps 2-3 never ran here, so the job does not succeed, but its completion check has
    # stored every missing score, searched in the pool each candidate met.
    assert not completion.finalize_if_complete(job_id)
    assert unscored(job_id) == 0
    assert scores_checked(job_id, seed_set_id) > TARGET


def test_the_next_round_task_stores_the_scores_its_dead_predecessor_left(
    seed_set_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = new_job(seed_set_id, target=30, rounds_in_flight=3)
    with monkeypatch.context() as patch:
        lose_score_writes(patch)
        stream(job_id)
    left = unscored(job_id)
    assert left > 0
    with session_scope() as session:  # more instructions wanted: the job goes on
        job = session.get(Job, job_id)
        assert job is not None
        job.num_instructions, job.instructions_complete = TARGET, False
        next_round = job.rounds_completed + 1
    stored: list[int] = []
    store_missed = scores.store_missed_scores
    monkeypatch.setattr(scores, "store_missed_scores", lambda j: stored.append(store_missed(j)))
    with leases.holding(job_id) as hold:
        round_driver.run_rounds(job_id, next_round, llm_for, hold, lambda _: None)
    assert stored[0] == left
    assert unscored(job_id) == 0
    assert scores_checked(job_id, seed_set_id) > TARGET


def test_one_round_in_flight_is_the_papers_loop(seed_set_id: uuid.UUID, llm: FakeLLMServer) -> None:
    job_id = new_job(seed_set_id, rounds_in_flight=1)
    before = llm.max_in_flight
    llm.max_in_flight = 0
    stream(job_id)
    assert llm.max_in_flight <= GenerationOptions().requests_per_round
    llm.max_in_flight = max(before, llm.max_in_flight)
    assert len(accepted(job_id)) == TARGET


def test_the_round_that_reaches_the_target_gives_up_the_round_claim(
    seed_set_id: uuid.UUID,
) -> None:
    """Later rounds may still be out when one reaches the target: they will not be stored, so
    the job must not look as if a task held its next round (a watcher would wait for it)."""
    job_id = new_job(seed_set_id, target=3)
    with leases.holding(job_id) as hold:
        assert pipeline.start_round(job_id, 1, hold)
        planned = pipeline.prepare_round(job_id, 1)
        assert isinstance(planned, pipeline.PlannedRound)
        records = pipeline.send_round(llm_for, planned)
        pipeline.finish_round(job_id, planned, records, llm_for, hold_next=hold)
        with session_scope() as session:
            job = session.get(Job, job_id)
            assert job is not None and job.instructions_complete
            assert job.round_claim_token is None and job.round_claimed_until is None


def _no_llm(_: object) -> object:
    raise AssertionError("a journaled round must not be asked again")


def test_a_round_sent_again_after_its_task_died_takes_the_answers_it_had(
    seed_set_id: uuid.UUID, llm: FakeLLMServer
) -> None:
    """Rounds are stored in order, so an answered round may wait for an earlier one; a worker
    killed meanwhile must not make the next task pay for its answers again."""
    job_id = new_job(seed_set_id)
    assert pipeline.start_round(job_id, 1, leases.Hold(job_id))  # the job is running
    planned = pipeline.prepare_round(job_id, 1)
    assert isinstance(planned, pipeline.PlannedRound)
    first = pipeline.send_round(llm_for, planned)  # ... and the task dies before storing it
    sent = len(llm.requests)
    again = pipeline.prepare_round(job_id, 1)  # the task the sweeper sends plans it anew
    assert isinstance(again, pipeline.PlannedRound)
    records = pipeline.send_round(_no_llm, again)  # type: ignore[arg-type]
    assert len(llm.requests) == sent
    assert [r.response.text for r in records] == [r.response.text for r in first]  # type: ignore[union-attr]
    pipeline.finish_round(job_id, again, records, llm_for)
    with session_scope() as session:
        calls = session.scalar(
            select(func.count()).select_from(LLMCall).where(LLMCall.job_id == job_id)
        )
        journal = session.scalar(select(func.count()).select_from(LLMAnswer))
    assert calls == len(records)  # counted once
    assert journal == 0  # a stored round's journal is gone


def test_answers_of_a_dropped_round_are_counted_once_when_taken_again(
    seed_set_id: uuid.UUID, llm: FakeLLMServer
) -> None:
    job_id = new_job(seed_set_id)
    assert pipeline.start_round(job_id, 1, leases.Hold(job_id))  # the job is running
    planned = pipeline.prepare_round(job_id, 1)
    assert isinstance(planned, pipeline.PlannedRound)
    record_calls(job_id, pipeline.send_round(llm_for, planned))  # dropped unstored
    records = pipeline.send_round(_no_llm, planned)  # type: ignore[arg-type]
    pipeline.finish_round(job_id, planned, records, llm_for)
    with session_scope() as session:
        calls = session.scalar(
            select(func.count()).select_from(LLMCall).where(LLMCall.job_id == job_id)
        )
    assert calls == len(records)


def test_a_round_partly_answered_when_its_task_died_asks_only_for_the_rest(
    seed_set_id: uuid.UUID, llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each answer is journaled as it comes back, not once the whole round is in."""
    monkeypatch.setenv("SELFINSTRUCT_LLM_MAX_RETRIES", "0")  # the failure stays a failure
    get_settings.cache_clear()
    reset_llm_clients()
    job_id = new_job(seed_set_id)
    assert pipeline.start_round(job_id, 1, leases.Hold(job_id))
    planned = pipeline.prepare_round(job_id, 1)
    assert isinstance(planned, pipeline.PlannedRound)
    llm.fail_next(1)
    first = pipeline.send_round(llm_for, planned)
    assert sum(r.response is None for r in first) == 1
    sent = len(llm.requests)
    again = pipeline.send_round(llm_for, planned)
    assert len(llm.requests) - sent == 1
    assert all(r.response is not None for r in again)


def test_a_journaled_answer_keeps_the_attempts_it_took(
    seed_set_id: uuid.UUID, llm: FakeLLMServer
) -> None:
    job_id = new_job(seed_set_id)
    assert pipeline.start_round(job_id, 1, leases.Hold(job_id))
    planned = pipeline.prepare_round(job_id, 1)
    assert isinstance(planned, pipeline.PlannedRound)
    before = len(llm.requests)
    llm.fail_next(2, status=502)  # two attempts fail and are retried
    pipeline.send_round(llm_for, planned)  # ... and the task dies before storing the round
    sent = len(llm.requests) - before
    records = pipeline.send_round(_no_llm, planned)  # type: ignore[arg-type]
    assert sum(r.attempts for r in records) == len(records) + 2 == sent
    pipeline.finish_round(job_id, planned, records, llm_for)
    with session_scope() as session:
        stored = session.execute(
            select(LLMCall.attempts, LLMCall.attempt_errors).where(
                LLMCall.job_id == job_id, LLMCall.purpose == "instructions"
            )
        ).all()
    assert sum(attempts for attempts, _ in stored) == sent
    failed = sorted(errors for _, errors in stored if errors)
    assert failed in (["http_5xx=1", "http_5xx=1"], ["http_5xx=2"])


def test_answers_that_come_back_together_are_journaled_in_one_transaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Forty answers back at once while a write is slow take two transactions, not forty, and
    each waiter returns only once the transaction holding its answer is over."""
    import asyncio
    import threading
    import time

    written: list[list[int]] = []
    lock = threading.Lock()

    def slow_journal(answers: list[journal.JournalEntry]) -> None:
        time.sleep(0.05)  # a transaction under load
        with lock:
            written.append([entry.position for entry in answers])

    monkeypatch.setattr(journal, "_journal", slow_journal)
    job_id = uuid.uuid4()
    record = CallRecord("instructions", 1, None)

    async def answer(n: int) -> bool:
        await journal.keep(journal.JournalEntry(job_id, 1, n, record))
        with lock:
            return any(n in batch for batch in written)

    async def main() -> list[bool]:
        return await asyncio.gather(*(answer(n) for n in range(40)))

    assert all(asyncio.run(main()))
    assert sorted(n for batch in written for n in batch) == list(range(40))
    assert len(written) <= 2  # the first answer's write, then everything that came meanwhile


def test_a_small_job_sends_few_rounds_it_does_not_store(
    seed_set_id: uuid.UUID, llm: FakeLLMServer
) -> None:
    """Before the first round is stored, the driver guesses a round's yield high: a low guess
    sent the whole window at once, and a job of 60 dropped most of it unread."""
    from tests.support.fake_llm import prompt_kind

    job_id = new_job(seed_set_id)
    stream(job_id)
    sent = sum(prompt_kind(r["prompt"]) == "instructions" for r in llm.requests if "prompt" in r)
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        stored_rounds = job.rounds_completed
    per_round = GenerationOptions().requests_per_round
    assert stored_rounds * per_round <= sent <= (stored_rounds + 1) * per_round


def test_a_round_task_of_a_job_alone_sends_past_its_slice(
    seed_set_id: uuid.UUID, llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody waits for the process, so the slice (shortened here to none at all: the default
    30 s outlasts the job) is extended: the job takes as many tasks as with the default slice
    (a second one only near the target, when the rounds in flight brought too few)."""
    with_default = new_job(seed_set_id)
    tasks = stream(with_default)
    _set_status(with_default, JobStatus.SUCCEEDED)  # steps 2-3 do not run here
    monkeypatch.setattr(round_driver, "ROUND_SLICE_S", 0.0)
    job_id = new_job(seed_set_id)
    assert stream(job_id) == tasks <= 2
    assert accepted(job_id) == accepted(with_default)
    assert len(accepted(job_id)) == TARGET


def _set_status(job_id: uuid.UUID, status: JobStatus) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = status


def test_a_round_task_hands_over_after_its_slice_while_another_job_waits(
    seed_set_id: uuid.UUID, llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With another job queued the slice (none, as above) ends on time: each task sends one
    round and hands the next to a new message, and the job still accepts what it accepts in
    one task."""
    monkeypatch.setattr(round_driver, "ROUND_SLICE_S", 0.0)
    alone = new_job(seed_set_id)
    stream(alone)
    _set_status(alone, JobStatus.SUCCEEDED)  # steps 2-3 do not run here
    job_id = new_job(seed_set_id)
    new_job(seed_set_id)  # queued: it waits for a process
    assert stream(job_id) > 1
    assert accepted(job_id) == accepted(alone)


def test_a_slice_is_extended_while_its_job_runs_alone_up_to_the_longest(
    seed_set_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slices of 0.1 s and a longest of 0.3 s (production: 30 s and 300 s) to stay fast."""
    monkeypatch.setattr(slices, "LONGEST_S", 0.3)
    job_id = new_job(seed_set_id)
    alone = slices.Slice(job_id, 0.1)
    time.sleep(0.15)
    assert not alone.over()  # past its slice, but no other job: extended
    time.sleep(0.2)
    assert alone.over() and alone.over()  # past the longest: over, and it stays over
    new_job(seed_set_id)
    shared = slices.Slice(job_id, 0.1)
    assert not shared.over()
    time.sleep(0.15)
    assert shared.over()  # another job is queued: the slice ends on time


def test_the_round_log_line_splits_a_rounds_time_into_answering_and_waiting_in_order() -> None:
    """Round 2 is answered first but stored after round 1: its wait in order shows."""
    spent = round_driver._Spent()
    first, second = Future[list[CallRecord]](), Future[list[CallRecord]]()
    spent.sent(1, first)
    spent.sent(2, second)
    second.set_result([])
    time.sleep(0.2)
    first.set_result([])
    spent.stored(1)
    spent.stored(2)
    line = str(spent)
    assert line.startswith("2 rounds stored in ")
    times = re.search(r"answering ([\d.]+) s, then until stored ([\d.]+) s", line)
    assert times is not None, line
    answering, in_order = times.groups()
    assert float(answering) == pytest.approx(0.1, abs=0.06)  # (0.2 + 0) / 2
    assert float(in_order) == pytest.approx(0.1, abs=0.06)  # (0 + 0.2) / 2
