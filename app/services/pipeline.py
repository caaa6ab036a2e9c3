"""The bootstrap loop's use-cases: load state, call the pure core and the LLM, persist.

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
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import session_scope
from app.llm.aio import run_sync
from app.llm.base import LLMClient, LLMError, LLMRequest, LLMResponse, LLMTransientError
from app.models import Instance, InstancesState, Instruction, Job, JobStatus, LLMCall
from app.selfinstruct.balance import count_verbs, seed_weights, steers_on_instances
from app.selfinstruct.batched import accept_batched_round, batched_stop, plan_batched_round
from app.selfinstruct.judges import (
    ANSWER_JUDGE_PROMPT,
    FAITHFULNESS_JUDGE_PROMPT,
    InstructionVerdict,
    build_instance_judge_prompt,
    build_instruction_judge_prompt,
    parse_instruction_verdict,
    parse_score,
)
from app.selfinstruct.options import (
    CLASSIFY_STOP,
    INSTANCE_STOP,
    INSTRUCTION_STOP,
    GenerationOptions,
    InstructionJudge,
    JudgeStep,
    ScoreJudge,
    judge_options,
)
from app.selfinstruct.parsing import parse_classification_answer
from app.selfinstruct.prompts import build_classification_prompt, build_instance_prompt
from app.selfinstruct.rouge import TOKENIZERS, RougeLIndex
from app.selfinstruct.rounds import (
    accept_round,
    judge_instances,
    judgeable,
    plan_round,
    prompt_seeds,
)
from app.selfinstruct.sanitize import clean_completion, clean_text, completion_char_cap
from app.selfinstruct.types import (
    CandidateDecision,
    Completion,
    InstanceDecision,
    InstanceReason,
)
from app.selfinstruct.unnatural import (
    NO_CONSTRAINTS,
    OUTPUT_STOP,
    CoreExample,
    Reformulation,
    accept_unnatural_round,
    build_output_prompt,
    build_rephrase_prompt,
    core_stop,
    judge_output,
    judge_reformulations,
    parse_rephrasings,
    plan_unnatural_round,
    rephrase_stop,
)
from app.services import batches, budget, leases
from app.services.balance import mix_so_far
from app.services.budget import Cost, InstanceBudget, job_usage
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


@dataclass
class CallRecord:
    purpose: str
    round: int | None
    response: LLMResponse | None
    error: str | None = None
    latency_s: float = 0.0
    prompt_sha256: str | None = None

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
        )


_MAX_COUNT = 2**31 - 1  # an INTEGER column


def _count(tokens: int) -> int:
    """A token count as a server reported it, within the column's range."""
    return min(max(int(tokens), 0), _MAX_COUNT)


def _cleaned(answer: LLMResponse, request: LLMRequest) -> LLMResponse:
    """The answer as the pure core's parsers may see it (see app/selfinstruct/sanitize.py)."""
    cap = completion_char_cap(request.max_tokens)
    completion = clean_completion(answer.text, answer.finish_reason, max_chars=cap)
    return replace(answer, text=completion.text, finish_reason=completion.finish_reason)


def _error_text(error: Exception) -> str:
    return clean_text(str(error)[:2000])


def _calls(
    llm: LLMClient,
    requests: Sequence[LLMRequest],
    purpose: str,
    round_no: int | None,
    concurrency: int,
) -> list[CallRecord]:
    """Send the requests together; transient failures become records, a permanent one raises."""
    return _records(llm.complete_many(requests, concurrency), requests, purpose, round_no)


