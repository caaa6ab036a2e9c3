"""The bootstrap loop's use-cases: load state, call the pure core and the LLM, persist. This
module holds step 1 (instruction rounds; app/services/round_driver.py keeps several in flight),
outages and job completion; steps 2 and 3 are in app/services/instances.py, budgets in
app/services/budget.py.

Each function is one idempotent step keyed by the database: a redelivered or duplicated task finds
its work already committed (or a newer round in place) and does nothing. Commits happen here, in
short transactions around the slow LLM calls, never across them.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import random
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import session_scope
from app.llm.aio import run_sync
from app.llm.base import (
    LLMClient,
    LLMError,
    LLMRequest,
    LLMResponse,
    LLMTransientError,
    attempt_errors_text,
    parse_attempt_errors,
)
from app.models import (
    Instance,
    InstancesState,
    Instruction,
    Job,
    JobStatus,
    LLMAnswer,
    LLMCall,
)
from app.selfinstruct.balance import (
    count_verbs,
    seed_weights,
    steering_rounds,
    steers_on_instances,
)
from app.selfinstruct.batched import accept_batched_round, batched_stop, plan_batched_round
from app.selfinstruct.judges import (
    InstructionVerdict,
    build_instruction_judge_prompt,
    parse_instruction_verdict,
)
from app.selfinstruct.options import (
    INSTRUCTION_STOP,
    GenerationOptions,
    InstructionJudge,
    JudgeStep,
    judge_options,
)
from app.selfinstruct.rouge import TOKENIZERS, RougeLIndex
from app.selfinstruct.rounds import (
    accept_round,
    judgeable,
    plan_round,
    prompt_seeds,
)
from app.selfinstruct.sanitize import clean_completion, clean_text, completion_char_cap
from app.selfinstruct.types import (
    CandidateDecision,
    Completion,
    SeedTask,
)
from app.selfinstruct.unnatural import (
    accept_unnatural_round,
    core_stop,
    plan_unnatural_round,
)
from app.services import batches, budget, leases, response_cache
from app.services.balance import mix_so_far, undecided_through
from app.services.budget import job_usage
from app.services.coalesce import CoalescingWriter
from app.services.seed_sets import load_seed_tasks

log = logging.getLogger(__name__)

LLMFactory = Callable[[GenerationOptions], LLMClient]


@dataclass
class RoundResult:
    """What the caller must enqueue once the round's transaction has committed."""

    instance_batches: list[list[uuid.UUID]] = field(default_factory=list)
    next_round: int | None = None
    finished: bool = False
    # The next round waits for the queued instance tasks (balance steering needs their results).
    next_round_after_instances: bool = False
    # Once stored: the job's accepted instructions and rounds, and its target, so that a
    # stream can tell whether to send another round without reading the job again.
    accepted_total: int | None = None
    rounds_completed: int = 0
    target: int = 0


@dataclass
class CallRecord:
    purpose: str
    round: int | None
    response: LLMResponse | None
    error: str | None = None
    latency_s: float = 0.0
    prompt_sha256: str | None = None
    recorded: bool = False  # taken from the journal, already in llm_calls
    failed_attempts: tuple[str, ...] = ()  # of a failed call (an answer carries its own)

    @property
    def attempt_kinds(self) -> tuple[str, ...]:
        """The kind of each attempt that failed, retried or last."""
        return self.response.failed_attempts if self.response else self.failed_attempts

    @property
    def attempts(self) -> int:
        """HTTP attempts: the failed ones, and the one that answered (none from the cache)."""
        if self.response is not None and self.response.cached:
            return 0
        return max(1, len(self.attempt_kinds) + (self.response is not None))

    def row(self, job_id: uuid.UUID) -> LLMCall:
        """The stored call; what the server sent is bounded to what the columns hold."""
        r = self.response
        return LLMCall(
            job_id=job_id,
            purpose=self.purpose,
            round=self.round,
            ok=r is not None,
            finish_reason=clean_text(r.finish_reason)[:32] if r and r.finish_reason else None,
            prompt_tokens=_count(r.prompt_tokens) if r else 0,
            completion_tokens=_count(r.completion_tokens) if r else 0,
            latency_ms=round((r.latency_s if r else self.latency_s) * 1000),
            error=self.error,
            prompt_sha256=self.prompt_sha256,
            attempts=self.attempts,
            attempt_errors=attempt_errors_text(self.attempt_kinds),
            cached=bool(r and r.cached),
        )


