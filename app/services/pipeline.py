"""Step 1 of the bootstrap loop, one instruction round: plan its prompts, send them (each
answer journaled, app/services/journal.py), judge and filter the answers against the job's
ROUGE-L index (app/services/job_index.py) and store the round. app/services/round_driver.py keeps
several rounds in flight; steps 2 and 3 are in app/services/instances.py, how a job ends in
app/services/completion.py.

Each function is one idempotent step keyed by the database: a redelivered or duplicated task finds
its work already committed (or a newer round in place) and does nothing. Commits happen here, in
short transactions around the slow LLM calls, never across them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import session_scope
from app.llm.aio import run_sync
from app.llm.base import LLMClient, LLMError, LLMRequest, LLMResponse, LLMTransientError
from app.models import Instance, InstancesState, Instruction, Job, JobStatus
from app.selfinstruct.balance import seed_weights, steering_rounds, steers_on_instances
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
    judge_options,
)
from app.selfinstruct.rouge import RougeLIndex
from app.selfinstruct.rounds import (
    decide_round,
    judgeable,
    plan_round,
    prompt_seeds,
)
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
from app.services import batches, journal, leases, response_cache
from app.services.balance import mix_so_far, undecided_through
from app.services.calls import (
    CallRecord,
    LLMFactory,
    call_records,
    judge_request,
    record_calls,
    send_calls,
)
from app.services.completion import accepted_count, mark_failed, stop_for_budget
from app.services.job_index import forget_job_index, load_job_index, note_stored_round
from app.services.scores import PendingScores, store_scores
from app.services.seed_sets import load_seed_tasks

log = logging.getLogger(__name__)


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
    # Stored candidates whose highest ROUGE-L is still to be found (`finish_round`'s
    # `defer_scores`): the caller passes them to `store_scores`.
    scores: PendingScores | None = None


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
    job_id: uuid.UUID  # the round's answers are journaled under it until it is stored


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
        state = load_job_index(session, job, seed_texts, options)
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
    kept = journal.journaled(planned.job_id, planned.round_no, planned.requests)
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
            await journal.keep(
                journal.JournalEntry(planned.job_id, planned.round_no, position, record)
            )
        return position, record

    return dict(await asyncio.gather(*(one(n) for n in positions)))


def finish_round(
    job_id: uuid.UUID,
    planned: PlannedRound,
    records: list[CallRecord],
    llm_factory: LLMFactory,
    hold_next: leases.Hold | None = None,
    *,
    defer_scores: bool = False,
) -> RoundResult:
    """Judge, filter and store a round's answers against everything accepted before it.
    `hold_next`: the task already sends the next round, so its claim passes to it at commit.

    The round's decisions need only `RougeLIndex.exceeds`; each candidate's highest ROUGE-L and
    nearest text, the slower search, are stored after the commit: before returning, or with
    `defer_scores` by the caller (`result.scores`), so a stream stores its next round first."""
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
        state = load_job_index(session, job, [s.instruction for s in seeds], options)
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
        outcome = decide_round(
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
            job_id, round_no, outcome.decisions, records, options, dedupe_s, hold_next, state.index
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
    if result.scores is not None and not defer_scores:
        store_scores(result.scores)
        result.scores = None
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
    records = send_calls(llm, requests, "judge_instruction", round_no, concurrency)
    verdicts = {
        text: parse_instruction_verdict(r.response.text)
        for text, r in zip(texts, records, strict=True)
        if r.response is not None
    }
    return verdicts, records


def _commit_round(
    job_id: uuid.UUID,
    round_no: int,
    decisions: Sequence[CandidateDecision],
    records: Sequence[CallRecord],
    options: GenerationOptions,
    dedupe_s: float,
    hold_next: leases.Hold | None,
    index: RougeLIndex,
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
                pool_items=d.pool_items,
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
        journal.discard(session, job_id, round_no)
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
            mark_failed(
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
        note_stored_round(job_id, round_no, [r.text for r in new_accepted])
        result = _after_round(job, round_no)
        result.accepted_total, result.rounds_completed = accepted_total, round_no
        result.target = job.num_instructions
        result.next_round_after_instances = steers_on_instances(options.balance)
        pending = [r.id for r in new_accepted if r.instances_state == InstancesState.PENDING]
        result.instance_batches = instance_batches(pending)
        unscored = [
            (row.id, d)
            for row, d in zip(rows, decisions, strict=True)
            if d.pool_items is not None and d.max_rouge is None
        ]
        if unscored:
            result.scores = PendingScores(job_id, unscored, index)
        return result


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