def _records(
    answers: Sequence[LLMResponse | LLMError],
    requests: Sequence[LLMRequest],
    purpose: str,
    round_no: int | None,
) -> list[CallRecord]:
    records = []
    for answer, request in zip(answers, requests, strict=True):
        digest = prompt_sha256(request.prompt)
        if isinstance(answer, LLMResponse):
            cleaned = _cleaned(answer, request)
            records.append(CallRecord(purpose, round_no, cleaned, prompt_sha256=digest))
            continue
        if not isinstance(answer, LLMTransientError):
            raise answer
        records.append(
            CallRecord(purpose, round_no, None, _error_text(answer), answer.latency_s, digest)
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
    if cached is not None and cached.rounds_completed <= job.rounds_completed:
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
    return _records(answers, planned.requests, "instructions", planned.round_no)


@dataclass
class PlannedRound:
    """A round's requests, decided before they are sent (see `prepare_round`)."""

    round_no: int
    options: GenerationOptions
    requests: list[LLMRequest]
    dedupe_s: float


def prepare_round(job_id: uuid.UUID, round_no: int) -> PlannedRound | RoundResult:
    """The round's prompts: seeds and the machine instructions accepted up to round
    `round_no - rounds_in_flight`, drawn with the round's own RNG, so that a round's requests
    are the same whenever (and in whichever task) it is planned."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or JobStatus(job.status).finished:
            return RoundResult(finished=True)
        options = GenerationOptions.model_validate(job.options)
        if _stop_for_budget(session, job, options):
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
            weights = (
                seed_weights(shown, options.balance, mix_so_far(session, job_id))
                if options.balance is not None
                else None
            )
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
    return PlannedRound(round_no, options, requests, dedupe_s)


def rounds_in_flight(options: GenerationOptions) -> int:
    """How many rounds a job keeps in flight: its option, but 1 where the next round depends on
    more than the accepted pool (balance steering reads the instances of earlier rounds) or
    where a round waits for a Batch API batch anyway."""
    if options.batch_api or options.balance is not None:
        return 1
    return options.rounds_in_flight


def send_round(llm_factory: LLMFactory, planned: PlannedRound) -> list[CallRecord]:
    requests = planned.requests
    return _calls(
        llm_factory(planned.options), requests, "instructions", planned.round_no, len(requests)
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
        _judge_request(build_instruction_judge_prompt(text, judge.prompt), judge) for text in texts
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


def _judge_request(prompt: str, step: JudgeStep) -> LLMRequest:
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
        session.add_all(r.row(job_id) for r in records)
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
        if session.get(Job, job_id) is not None:
            session.add_all(r.row(job_id) for r in records)


# --- steps 2 and 3: classification and instances -------------------------------------------------


@dataclass
class _InstanceResult:
    instruction_id: uuid.UUID
    is_classification: bool | None
    decisions: list[InstanceDecision]
    records: list[CallRecord]
    complete: bool
    reformulations: list[Reformulation] = field(default_factory=list)  # unnatural mode
    stored: bool = False  # committed while the rest of its batch was still out
    unsent: bool = False  # not started: the job's budget had no room left for it


class InstancesWaiting(LLMTransientError):
    """Some instructions of an instance task are still waiting for the LLM: the retry takes
    these (the task may have taken more than its message named)."""

    def __init__(self, message: str, instruction_ids: Sequence[uuid.UUID]) -> None:
        super().__init__(message)
        self.instruction_ids = list(instruction_ids)


def generate_instances(
    job_id: uuid.UUID,
    instruction_ids: Sequence[uuid.UUID],
    llm_factory: LLMFactory,
    hold: leases.Hold | None = None,
) -> bool:
    """Classify and generate instances for a batch of accepted instructions: those of them
    still pending that no live task holds (`hold` as in run_round). Paper-mode tasks then keep
    taking the job's other pending instructions nobody holds (see `_TakeMore`), so that a pool
    process keeps a full window of requests out instead of waiting for its batch's slowest.

    Returns True when every instruction it took is done; raises InstancesWaiting (after
    committing what succeeded) when some must be retried.
    """
    if hold is None:
        with leases.holding(job_id) as own:
            return generate_instances(job_id, instruction_ids, llm_factory, own)
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or JobStatus(job.status).finished:
            return True
        options = GenerationOptions.model_validate(job.options)
        job.heartbeat_at = datetime.now(UTC)
        if _stop_for_budget(session, job, options):
            _give_up_instances(session, job_id, instruction_ids)
            return True
        session.flush()  # the job row first (see leases.claim_instructions)
        claimed = leases.claim_instructions(session, job_id, instruction_ids, hold)
        pending = _pending_rows(session, claimed)
    if not pending:
        return True
    rows = [(row[0], row[1]) for row in pending]
    if options.mode == "unnatural":
        cores = [
            (row[0], CoreExample(row[1], (row[2] or {}).get("input", ""),
                                 (row[2] or {}).get("constraints", NO_CONSTRAINTS)))
            for row in pending
        ]  # fmt: skip
        results = run_sync(_outputs_and_reformulations(llm_factory(options), cores, options))
    elif options.batch_api:
        results = _classify_and_generate_in_batches(job_id, rows, options)
    else:
        graders = _instance_graders(llm_factory, options)
        limit = InstanceBudget(job_id, options) if budget.budgeted(options) else None
        results = _classify_and_generate(
            llm_factory(options),
            rows,
            options,
            graders,
            store=partial(_store_done, job_id),
            more=_TakeMore(job_id, hold, options),
            limit=limit,
        )
        if limit is not None and limit.exhausted is not None:
            _commit_instances(job_id, [r for r in results if not r.stored])
            _stop_instances_for_budget(job_id, limit.exhausted, results)
            return True
    _commit_instances(job_id, [r for r in results if not r.stored])
    failed = [r for r in results if not r.complete]
    log.info(
        "instances: %d of %d instructions done, %d examples accepted",
        len(results) - len(failed),
        len(results),
        sum(d.accepted for r in results for d in r.decisions),
    )
    if failed:
        raise InstancesWaiting(
            f"{len(failed)} of {len(results)} instructions are waiting for the LLM: "
            + next((rec.error or "" for r in failed for rec in r.records if rec.error), ""),
            [r.instruction_id for r in failed],
        )
    return True


def _stop_instances_for_budget(
    job_id: uuid.UUID, reason: str, results: Sequence[_InstanceResult]
) -> None:
    """The budget has no room for another instruction: the job stops, and what this task had
    not finished is given up (retrying it would send what the budget does not allow)."""
    unfinished = [r.instruction_id for r in results if not r.complete]
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            return
        budget.stop_job(job, reason)
        session.flush()  # the job row first (see leases.claim_instructions)
        _give_up_instances(session, job_id, unfinished)
    log.info(
        "instances: the job's %s leaves no room for %d more instructions", reason, len(unfinished)
    )


def _pending_rows(
    session: Session, ids: Sequence[uuid.UUID]
) -> list[tuple[uuid.UUID, str, dict | None]]:
    return list(
        session.execute(  # rows unpack as (id, text, extra)
            select(Instruction.id, Instruction.text, Instruction.extra)
            .where(Instruction.id.in_(list(ids)))
            .order_by(Instruction.round, Instruction.slot, Instruction.variant)
        )
    )  # type: ignore[arg-type]


INSTANCE_SLICE_S = 30.0  # how long one instance task keeps taking more of its job's work
TAKE_AGAIN_S = 0.5  # after finding nothing to take: new instructions come with stored rounds


class _TakeMore:
    """More of the job's pending instructions for a running instance task: the oldest that no
    live task holds (their own messages are still queued, or their task died), claimed under
    the task's hold. After INSTANCE_SLICE_S it takes no more, so that other jobs' tasks get the
    pool process too; a job that is finished, cancelled or over a budget gives none."""

    def __init__(self, job_id: uuid.UUID, hold: leases.Hold, options: GenerationOptions) -> None:
        self.job_id, self.hold, self.options = job_id, hold, options
        self.until = time.monotonic() + INSTANCE_SLICE_S

    def __call__(self, limit: int) -> list[tuple[uuid.UUID, str]]:
        if limit < 1 or time.monotonic() >= self.until:
            return []
        budgeted = self.options.max_total_tokens is not None or (
            self.options.max_llm_requests is not None
        )
        with session_scope() as session:
            job = session.get(Job, self.job_id)
            if job is None or JobStatus(job.status).finished:
                return []
            if budgeted and _stop_for_budget(session, job, self.options):
                return []
            job.heartbeat_at = datetime.now(UTC)
            session.flush()  # the job row first (see leases.claim_instructions)
            free = _unheld_pending(session, self.job_id, limit)
            claimed = leases.claim_instructions(session, self.job_id, free, self.hold)
            return [(row[0], row[1]) for row in _pending_rows(session, claimed)]


def _unheld_pending(session: Session, job_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
    now = datetime.now(UTC)
    return list(
        session.scalars(
            select(Instruction.id)
            .where(
                Instruction.job_id == job_id,
                Instruction.instances_state == InstancesState.PENDING,
                or_(Instruction.claim_token.is_(None), Instruction.claimed_until < now),
            )
            .order_by(Instruction.round, Instruction.slot, Instruction.variant)
            .limit(limit)
        )
    )


@dataclass(frozen=True)
class _Grader:
    """One instance judge: its step's options, its client, and the default prompt."""

    purpose: str
    step: ScoreJudge
    llm: LLMClient
    template: str
    reason: InstanceReason
    needs_input: bool


def _instance_graders(llm_factory: LLMFactory, options: GenerationOptions) -> list[_Grader]:
    judges = options.judges
    if judges is None:
        return []
    kinds = (
        ("judge_answer", judges.answer, ANSWER_JUDGE_PROMPT, InstanceReason.JUDGE_LOW_SCORE, False),
        (
            "judge_faithfulness",
            judges.faithfulness,
            FAITHFULNESS_JUDGE_PROMPT,
            InstanceReason.JUDGE_UNFAITHFUL,
            True,
        ),
    )
    return [
        _Grader(
            purpose,
            step,
            llm_factory(judge_options(options, step)),
            step.prompt or default_prompt,
            reason,
            needs_input,
        )
        for purpose, step, default_prompt, reason, needs_input in kinds
        if step is not None
    ]


def _bounded_caller(llm: LLMClient) -> Callable[..., Awaitable[CallRecord]]:
    """Send one request (to `llm`, or to a judge's client) with at most `llm_concurrency` in
    flight; a transient failure becomes a record, a permanent one raises."""
    gate = asyncio.Semaphore(get_settings().llm_concurrency)

    async def call(request: LLMRequest, purpose: str, client: LLMClient = llm) -> CallRecord:
        async with gate:
            digest = prompt_sha256(request.prompt)
            try:
                answer = _cleaned(await client.acomplete(request), request)
                return CallRecord(purpose, None, answer, None, 0.0, digest)
            except LLMTransientError as exc:
                return CallRecord(purpose, None, None, _error_text(exc), exc.latency_s, digest)

    return call


async def _outputs_and_reformulations(
    llm: LLMClient, cores: Sequence[tuple[uuid.UUID, CoreExample]], options: GenerationOptions
) -> list[_InstanceResult]:
    """Unnatural mode's steps 2 and 3 per core: its output, then its rephrasings; a core whose
    requests did not all get answers stays incomplete and is retried."""
    call = _bounded_caller(llm)
    count = options.reformulations

    async def one(instruction_id: uuid.UUID, core: CoreExample) -> _InstanceResult:
        output_request = LLMRequest(
            prompt=build_output_prompt(core),
            max_tokens=options.instance_max_tokens,
            temperature=options.instance_temperature,
            top_p=options.instance_top_p,
            stop=OUTPUT_STOP,
        )
        record = await call(output_request, "outputs")
        result = _InstanceResult(instruction_id, None, [], [record], complete=False)
        if record.response is None:
            return result
        answer = Completion(record.response.text, record.response.finish_reason)
        result.decisions = [judge_output(core, answer)]
        if result.decisions[0].accepted and count:
            rephrase = LLMRequest(
                prompt=build_rephrase_prompt(core.instruction, count),
                max_tokens=min(options.max_tokens, 80 * count),
                temperature=options.temperature,
                top_p=options.top_p,
                stop=rephrase_stop(),
            )
            record = await call(rephrase, "reformulations")
            result.records.append(record)
            if record.response is None:
                return result
            texts = parse_rephrasings(record.response.text, count)
            result.reformulations = judge_reformulations(core.instruction, texts, options)
        result.complete = True
        return result

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(i, core)) for i, core in cores]
    except* LLMError as failed:
        raise failed.exceptions[0] from None
    return [t.result() for t in tasks]


