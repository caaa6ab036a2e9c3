"""Step 1 as a stream: a job's round task keeps `rounds_in_flight` rounds out at once.

Round r's prompts show the machine instructions accepted up to round r - rounds_in_flight
(`pipeline.prepare_round`), so they are known as soon as that round is stored; rounds are judged
and stored strictly in order (the reorder buffer is the queue of rounds in flight), each against
everything accepted before it. What a job accepts therefore depends on its options and the
model's answers only, never on which answer came back first, and a rerun against a
deterministic backend repeats it. Each stored round's instructions go to steps 2 and 3 at once.

Near the target no new round goes out while the rounds in flight are expected (at the job's
acceptance rate so far) to bring enough. The task stops sending after `ROUND_SLICE_S`, stores
what is in flight and hands the next round to a new message, so that other jobs' rounds get a
worker too; a round's claim passes from one stored round to the next inside the task, so a
sweeper never sends a round this task is already waiting for.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy import func, select

from app.db import session_scope
from app.models import Instruction, Job
from app.services import leases, pipeline
from app.services.pipeline import LLMFactory, PlannedRound, RoundResult

log = logging.getLogger(__name__)

ROUND_SLICE_S = 30.0  # how long one task keeps sending rounds before it hands over

Batches = Callable[[list[list[uuid.UUID]]], None]


def run_rounds(
    job_id: uuid.UUID,
    first: int,
    llm_factory: LLMFactory,
    hold: leases.Hold,
    send_batches: Batches,
) -> RoundResult:
    """Rounds `first`, `first` + 1, ... of the job with several in flight; each stored round's
    instance batches go to `send_batches` at once. Returns what follows the last stored round.

    A failure of round `first` raises, for the task to retry it; a failure of a later one
    ends the stream there, and the returned next round is that one (a new message, retried as
    a first round).
    """
    if not pipeline.start_round(job_id, first, hold):
        return RoundResult()
    planned = pipeline.prepare_round(job_id, first)
    if isinstance(planned, RoundResult):
        return planned
    depth = pipeline.rounds_in_flight(planned.options)
    if planned.options.batch_api or depth == 1:
        return _one_round(job_id, planned, llm_factory)
    pool = ThreadPoolExecutor(depth, thread_name_prefix=f"rounds-{str(job_id)[:8]}")
    try:
        return _stream(job_id, planned, depth, llm_factory, hold, send_batches, pool)
    finally:  # rounds dropped on the way out finish in the background; nobody waits for them
        pool.shutdown(wait=False, cancel_futures=True)


def _one_round(job_id: uuid.UUID, planned: PlannedRound, llm_factory: LLMFactory) -> RoundResult:
    records = pipeline.send_round(llm_factory, planned)
    return pipeline.finish_round(job_id, planned, records, llm_factory)


def _stream(
    job_id: uuid.UUID,
    first: PlannedRound,
    depth: int,
    llm_factory: LLMFactory,
    hold: leases.Hold,
    send_batches: Batches,
    pool: ThreadPoolExecutor,
) -> RoundResult:
    deadline = time.monotonic() + ROUND_SLICE_S
    in_flight: deque[tuple[PlannedRound, Future[list[pipeline._CallRecord]]]] = deque()

    def send(planned: PlannedRound) -> None:
        context = contextvars.copy_context()  # the job id, for the backend's fair shares
        in_flight.append(
            (planned, pool.submit(context.run, pipeline.send_round, llm_factory, planned))
        )

    send(first)
    next_round, planning = first.round_no + 1, True
    result = RoundResult(next_round=first.round_no)
    while in_flight:
        while planning and len(in_flight) < depth and time.monotonic() < deadline:
            if not _worth_another(job_id, len(in_flight)):
                break
            planned = pipeline.prepare_round(job_id, next_round)
            if isinstance(planned, RoundResult):  # finished, or over a budget
                planning = False
                break
            send(planned)
            next_round += 1
        planned, answers = in_flight.popleft()
        try:
            records = answers.result()
            hold_next = hold if in_flight else None
            result = pipeline.finish_round(job_id, planned, records, llm_factory, hold_next)
        except Exception:
            if planned.round_no == first.round_no:
                raise
            log.warning(
                "job %s: round %s failed; a new task sends it again",
                job_id,
                planned.round_no,
                exc_info=True,
            )
            return _abandon(job_id, in_flight, RoundResult(next_round=planned.round_no))
        send_batches(result.instance_batches)
        result.instance_batches = []
        if result.finished or result.next_round is None:
            return _abandon(job_id, in_flight, result)
    return result


def _worth_another(job_id: uuid.UUID, rounds_out: int) -> bool:
    """False when the rounds in flight are expected to bring the job to its target."""
    if rounds_out == 0:
        return True
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.instructions_complete:
            return False
        accepted = session.scalar(
            select(func.count())
            .select_from(Instruction)
            .where(
                Instruction.job_id == job_id,
                Instruction.accepted.is_(True),
                Instruction.variant == 0,
            )
        )
        rounds_done, target = job.rounds_completed, job.num_instructions
    if not rounds_done:
        return True
    expected = (accepted or 0) / rounds_done * rounds_out
    return (accepted or 0) + expected < target


def _abandon(
    job_id: uuid.UUID,
    in_flight: deque[tuple[PlannedRound, Future[list[pipeline._CallRecord]]]],
    result: RoundResult,
) -> RoundResult:
    """Stop waiting for rounds that will not be stored; their answers are dropped."""
    if in_flight:
        log.info("job %s: dropping %d rounds in flight", job_id, len(in_flight))
    for _, answers in in_flight:
        answers.cancel()
    in_flight.clear()
    return result