_MAX_COUNT = 2**31 - 1  # an INTEGER column


def _count(tokens: int) -> int:
    """A token count as a server reported it, within the column's range."""
    return min(max(int(tokens), 0), _MAX_COUNT)


def cleaned_answer(answer: LLMResponse, request: LLMRequest) -> LLMResponse:
    """The answer as the pure core's parsers may see it (see app/selfinstruct/sanitize.py)."""
    cap = completion_char_cap(request.max_tokens)
    completion = clean_completion(answer.text, answer.finish_reason, max_chars=cap)
    return replace(answer, text=completion.text, finish_reason=completion.finish_reason)


def error_text(error: Exception) -> str:
    return clean_text(str(error)[:2000])


def _calls(
    llm: LLMClient,
    requests: Sequence[LLMRequest],
    purpose: str,
    round_no: int | None,
    concurrency: int,
) -> list[CallRecord]:
    """Send the requests together; transient failures become records, a permanent one raises."""
    return call_records(llm.complete_many(requests, concurrency), requests, purpose, round_no)


def call_records(
    answers: Sequence[LLMResponse | LLMError],
    requests: Sequence[LLMRequest],
    purpose: str,
    round_no: int | None,
) -> list[CallRecord]:
    records = []
    for answer, request in zip(answers, requests, strict=True):
        digest = prompt_sha256(request.prompt)
        if isinstance(answer, LLMResponse):
            cleaned = cleaned_answer(answer, request)
            records.append(CallRecord(purpose, round_no, cleaned, prompt_sha256=digest))
            continue
        if not isinstance(answer, LLMTransientError):
            raise answer
        records.append(
            CallRecord(
                purpose,
                round_no,
                None,
                error_text(answer),
                answer.latency_s,
                digest,
                failed_attempts=answer.failed_attempts,
            )
        )
    return records


def prompt_sha256(prompt: str) -> str:
    """The same digest as ever for any valid text; a stray surrogate cannot make it raise."""
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()


# --- the per-process ROUGE index cache ---------------------------------------------------------
# Rebuilding a job's index means re-tokenising every seed and accepted instruction. A worker keeps
# the index of the jobs it serves; when another worker has moved the job on, it adds only the
# rounds it missed (with several workers, rounds alternate between them, and a full rebuild per
# round at 40K instructions took most of a paper-scale job's time).


@dataclass
class _JobIndex:
    rounds_completed: int
    index: RougeLIndex
    machine_texts: list[str]
    verbs: Counter[str] | None  # accepted instructions per root verb, when the job caps them
    text_rounds: list[int] = field(default_factory=list)  # the round of each machine text

    def add(self, rows: Sequence[tuple[int, str]]) -> None:
        self.machine_texts.extend(text for _, text in rows)
        self.text_rounds.extend(round_no for round_no, _ in rows)

    def pool_through(self, round_no: int) -> list[str]:
        """The machine instructions accepted in rounds up to `round_no`, in pool order."""
        return self.machine_texts[: bisect.bisect_right(self.text_rounds, round_no)]


_indexes: dict[uuid.UUID, _JobIndex] = {}


def _accepted_texts(
    session: Session, job_id: uuid.UUID, after_round: int = 0
) -> list[tuple[int, str]]:
    """Accepted instructions (round, text) in pool order (round, then slot), from `after_round`
    + 1 on."""
    return list(
        session.execute(  # rows unpack as (round, text)
            select(Instruction.round, Instruction.text)
            .where(
                Instruction.job_id == job_id,
                Instruction.accepted.is_(True),
                Instruction.variant == 0,
                Instruction.round > after_round,
            )
            .order_by(Instruction.round, Instruction.slot)
        )
    )  # type: ignore[arg-type]


