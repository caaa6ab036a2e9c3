"""Step 1 as a stream: a job's round task keeps `rounds_in_flight` rounds out at once.

Round r's prompts show the machine instructions accepted up to round r - rounds_in_flight
(`pipeline.prepare_round`), so they are known as soon as that round is stored; rounds are judged
and stored strictly in order (the reorder buffer is the queue of rounds in flight), each against
everything accepted before it. What a job accepts therefore depends on its options and the
model's answers only, never on which answer came back first, and a rerun against a
deterministic backend repeats it. Each stored round's instructions go to steps 2 and 3 at once.

Near the target no new round goes out while the rounds in flight are expected (at the job's
acceptance rate so far) to bring enough. The task stops sending after `ROUND_SLICE_S` (longer
while no other job is active: `slices`), stores what is in flight and hands the next round to a
new message, so that other jobs' rounds get a worker too; a round's claim passes from one stored
round to the next inside the task, so a sweeper never sends a round this task is already
waiting for.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import session_scope
from app.models import Job
from app.selfinstruct.options import GenerationOptions
from app.services import budget, instances, leases, pipeline, response_cache, scores
from app.services.calls import CallRecord, LLMFactory, record_calls
from app.services.completion import accepted_count
from app.services.pipeline import PlannedRound, RoundResult
from app.services.scores import PendingScores
from app.services.slices import Slice

log = logging.getLogger(__name__)

ROUND_SLICE_S = 30.0  # how long one task keeps sending rounds before it hands over
COALESCE_S = 1.0  # the longest stored instructions wait to fill an instance task

Batches = Callable[[list[list[uuid.UUID]]], None]


def run_rounds(
    job_id: uuid.UUID,
    first: int,
    llm_factory: LLMFactory,
    hold: leases.Hold,
    send_batches: Batches,
) -> RoundResult:
    """Rounds `first`, `first` + 1, ... of the job with several in flight; each stored round's
    accepted instructions go to `send_batches` within COALESCE_S. Returns what follows the
    last stored round.

    A failure of round `first` raises, for the task to retry it; a failure of a later one
    ends the stream there, and the returned next round is that one (a new message, retried as
    a first round).
    """
    llm_factory = response_cache.for_job(job_id, llm_factory)
    if not pipeline.start_round(job_id, first, hold):
        return RoundResult()
    scores.store_missed_scores(job_id)  # a task before this one may have died before its write
    planned = pipeline.prepare_round(job_id, first)
    if isinstance(planned, RoundResult):
        return planned
    if budget.budgeted(planned.options) and _budget_leaves_no_round(job_id, planned.options):
        return RoundResult()
    depth = pipeline.rounds_in_flight(planned.options)
    if depth == 1:  # the paper's loop (and Batch API jobs): one round per task
        records = pipeline.answer_round(job_id, planned, llm_factory)
        return pipeline.finish_round(job_id, planned, records, llm_factory)
    pool = ThreadPoolExecutor(depth, thread_name_prefix=f"rounds-{str(job_id)[:8]}")
    in_flight: InFlight = deque()
    stored = _InstanceBuffer(send_batches)
    unscored: deque[PendingScores] = deque()
    try:
        return _stream(job_id, planned, depth, llm_factory, hold, stored, pool, in_flight, unscored)
    finally:
        stored.flush()
        while unscored:
            pipeline.store_scores(unscored.popleft())
        _drop(job_id, in_flight)
        pool.shutdown(wait=False)


class _InstanceBuffer:
    """Accepted instructions of stored rounds, sent to steps 2 and 3 in tasks of
    `instructions_per_instance_task`: a round brings a dozen or so, and a task's requests in
    flight are as many as its instructions, so one task per round would leave a large backend
    idle. Nothing waits longer than COALESCE_S (or past the end of the stream)."""

    def __init__(self, send_batches: Batches) -> None:
        self._send = send_batches
        self._ids: list[uuid.UUID] = []
        self._since = 0.0

    def add(self, batches: list[list[uuid.UUID]]) -> None:
        if not self._ids:
            self._since = time.monotonic()
        self._ids.extend(i for batch in batches for i in batch)
        full = len(self._ids) >= get_settings().instructions_per_instance_task
        if full or time.monotonic() - self._since >= COALESCE_S:
            self.flush()

    def flush(self) -> None:
        if self._ids:
            ids, self._ids = self._ids, []
            self._send(pipeline.instance_batches(ids))


InFlight = deque[tuple[PlannedRound, Future[list[CallRecord]]]]


def _stream(
    job_id: uuid.UUID,
    first: PlannedRound,
    depth: int,
    llm_factory: LLMFactory,
    hold: leases.Hold,
    stored: _InstanceBuffer,
    pool: ThreadPoolExecutor,
    in_flight: InFlight,
    unscored: deque[PendingScores],
) -> RoundResult:
    """Stored rounds' ROUGE-L scores (`unscored`) are stored while the next round's answers
    are still out: storing that round waits for no score."""
    round_slice = Slice(job_id, ROUND_SLICE_S)
    spent = _Spent()

    def send(planned: PlannedRound) -> None:
        context = contextvars.copy_context()  # the job id, for the backend's fair shares
        answers = pool.submit(context.run, pipeline.send_round, llm_factory, planned)
        spent.sent(planned.round_no, answers)
        in_flight.append((planned, answers))

    send(first)
    next_round, planning = first.round_no + 1, True
    result = RoundResult(next_round=first.round_no)
    while in_flight:
        while planning and len(in_flight) < depth and not round_slice.over():
            with spent("planning"):
                if not _worth_another(job_id, len(in_flight), first.options, result):
                    break
                planned = pipeline.prepare_round(job_id, next_round)
            if isinstance(planned, RoundResult):  # finished, or over a budget
                planning = False
                break
            send(planned)
            next_round += 1
        planned, answers = in_flight.popleft()
        try:
            while unscored and not answers.done():
                with spent("storing scores"):
                    pipeline.store_scores(unscored.popleft())
            with spent("waiting for answers"):
                records = answers.result()
            hold_next = hold if in_flight else None
            with spent("storing"):
                result = pipeline.finish_round(
                    job_id, planned, records, llm_factory, hold_next, defer_scores=True
                )
            if result.scores is not None:
                unscored.append(result.scores)
                result.scores = None
        except Exception:
            if planned.round_no == first.round_no:
                raise
            log.warning(
                "job %s: round %s failed; a new task sends it again",
                job_id,
                planned.round_no,
                exc_info=True,
            )
            return RoundResult(next_round=planned.round_no)
        spent.stored(planned.round_no)
        with spent("sending instance tasks"):
            stored.add(result.instance_batches)
        result.instance_batches = []
        if result.finished or result.next_round is None:
            break
    log.info("job %s: %s", job_id, spent)
    return result


class _Spent:
    """Where a stream's time went, for one log line per task: a job whose rounds spend most of
    their time storing or planning is bounded by its writer, not by the backend."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.rounds = 0
        self.seconds: dict[str, float] = {}
        self._phase = ""
        # A round's time out: answering (sent until its last answer) and waiting for the
        # rounds before it to be stored (in order), summed over stored rounds.
        self._answering = self._in_order = 0.0
        self._times: dict[int, list[float]] = {}  # round number -> [sent, last answer back]

    def sent(self, round_no: int, answers: Future[list[CallRecord]]) -> None:
        times = self._times[round_no] = [time.monotonic()]
        answers.add_done_callback(lambda _: times.append(time.monotonic()))

    def stored(self, round_no: int) -> None:
        self.rounds += 1
        sent_at, *answered = self._times.pop(round_no, [time.monotonic()])
        done_at = answered[0] if answered else time.monotonic()
        self._answering += done_at - sent_at
        self._in_order += time.monotonic() - done_at

    def __call__(self, phase: str) -> _Spent:
        self._phase = phase
        return self

    def __enter__(self) -> None:
        self._since = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        elapsed = time.perf_counter() - self._since
        self.seconds[self._phase] = self.seconds.get(self._phase, 0.0) + elapsed

    def __str__(self) -> str:
        wall = time.monotonic() - self.started
        parts = ", ".join(f"{phase} {s:.1f} s" for phase, s in self.seconds.items())
        per_round = max(1, self.rounds)
        return (
            f"{self.rounds} rounds stored in {wall:.1f} s ({parts}); a round's mean time out: "
            f"answering {self._answering / per_round:.1f} s, then until stored "
            f"{self._in_order / per_round:.1f} s"
        )