async def _store_done(job_id: uuid.UUID, result: _InstanceResult) -> None:
    """Store one finished instruction at once, in a thread: a worker killed later in the batch
    then loses only what is still in flight, not the batch's answers so far."""
    await asyncio.to_thread(_commit_instances, job_id, [result])
    result.stored = True


def _classify_and_generate(
    llm: LLMClient,
    pending: Sequence[tuple[uuid.UUID, str]],
    options: GenerationOptions,
    graders: Sequence[_Grader] = (),
    store: Callable[[_InstanceResult], Awaitable[None]] | None = None,
    more: MoreWork | None = None,
    limit: InstanceBudget | None = None,
) -> list[_InstanceResult]:
    """Steps 2 and 3 for a batch, each instruction's instance request sent as soon as its
    classification is back, at most `llm_concurrency` requests in flight; with `more`, the
    batch takes further instructions as its own finish (see `_streamed`); with `limit`, an
    instruction starts only once the job's budgets have room for all it may send.

    Parsing and filtering run on the LLM loop between answers, so the CPU work overlaps the
    requests in flight instead of leaving the backend idle between phases (measured in
    bench/bench_throughput.py). Servers that cache prompt prefixes (vLLM, OpenAI, llama.cpp's
    slot matching) still reuse the few-shot prefixes, which are shared by kind, not by order.
    """
    return run_sync(
        _classify_and_generate_async(llm, pending, options, graders, store, more, limit)
    )