def _job_index(
    session: Session, job: Job, seed_texts: Sequence[str], options: GenerationOptions
) -> _JobIndex:
    cached = _indexes.get(job.id)
    if cached is not None and cached.rounds_completed == job.rounds_completed:
        return cached  # a round's texts commit with its count: nothing was missed
    if cached is not None and cached.rounds_completed < job.rounds_completed:
        missed = _accepted_texts(session, job.id, after_round=cached.rounds_completed)
        for _, text in missed:
            cached.index.add(text)
        cached.add(missed)
        if cached.verbs is not None:
            cached.verbs.update(count_verbs([text for _, text in missed]))
        cached.rounds_completed = job.rounds_completed
        return cached
    rows = _accepted_texts(session, job.id)
    machine = [text for _, text in rows]
    tokenizer = TOKENIZERS[options.dedupe_tokenizer]
    index = RougeLIndex([*seed_texts, *machine], tokenizer=tokenizer)
    capped = options.balance is not None and options.balance.max_per_verb is not None
    verbs = count_verbs(machine) if capped else None
    cached = _JobIndex(job.rounds_completed, index, [], verbs)
    cached.add(rows)
    _indexes[job.id] = cached
    return cached


def forget_job_index(job_id: uuid.UUID) -> None:
    _indexes.pop(job_id, None)


# --- step 1: one instruction round ---------------------------------------------------------------


def run_round(
    job_id: uuid.UUID, round_no: int, llm_factory: LLMFactory, hold: leases.Hold | None = None
) -> RoundResult:
    """Step 1 for one round. `hold` is the calling task's (its claims are renewed while it
    runs); without one, the call holds the round itself for its duration."""
    if hold is None:
        with leases.holding(job_id) as own:
            return run_round(job_id, round_no, llm_factory, own)
    llm_factory = response_cache.for_job(job_id, llm_factory)
    if not start_round(job_id, round_no, hold):
        return RoundResult()
    planned = prepare_round(job_id, round_no)
    if isinstance(planned, RoundResult):
        return planned
    return finish_round(job_id, planned, answer_round(job_id, planned, llm_factory), llm_factory)


def answer_round(
    job_id: uuid.UUID, planned: PlannedRound, llm_factory: LLMFactory
) -> list[CallRecord]:
    """The round's answers: online, or from its Batch API batch (BatchPending until done)."""
    if not planned.options.batch_api:
        return send_round(llm_factory, planned)
    key = f"round {planned.round_no}"
    answers = batches.collect(job_id, key, planned.requests, planned.options)
    return call_records(answers, planned.requests, "instructions", planned.round_no)


@dataclass
class PlannedRound:
    """A round's requests, decided before they are sent (see `prepare_round`)."""

    round_no: int
    options: GenerationOptions
    requests: list[LLMRequest]
    dedupe_s: float
    job_id: uuid.UUID | None = None  # set: the round's answers are journaled until it is stored