def _first_guess(options: GenerationOptions) -> float:
    """Accepted instructions per round before the job has stored one: the most a round can
    bring (a paper prompt of 8 instructions is continued up to number 15, a batched one asks for
    tasks_per_request, an Unnatural one for one). Optimistic on purpose: a low guess sends the
    whole window before the first answer, and a small job then drops most of it unread; a high
    one sends fewer rounds, and the first stored round, one latency later, corrects it."""
    if options.mode == "batched":
        asked = options.tasks_per_request
    elif options.mode == "unnatural":
        asked = 1
    else:  # the stop sequences end the list at number 16
        asked = max(1, 15 - options.prompt_instructions)
    return float(asked * options.requests_per_round)


def _worth_another(
    job_id: uuid.UUID, rounds_out: int, options: GenerationOptions, last: RoundResult
) -> bool:
    """False when the rounds in flight are expected to bring the job to its target, or when
    one more round would not fit its token or request budget. `last`: the round this stream
    stored last; its counts spare a read of the job (a cancel is seen when the next round is
    planned), except under a budget, which other tasks' requests use up too."""
    if last.accepted_total is not None and not budget.budgeted(options):
        accepted, rounds_done = last.accepted_total, last.rounds_completed
        per_round = accepted / rounds_done if rounds_done else _first_guess(options)
        return accepted + per_round * rounds_out < last.target
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.instructions_complete:
            return False
        accepted = accepted_count(session, job_id)
        rounds_done, target = job.rounds_completed, job.num_instructions
        if budget.budgeted(options) and _over_budget(session, job, options, rounds_out, accepted):
            return False
    per_round = accepted / rounds_done if rounds_done else _first_guess(options)
    return accepted + per_round * rounds_out < target