MoreWork = Callable[[int], Sequence[tuple[uuid.UUID, str]]]


async def _classify_and_generate_async(
    llm: LLMClient,
    pending: Sequence[tuple[uuid.UUID, str]],
    options: GenerationOptions,
    graders: Sequence[_Grader],
    store: Callable[[_InstanceResult], Awaitable[None]] | None = None,
    more: MoreWork | None = None,
    limit: InstanceBudget | None = None,
) -> list[_InstanceResult]:
    """`store`: called with each instruction that is complete, as soon as it is."""
    call = _bounded_caller(llm)

    async def grade(
        text: str, decision: InstanceDecision
    ) -> tuple[InstanceDecision, list[CallRecord]]:
        """Every grader's score for one accepted instance; a low one rejects it."""
        records, scores, reason = [], {}, None
        for grader in graders:
            instance = decision.instance
            if grader.needs_input and not instance.input.strip():
                continue
            prompt = build_instance_judge_prompt(
                text, instance.input, instance.output, grader.template
            )
            record = await call(_judge_request(prompt, grader.step), grader.purpose, grader.llm)
            records.append(record)
            if record.response is None:
                continue
            score = scores[grader.purpose] = parse_score(record.response.text)
            if reason is None and score is not None and score < grader.step.threshold:
                reason = grader.reason
        graded = replace(
            decision,
            reason=reason or decision.reason,
            answer_score=scores.get("judge_answer"),
            faithfulness_score=scores.get("judge_faithfulness"),
        )
        return graded, records

    async def grade_all(text: str, result: _InstanceResult) -> None:
        """Grade the accepted instances together; an unanswered judge call leaves the
        instruction incomplete, to be retried like a failed instance request."""
        accepted = [n for n, d in enumerate(result.decisions) if d.accepted]
        graded = await asyncio.gather(*(grade(text, result.decisions[n]) for n in accepted))
        for n, (decision, records) in zip(accepted, graded, strict=True):
            result.decisions[n] = decision
            result.records.extend(records)
            if any(r.response is None for r in records):
                result.complete = False

    async def one(instruction_id: uuid.UUID, text: str) -> _InstanceResult:
        if options.classification_only:
            result = _InstanceResult(instruction_id, True, [], [], complete=False)
        else:
            record = await call(_classification_request(text), "classify")
            verdict = (
                None
                if record.response is None
                else parse_classification_answer(record.response.text)
            )
            result = _InstanceResult(instruction_id, verdict, [], [record], complete=False)
        if result.is_classification is not None:
            record = await call(_instance_request(text, result, options), "instances")
            _judge(result, record, options)
            if graders and result.complete:
                await grade_all(text, result)
        if store is not None and result.complete:
            await store(result)
        return result

    admission = None if limit is None else (limit, partial(_cost_of, options, graders))
    return await _streamed(pending, one, more, admission)