def prepare_round(job_id: uuid.UUID, round_no: int) -> PlannedRound | RoundResult:
    """The round's prompts: seeds and the machine instructions accepted up to round
    `round_no - rounds_in_flight`, drawn with the round's own RNG, so that a round's requests
    are the same whenever (and in whichever task) it is planned."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or JobStatus(job.status).finished:
            return RoundResult(finished=True)
        options = GenerationOptions.model_validate(job.options)
        if stop_for_budget(session, job, options):
            return RoundResult()
        seeds = load_seed_tasks(session, job.seed_set_id)
        seed_texts = [s.instruction for s in seeds]
        dedupe_started = time.perf_counter()
        state = _job_index(session, job, seed_texts, options)
        dedupe_s = time.perf_counter() - dedupe_started
        rng = random.Random(f"{job.rng_seed}:{round_no}")
        if options.mode == "batched":
            shown = (
                [s for s in seeds if s.is_classification] if options.classification_only else seeds
            )
            prompts = plan_batched_round(shown, options, rng)
        elif options.mode == "unnatural":
            prompts = plan_unnatural_round(seeds, options, rng)
        else:
            shown = prompt_seeds(seeds, options)
            weights = _steering_weights(session, job_id, round_no, shown, options)
            pool = state.pool_through(round_no - rounds_in_flight(options))
            prompts = plan_round([s.instruction for s in shown], pool, options, rng, weights)
    requests = [
        LLMRequest(
            prompt=p,
            max_tokens=_round_max_tokens(options),
            temperature=options.temperature,
            top_p=options.top_p,
            presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty,
            stop=_round_stop(options),
        )
        for p in prompts
    ]
    return PlannedRound(round_no, options, requests, dedupe_s, job_id)


class InstancesPending(Exception):
    """A balanced round is steered by steps 2 and 3 of earlier rounds that are still running:
    send the round again after `poll_after_s` (a poll, not a failure)."""

    poll_after_s = 1.0

    def __init__(self, job_id: uuid.UUID, round_no: int, undecided: int) -> None:
        super().__init__(
            f"job {job_id}: round {round_no} waits for steps 2 and 3 of {undecided} "
            "instructions of earlier rounds"
        )


def _steering_weights(
    session: Session,
    job_id: uuid.UUID,
    round_no: int,
    shown: Sequence[SeedTask],
    options: GenerationOptions,
) -> list[float] | None:
    """Seed weights of a balanced job, from the mix of a fixed set of earlier rounds once steps
    2 and 3 have decided all of them (InstancesPending until then): read whenever the round
    is planned, the mix would depend on how far the instance tasks had got, and a rerun would
    ask for something else."""
    if options.balance is None or not steers_on_instances(options.balance):
        return None  # no share targets (a verb cap alone weighs no seeds)
    through = steering_rounds(round_no)
    undecided = undecided_through(session, job_id, through) if through else 0
    if undecided:
        raise InstancesPending(job_id, round_no, undecided)
    return seed_weights(shown, options.balance, mix_so_far(session, job_id, through_round=through))


def rounds_in_flight(options: GenerationOptions) -> int:
    """How many rounds a job keeps in flight: its option, but 1 where the next round depends on
    more than the accepted pool (balance steering reads the instances of earlier rounds) or
    where a round waits for a Batch API batch anyway."""
    if options.batch_api or options.balance is not None:
        return 1
    return options.rounds_in_flight


def send_round(llm_factory: LLMFactory, planned: PlannedRound) -> list[CallRecord]:
    """The round's answers. Those journaled for it by a task that died before storing it are
    taken instead of asking again (the same prompts: a round is planned the same whenever it
    is); each answer that comes back is journaled at once, until the round is stored, so a
    worker killed mid-round loses only the requests it still had out."""
    kept = _journaled(planned)
    if kept:
        log.info("round %d: %d answers taken from the journal", planned.round_no, len(kept))
    missing = [n for n in range(len(planned.requests)) if n not in kept]
    if missing:
        kept.update(run_sync(_answer_and_journal(llm_factory(planned.options), planned, missing)))
    return [kept[n] for n in range(len(planned.requests))]


async def _answer_and_journal(
    llm: LLMClient, planned: PlannedRound, positions: Sequence[int]
) -> dict[int, CallRecord]:
    """The round's requests at `positions`, all at once; a transient failure becomes a record,
    a permanent one raises."""

    async def one(position: int) -> tuple[int, CallRecord]:
        request = planned.requests[position]
        answer: LLMResponse | LLMError
        try:
            answer = await llm.acomplete(request)
        except LLMError as exc:
            answer = exc
        (record,) = call_records([answer], [request], "instructions", planned.round_no)
        if record.response is not None:
            await _journal_writer().put((planned, position, record))
        return position, record

    return dict(await asyncio.gather(*(one(n) for n in positions)))


_journal_writers: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, CoalescingWriter[tuple[PlannedRound, int, CallRecord]]
] = weakref.WeakKeyDictionary()


def _journal_writer() -> CoalescingWriter[tuple[PlannedRound, int, CallRecord]]:
    """The running loop's journal writer (a forked child's loop gets its own): answers that
    come back while a journal write runs go in the next one, together."""
    loop = asyncio.get_running_loop()
    writer = _journal_writers.get(loop)
    if writer is None:
        writer = _journal_writers[loop] = CoalescingWriter(_journal)
    return writer


def _journaled(planned: PlannedRound) -> dict[int, CallRecord]:
    """The journaled answers of the round whose prompt is the one planned now, by position."""
    if planned.job_id is None:
        return {}
    digests = [prompt_sha256(r.prompt) for r in planned.requests]
    try:
        with session_scope() as session:
            rows = session.scalars(
                select(LLMAnswer).where(
                    LLMAnswer.job_id == planned.job_id, LLMAnswer.round == planned.round_no
                )
            ).all()
            return {
                row.position: CallRecord(
                    "instructions",
                    planned.round_no,
                    LLMResponse(
                        row.text,
                        row.finish_reason,
                        row.prompt_tokens,
                        row.completion_tokens,
                        row.latency_ms / 1000,
                        _kinds(parse_attempt_errors(row.attempt_errors)),
                        row.cached,
                    ),
                    prompt_sha256=row.prompt_sha256,
                    recorded=row.recorded,
                )
                for row in rows
                if row.position < len(digests) and row.prompt_sha256 == digests[row.position]
            }
    except Exception:  # a journal is an optimisation: without it the round is asked again
        log.warning("round %d: journal not read", planned.round_no, exc_info=True)
        return {}


def _kinds(counts: Counter[str]) -> tuple[str, ...]:
    """Failed attempts as a tuple of kinds again, from their stored counts."""
    return tuple(kind for kind, n in sorted(counts.items()) for _ in range(n))


def _journal(answers: Sequence[tuple[PlannedRound, int, CallRecord]]) -> None:
    """Keep these answers (round, position, record) until their rounds are stored, in one
    transaction (best effort, like `_journaled`)."""
    kept = [
        (planned, n, r)
        for planned, n, r in answers
        if planned.job_id is not None and r.response is not None and r.prompt_sha256
    ]
    if not kept:
        return
    positions: dict[tuple[uuid.UUID, int], list[int]] = {}
    for planned, n, _ in kept:
        positions.setdefault((planned.job_id, planned.round_no), []).append(n)  # type: ignore[arg-type]
    try:
        with session_scope() as session:
            for (job_id, round_no), replaced in positions.items():
                session.execute(
                    delete(LLMAnswer).where(
                        LLMAnswer.job_id == job_id,
                        LLMAnswer.round == round_no,
                        LLMAnswer.position.in_(replaced),
                    )
                )
            session.add_all(_journal_row(planned, n, r) for planned, n, r in kept)
    except Exception:
        rounds = sorted({planned.round_no for planned, _, _ in kept})
        log.warning("rounds %s: answers not journaled", rounds, exc_info=True)


def _journal_row(planned: PlannedRound, position: int, record: CallRecord) -> LLMAnswer:
    response = record.response
    assert response is not None and planned.job_id is not None and record.prompt_sha256
    return LLMAnswer(
        job_id=planned.job_id,
        round=planned.round_no,
        position=position,
        prompt_sha256=record.prompt_sha256,
        text=response.text,
        finish_reason=record.row(planned.job_id).finish_reason,
        prompt_tokens=_count(response.prompt_tokens),
        completion_tokens=_count(response.completion_tokens),
        latency_ms=round(response.latency_s * 1000),
        attempts=record.attempts,
        attempt_errors=attempt_errors_text(record.attempt_kinds),
        cached=response.cached,
    )


def finish_round(
    job_id: uuid.UUID,
    planned: PlannedRound,
    records: list[CallRecord],
    llm_factory: LLMFactory,
    hold_next: leases.Hold | None = None,
) -> RoundResult:
    """Judge, filter and store a round's answers against everything accepted before it.
    `hold_next`: the task already sends the next round, so its claim passes to it at commit."""
    round_no, options = planned.round_no, planned.options
    answered = [r for r in records if r.response is not None]
    if not answered:
        record_calls(job_id, records)
        raise LLMTransientError(records[0].error or "no LLM response in this round")
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or JobStatus(job.status).finished:
            return RoundResult(finished=True)
        seeds = load_seed_tasks(session, job.seed_set_id)
        dedupe_started = time.perf_counter()
        state = _job_index(session, job, [s.instruction for s in seeds], options)
        remaining = job.num_instructions - len(state.machine_texts)
    dedupe_s = planned.dedupe_s + time.perf_counter() - dedupe_started

    completions = [Completion(r.response.text, r.response.finish_reason) for r in answered]  # type: ignore[union-attr]
    verdicts: dict[str, InstructionVerdict] = {}
    judge = options.judges.instruction if options.judges and options.mode == "paper" else None
    if judge is not None:
        verdicts, judge_records = _judge_instructions(
            llm_factory, completions, state.index, options, judge, round_no
        )
        records = [*records, *judge_records]
        if any(r.response is None for r in judge_records):
            record_calls(job_id, records)
            raise LLMTransientError("the instruction judge did not answer; the round is retried")
    dedupe_started = time.perf_counter()
    if options.mode == "batched":
        outcome = accept_batched_round(completions, state.index, options, remaining=remaining)
    elif options.mode == "unnatural":
        outcome = accept_unnatural_round(completions, state.index, options, remaining=remaining)
    else:
        outcome = accept_round(
            completions,
            state.index,
            options,
            remaining=remaining,
            verbs=state.verbs,
            verdicts=verdicts,
        )
    dedupe_s += time.perf_counter() - dedupe_started
    try:
        result = _commit_round(
            job_id, round_no, outcome.decisions, records, options, dedupe_s, hold_next
        )
    except BaseException:
        forget_job_index(job_id)  # the index already holds this round's texts
        raise
    log.info(
        "round %d: %d of %d candidates accepted from %d answers (dedupe %.0f ms)",
        round_no,
        sum(d.accepted for d in outcome.decisions),
        len(outcome.decisions),
        len(answered),
        dedupe_s * 1000,
    )
    return result


def start_round(job_id: uuid.UUID, round_no: int, hold: leases.Hold) -> bool:
    """Claim the round for this task, in a transaction of its own (the job row stays free for
    the job's other tasks while the round is planned); False when there is nothing to do."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or JobStatus(job.status).finished:
            return False
        if job.rounds_completed >= round_no:
            # A redelivery after the commit. Sending the follow-up again could start a second
            # chain of rounds; if the follow-up was lost, the sweeper sends it (see sweeper.py).
            return False
        if job.rounds_completed != round_no - 1:
            log.warning("job %s: round %s arrived out of order; ignored", job_id, round_no)
            return False
        if not leases.claim_round(session, job_id, round_no, hold):
            log.info(
                "job %s: round %s is held by a live task; this copy skips it", job_id, round_no
            )
            return False
        if job.status == JobStatus.QUEUED:
            job.status = JobStatus.RUNNING
            job.started_at = datetime.now(UTC)
    return True


def _round_max_tokens(options: GenerationOptions) -> int:
    if options.mode == "batched":
        return options.batched_max_tokens
    if options.mode == "unnatural":
        return options.unnatural_max_tokens
    return options.max_tokens


def _round_stop(options: GenerationOptions) -> tuple[str, ...]:
    if options.mode == "batched":
        return batched_stop(options.batched_examples, options.tasks_per_request)
    if options.mode == "unnatural":
        return core_stop(options.unnatural_examples)
    return INSTRUCTION_STOP


def _judge_instructions(
    llm_factory: LLMFactory,
    completions: Sequence[Completion],
    index: RougeLIndex,
    options: GenerationOptions,
    judge: InstructionJudge,
    round_no: int,
) -> tuple[dict[str, InstructionVerdict], list[CallRecord]]:
    """Ask the instruction judge about every candidate that could still be accepted."""
    texts = judgeable(completions, index, options)
    if not texts:
        return {}, []
    requests = [
        judge_request(build_instruction_judge_prompt(text, judge.prompt), judge) for text in texts
    ]
    llm = llm_factory(judge_options(options, judge))
    concurrency = get_settings().llm_concurrency
    records = _calls(llm, requests, "judge_instruction", round_no, concurrency)
    verdicts = {
        text: parse_instruction_verdict(r.response.text)
        for text, r in zip(texts, records, strict=True)
        if r.response is not None
    }
    return verdicts, records


def judge_request(prompt: str, step: JudgeStep) -> LLMRequest:
    """Judges answer greedily on one line."""
    return LLMRequest(prompt=prompt, max_tokens=step.max_tokens, temperature=0.0, stop=("\n",))


def _commit_round(
    job_id: uuid.UUID,
    round_no: int,
    decisions: Sequence[CandidateDecision],
    records: Sequence[CallRecord],
    options: GenerationOptions,
    dedupe_s: float,
    hold_next: leases.Hold | None = None,
) -> RoundResult:
    with session_scope() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None or job.status != JobStatus.RUNNING or job.rounds_completed != round_no - 1:
            forget_job_index(job_id)
            return RoundResult(finished=job is None or JobStatus(job.status).finished)
        rows = [
            Instruction(
                job_id=job_id,
                round=round_no,
                slot=slot,
                text=d.text,
                accepted=d.accepted,
                reason=None if d.reason is None else str(d.reason),
                max_rouge=d.max_rouge,
                nearest=d.nearest,
                judge_note=d.judge_note,
                extra=None
                if d.core is None
                else {"input": d.core.input, "constraints": d.core.constraints},
                instances_state=_instances_state(d),
            )
            for slot, d in enumerate(decisions)
        ]
        session.add_all(rows)
        session.flush()
        session.add_all(
            Instance(
                job_id=job_id,
                instruction_id=row.id,
                position=0,
                input=d.instance.instance.input,
                output=d.instance.instance.output,
                accepted=d.instance.accepted,
                reason=None if d.instance.reason is None else str(d.instance.reason),
            )
            for row, d in zip(rows, decisions, strict=True)
            if d.instance is not None
        )
        session.add_all(r.row(job_id) for r in records if not r.recorded)
        session.execute(
            delete(LLMAnswer).where(LLMAnswer.job_id == job_id, LLMAnswer.round == round_no)
        )
        new_accepted = [row for row in rows if row.accepted]
        job.heartbeat_at = datetime.now(UTC)
        if any(r.response is not None for r in records):
            job.llm_unavailable_since = None
        job.rounds_completed = round_no
        job.dedupe_s = (job.dedupe_s or 0.0) + dedupe_s
        job.rounds_without_progress = 0 if new_accepted else job.rounds_without_progress + 1
        accepted_total = accepted_count(session, job_id)
        if accepted_total >= job.num_instructions:
            job.instructions_complete = True
        elif job.rounds_without_progress >= options.max_rounds_without_progress:
            _fail(
                job,
                f"no new instruction was accepted in {job.rounds_without_progress} rounds in a "
                f"row ({accepted_total} of {job.num_instructions} accepted); the model may be "
                "repeating itself or ignoring the prompt format",
            )
        if hold_next is None or job.instructions_complete or job.status != JobStatus.RUNNING:
            job.round_claim_token = job.round_claimed_until = job.round_claimed_by = None
        else:  # the same task holds the next round (already sent): nobody may send it again
            job.round_claimed_until = datetime.now(UTC) + leases.lease()
        session.flush()
        cached = _indexes.get(job_id)
        if cached is not None:  # run_round forgets it if this transaction fails to commit
            cached.rounds_completed = round_no
            cached.add([(round_no, r.text) for r in new_accepted])
        result = _after_round(job, round_no)
        result.accepted_total, result.rounds_completed = accepted_total, round_no
        result.target = job.num_instructions
        result.next_round_after_instances = steers_on_instances(options.balance)
        pending = [r.id for r in new_accepted if r.instances_state == InstancesState.PENDING]
        result.instance_batches = instance_batches(pending)
        return result


def accepted_count(session: Session, job_id: uuid.UUID) -> int:
    """The job's accepted instructions (reformulations of Unnatural mode not counted)."""
    count = session.scalar(
        select(func.count())
        .select_from(Instruction)
        .where(
            Instruction.job_id == job_id,
            Instruction.accepted.is_(True),
            Instruction.variant == 0,
        )
    )
    return int(count or 0)


def _instances_state(decision: CandidateDecision) -> InstancesState | None:
    """Accepted instructions wait for steps 2 and 3, unless they came with their instance."""
    if not decision.accepted:
        return None
    return InstancesState.DONE if decision.instance is not None else InstancesState.PENDING


def instance_batches(ids: list[uuid.UUID]) -> list[list[uuid.UUID]]:
    """Instance tasks' shares of `ids`."""
    size = max(1, get_settings().instructions_per_instance_task)
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def _after_round(job: Job, round_no: int) -> RoundResult:
    if JobStatus(job.status).finished:
        return RoundResult(finished=True)
    if job.instructions_complete:
        return RoundResult()
    return RoundResult(next_round=round_no + 1)


def _fail(job: Job, message: str) -> None:
    job.status = JobStatus.FAILED
    job.error = clean_text(message)  # it may quote a server's answer
    job.finished_at = datetime.now(UTC)


def fail_job(job_id: uuid.UUID, message: str) -> None:
    with session_scope() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is not None and not JobStatus(job.status).finished:
            _fail(job, message)
    forget_job_index(job_id)


def record_calls(job_id: uuid.UUID, records: Sequence[CallRecord]) -> None:
    with session_scope() as session:
        if session.get(Job, job_id) is None:
            return
        session.add_all(r.row(job_id) for r in records if not r.recorded)
        rounds = {r.round for r in records if r.round is not None}
        if rounds:  # their journaled answers, if taken again, are not counted again
            session.execute(
                update(LLMAnswer)
                .where(LLMAnswer.job_id == job_id, LLMAnswer.round.in_(rounds))
                .values(recorded=True)
            )


# --- budgets and outages ---------------------------------------------------------------------


def stop_for_budget(session: Session, job: Job, options: GenerationOptions) -> bool:
    """Stop the job when a budget is used up: cleanly for tokens and requests (the job
    succeeds with what it has), as a failure for the error budget."""
    usage = job_usage(session, job.id)
    if usage.errors >= options.max_llm_errors:
        _fail(job, f"error budget used up: {usage.errors} failed LLM requests")
        return True
    reason = budget.used_up(usage, options)
    if reason is None:
        return False
    budget.stop_job(job, reason)
    return True


def note_llm_outage(job_id: uuid.UUID, message: str) -> bool:
    """Record that a step found the LLM unreachable; fail the job (and return True) once every
    request has failed for longer than the configured time."""
    timeout = get_settings().llm_unreachable_timeout_s
    now = datetime.now(UTC)
    with session_scope() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None or JobStatus(job.status).finished:
            return True
        job.heartbeat_at = now
        if job.llm_unavailable_since is None:
            job.llm_unavailable_since = now
            return False
        if (now - job.llm_unavailable_since).total_seconds() < timeout:
            return False
        _fail(
            job,
            f"LLM backend unreachable for {timeout:.0f} s (every request failed); last error: "
            f"{message}",
        )
    forget_job_index(job_id)
    return True


def finalize_if_complete(job_id: uuid.UUID) -> bool:
    """Mark the job succeeded once it has all its instructions and every one has instances."""
    with session_scope() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None or job.status != JobStatus.RUNNING or not job.instructions_complete:
            return False
        if undecided_through(session, job_id, None):
            return False
        job.status = JobStatus.SUCCEEDED
        job.finished_at = datetime.now(UTC)
        # The journal keeps the answers of rounds dropped past the target: an extension of the
        # job plans those rounds again and takes them (app/services/extend.py).
    forget_job_index(job_id)
    return True