def _over_budget(
    session: Session, job: Job, options: GenerationOptions, rounds_out: int, accepted: int
) -> str | None:
    """The budget another round would pass (`budget.round_over`). Before a round is stored
    nothing tells what one costs: the stream's first round goes out alone."""
    if not job.rounds_completed:  # only the stream's first round may go out
        if not rounds_out:
            return None
        return "token_budget" if options.max_total_tokens is not None else "request_budget"
    return budget.round_over(
        session,
        job.id,
        options,
        rounds_done=job.rounds_completed,
        rounds_out=rounds_out,
        accepted=accepted,
        instruction_guess=instances.instruction_cost(options),
    )


def _budget_leaves_no_round(job_id: uuid.UUID, options: GenerationOptions) -> bool:
    """A stream's first round of a budgeted job: when what is already on its way leaves no
    room for it, the job takes no more instructions (and succeeds with what it has)."""
    with session_scope() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None:
            return True
        reason = _over_budget(session, job, options, 0, accepted_count(session, job_id))
        if reason is not None:
            budget.stop_job(job, reason)
            log.info("job %s: no room for another round in its %s", job_id, reason)
        return reason is not None


def _drop(job_id: uuid.UUID, in_flight: InFlight) -> None:
    """Rounds that will not be stored: their requests were sent (and are paid for), so wait for
    them and record the calls, as budgets and progress count every request."""
    if in_flight:
        log.info("job %s: %d rounds in flight are not needed", job_id, len(in_flight))
    while in_flight:
        _, answers = in_flight.popleft()
        try:
            record_calls(job_id, answers.result())
        except Exception:  # a permanent error or a database outage: nothing more to record
            log.warning("job %s: calls of a dropped round not recorded", job_id, exc_info=True)