def instruction_cost(
    options: GenerationOptions, text: str = "x" * 120, graders: Sequence[_Grader] | None = None
) -> Cost:
    """The most steps 2 and 3 of one instruction may use: its classification, its instance
    request, and every judge's grade of each instance it may bring (`text`: the instruction,
    by default one of a typical length)."""
    longest = max(options.instance_max_tokens, options.classification_instance_max_tokens)
    prompt = max(len(build_instance_prompt(text, is_classification=kind)) for kind in (False, True))
    costs = [budget.request_cost(prompt, longest)]
    if not options.classification_only:
        costs.append(budget.request_cost(len(build_classification_prompt(text)), 3))
    judges = [(g.template, g.step) for g in graders] if graders is not None else _judges(options)
    for template, step in judges:
        judged = len(template) + len(text) + longest * budget.CHARS_PER_TOKEN
        costs += [budget.request_cost(judged, step.max_tokens)] * options.max_instances_per_task
    return budget.total(costs)


def _judges(options: GenerationOptions) -> list[tuple[str, ScoreJudge]]:
    """The instance judges of a job's options, each with the prompt it sends."""
    judges = options.judges
    if judges is None:
        return []
    kinds = ((judges.answer, ANSWER_JUDGE_PROMPT), (judges.faithfulness, FAITHFULNESS_JUDGE_PROMPT))
    return [(step.prompt or default, step) for step, default in kinds if step is not None]


def _cost_of(options: GenerationOptions, graders: Sequence[_Grader], text: str) -> Cost:
    return instruction_cost(options, text, graders)


def _used(records: Sequence[CallRecord]) -> Cost:
    tokens = sum(
        r.response.prompt_tokens + r.response.completion_tokens for r in records if r.response
    )
    return Cost(len(records), tokens)


Admission = tuple[InstanceBudget, Callable[[str], Cost]]


async def _streamed(
    first: Sequence[tuple[uuid.UUID, str]],
    one: Callable[[uuid.UUID, str], Awaitable[_InstanceResult]],
    more: MoreWork | None,
    admission: Admission | None = None,
) -> list[_InstanceResult]:
    """`one` for each of `first`, and, with `more`, for what `more` hands out as they finish:
    the task keeps `instructions_per_instance_task` instructions in work. It asks again once a
    quarter of that is free (one transaction per few instructions, not per instruction), and
    after an empty answer not before TAKE_AGAIN_S. With `admission`, an instruction waits for
    its cost to fit the budget; what never fits comes back unsent. A permanent LLM error
    raises at once."""
    window = get_settings().instructions_per_instance_task
    results: list[_InstanceResult] = []
    order: dict[uuid.UUID, int] = {}  # results in the order the task took the instructions
    waiting: deque[tuple[uuid.UUID, str]] = deque()  # taken, not yet admitted by the budget
    running, taking, dry_until = 0, False, 0.0

    async def take_more(group: asyncio.TaskGroup) -> None:
        nonlocal taking, dry_until, more
        taking = True
        try:
            items = await asyncio.to_thread(more, window - running)  # type: ignore[arg-type]
        except Exception:  # a database outage: finish what is in work, take no more
            log.warning("instance task: could not take more instructions", exc_info=True)
            items, more = [], None
        finally:
            taking = False
        if not items:
            dry_until = time.monotonic() + TAKE_AGAIN_S
        await start(group, items)

    async def start(group: asyncio.TaskGroup, items: Sequence[tuple[uuid.UUID, str]]) -> None:
        nonlocal running
        for instruction_id, _ in items:
            order.setdefault(instruction_id, len(order))
        waiting.extend(items)
        while waiting:
            cost = None
            if admission is not None:
                limit, cost_of = admission
                cost = cost_of(waiting[0][1])
                if not await limit.admit(cost, running):
                    return
            instruction_id, text = waiting.popleft()
            running += 1
            group.create_task(work(group, instruction_id, text, cost))

    async def work(
        group: asyncio.TaskGroup, instruction_id: uuid.UUID, text: str, cost: Cost | None
    ) -> None:
        nonlocal running
        result = None
        try:
            result = await one(instruction_id, text)
            results.append(result)
        finally:
            running -= 1
            if admission is not None and cost is not None:
                used = _used(result.records) if result else cost
                admission[0].release(cost, used, stored=bool(result and result.stored))
        await start(group, [])
        await maybe_take(group)

    async def maybe_take(group: asyncio.TaskGroup) -> None:
        room = window - running - len(waiting)
        wanted = room >= max(1, window // 4) or running == 0
        spent = admission is not None and admission[0].exhausted is not None
        if (
            more is not None
            and wanted
            and not taking
            and not spent
            and (time.monotonic() >= dry_until)
        ):
            await take_more(group)

    try:
        async with asyncio.TaskGroup() as group:
            await start(group, first)
            await maybe_take(group)
    except* LLMError as failed:  # a permanent error: the job cannot go on
        raise failed.exceptions[0] from None
    results += [_InstanceResult(i, None, [], [], complete=False, unsent=True) for i, _ in waiting]
    return sorted(results, key=lambda r: order[r.instruction_id])


def _classify_and_generate_in_batches(
    job_id: uuid.UUID, pending: Sequence[tuple[uuid.UUID, str]], options: GenerationOptions
) -> list[_InstanceResult]:
    """Steps 2 and 3 as two Batch API batches; BatchPending while either runs."""
    if options.classification_only:
        results = [_InstanceResult(i, True, [], [], complete=False) for i, _ in pending]
    else:
        requests = [_classification_request(text) for _, text in pending]
        answers = batches.collect(job_id, "classify", requests, options)
        records = _records(answers, requests, "classify", None)
        results = [
            _InstanceResult(
                instruction_id,
                None if r.response is None else parse_classification_answer(r.response.text),
                [],
                [r],
                complete=False,
            )
            for (instruction_id, _), r in zip(pending, records, strict=True)
        ]
    texts = dict(pending)
    ready = [r for r in results if r.is_classification is not None]
    if ready:
        requests = [_instance_request(texts[r.instruction_id], r, options) for r in ready]
        answers = batches.collect(job_id, "instances", requests, options)
        records = _records(answers, requests, "instances", None)
        for result, record in zip(ready, records, strict=True):
            _judge(result, record, options)
    return results


def _classification_request(text: str) -> LLMRequest:
    return LLMRequest(
        prompt=build_classification_prompt(text),
        max_tokens=3,
        temperature=0.0,
        top_p=0.0,
        stop=CLASSIFY_STOP,
    )


def _instance_request(text: str, result: _InstanceResult, options: GenerationOptions) -> LLMRequest:
    is_classification = bool(result.is_classification)
    return LLMRequest(
        prompt=build_instance_prompt(text, is_classification=is_classification),
        max_tokens=options.classification_instance_max_tokens
        if is_classification
        else options.instance_max_tokens,
        temperature=options.instance_temperature,
        top_p=options.instance_top_p,
        presence_penalty=options.instance_presence_penalty,
        stop=INSTANCE_STOP,
    )


def _judge(result: _InstanceResult, record: CallRecord, options: GenerationOptions) -> None:
    """Step 3's filters for one classified instruction; fills `result` in place."""
    result.records.append(record)
    if record.response is None:
        return
    completion = Completion(record.response.text, record.response.finish_reason)
    result.decisions = judge_instances(
        completion, is_classification=bool(result.is_classification), options=options
    )
    result.complete = True


def _commit_instances(job_id: uuid.UUID, results: Sequence[_InstanceResult]) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            return
        job.heartbeat_at = datetime.now(UTC)
        if any(rec.response is not None for r in results for rec in r.records):
            job.llm_unavailable_since = None
        for result in results:
            session.add_all(r.row(job_id) for r in result.records)
            if not result.complete:
                continue
            # Claim the instruction: only the first writer stores its instances.
            claimed = session.execute(
                update(Instruction)
                .where(
                    Instruction.id == result.instruction_id,
                    Instruction.instances_state == InstancesState.PENDING,
                )
                .values(
                    instances_state=InstancesState.DONE,
                    is_classification=result.is_classification,
                    claim_token=None,
                    claimed_until=None,
                )
            ).rowcount
            if not claimed:
                continue
            session.add_all(
                Instance(
                    job_id=job_id,
                    instruction_id=result.instruction_id,
                    position=position,
                    input=d.instance.input,
                    output=d.instance.output,
                    accepted=d.accepted,
                    reason=None if d.reason is None else str(d.reason),
                    answer_score=d.answer_score,
                    faithfulness_score=d.faithfulness_score,
                )
                for position, d in enumerate(result.decisions)
            )
            if result.reformulations:
                _add_reformulations(session, result)


def _add_reformulations(session: Session, result: _InstanceResult) -> None:
    """Each reformulation as its own instruction (its core's round and slot, variant 1, 2, ...)
    with the core's accepted instance when it passed the filters."""
    core = session.get(Instruction, result.instruction_id)
    assert core is not None
    (example,) = result.decisions
    for variant, reformulation in enumerate(result.reformulations, 1):
        row = Instruction(
            job_id=core.job_id,
            round=core.round,
            slot=core.slot,
            variant=variant,
            core_id=core.id,
            text=reformulation.text,
            accepted=reformulation.accepted,
            reason=None if reformulation.reason is None else str(reformulation.reason),
            max_rouge=reformulation.max_rouge,
            nearest=reformulation.nearest,
            extra=core.extra,
            instances_state=InstancesState.DONE if reformulation.accepted else None,
        )
        session.add(row)
        if reformulation.accepted:
            session.flush()
            session.add(
                Instance(
                    job_id=core.job_id,
                    instruction_id=row.id,
                    position=0,
                    input=example.instance.input,
                    output=example.instance.output,
                    accepted=True,
                )
            )


def mark_instances_failed(job_id: uuid.UUID, instruction_ids: Sequence[uuid.UUID]) -> None:
    """Give up on instructions whose instances could not be generated after all retries."""
    with session_scope() as session:
        _give_up_instances(session, job_id, instruction_ids)


def _give_up_instances(
    session: Session, job_id: uuid.UUID, instruction_ids: Sequence[uuid.UUID]
) -> None:
    session.execute(
        update(Instruction)
        .where(
            Instruction.job_id == job_id,
            Instruction.id.in_(list(instruction_ids)),
            Instruction.instances_state == InstancesState.PENDING,
        )
        .values(instances_state=InstancesState.FAILED, claim_token=None, claimed_until=None)
    )


# --- budgets and outages ---------------------------------------------------------------------


def _stop_for_budget(session: Session, job: Job, options: GenerationOptions) -> bool:
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
        pending = session.scalar(
            select(func.count())
            .select_from(Instruction)
            .where(
                Instruction.job_id == job_id,
                Instruction.accepted.is_(True),
                Instruction.instances_state == InstancesState.PENDING,
            )
        )
        if pending:
            return False
        job.status = JobStatus.SUCCEEDED
        job.finished_at = datetime.now(UTC)
    forget_job_index(job_id)
    return True
