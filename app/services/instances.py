"""Steps 2 and 3 of the bootstrap loop: classify each accepted instruction, then generate its
instances (input-first, or output-first for classification tasks), judge and store them.

An instance task keeps a window of instructions in work (`instance_window`: at least
`instructions_per_instance_task`, more while the backend has free slots) and takes the job's
pending instructions nobody holds as its own finish (for INSTANCE_SLICE_S), so a pool process
keeps a full window of requests out instead of waiting for its batch's slowest. Each instruction
is stored as soon as it is complete; a retry carries every unfinished instruction.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import session_scope
from app.llm.aio import run_sync
from app.llm.base import LLMClient, LLMError, LLMRequest, LLMTransientError
from app.models import Instance, InstancesState, Instruction, Job, JobStatus
from app.selfinstruct.judges import (
    ANSWER_JUDGE_PROMPT,
    FAITHFULNESS_JUDGE_PROMPT,
    build_instance_judge_prompt,
    parse_score,
)
from app.selfinstruct.options import (
    CLASSIFY_STOP,
    INSTANCE_STOP,
    GenerationOptions,
    ScoreJudge,
    judge_options,
)
from app.selfinstruct.parsing import parse_classification_answer
from app.selfinstruct.prompts import build_classification_prompt, build_instance_prompt
from app.selfinstruct.rounds import (
    judge_instances,
)
from app.selfinstruct.types import (
    Completion,
    InstanceDecision,
    InstanceReason,
)
from app.selfinstruct.unnatural import (
    NO_CONSTRAINTS,
    OUTPUT_STOP,
    CoreExample,
    Reformulation,
    build_output_prompt,
    build_rephrase_prompt,
    judge_output,
    judge_reformulations,
    parse_rephrasings,
    rephrase_stop,
)
from app.services import batches, budget, leases, response_cache
from app.services.budget import Cost, InstanceBudget
from app.services.calls import (
    CallRecord,
    LLMFactory,
    call_records,
    cleaned_answer,
    error_text,
    judge_request,
    prompt_sha256,
)
from app.services.coalesce import CoalescingWriter
from app.services.completion import stop_for_budget
from app.services.instance_window import Headroom, InstanceWindow, backend_headroom

log = logging.getLogger(__name__)


@dataclass
class _InstanceResult:
    instruction_id: uuid.UUID
    is_classification: bool | None
    decisions: list[InstanceDecision]
    records: list[CallRecord]
    complete: bool
    reformulations: list[Reformulation] = field(default_factory=list)  # unnatural mode
    stored: bool = False  # committed while the rest of its batch was still out
    early: list[CallRecord] = field(default_factory=list)  # committed with its verdict
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
    llm_factory = response_cache.for_job(job_id, llm_factory)
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or JobStatus(job.status).finished:
            return True
        options = GenerationOptions.model_validate(job.options)
        job.heartbeat_at = datetime.now(UTC)
        if stop_for_budget(session, job, options):
            _give_up_instances(session, job_id, instruction_ids)
            return True
        session.flush()  # the job row first (see leases.claim_instructions)
        claimed = leases.claim_instructions(session, job_id, instruction_ids, hold)
        pending = _pending_rows(session, claimed)
    if not pending:
        return True
    rows = [(row[0], row[1]) for row in pending]
    verdicts = Verdicts(job_id, {row[0]: row[3] for row in pending if row[3] is not None})
    if options.mode == "unnatural":
        cores = [(row[0], _core_of(row)) for row in pending]
        results = run_sync(
            _outputs_and_reformulations(
                llm_factory(options),
                cores,
                options,
                store=partial(_store_done, job_id),
                more=_TakeMore(job_id, hold, options, payload=_core_of),
            )
        )
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
            more=_TakeMore(job_id, hold, options, verdicts),
            limit=limit,
            verdicts=verdicts,
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


PendingRow = tuple[uuid.UUID, str, dict | None, bool | None]  # id, text, extra, classification


def _core_of(row: PendingRow) -> CoreExample:
    """An Unnatural-Instructions core as step 1 stored it: instruction, input, constraints."""
    extra = row[2] or {}
    return CoreExample(row[1], extra.get("input", ""), extra.get("constraints", NO_CONSTRAINTS))


def _pending_rows(session: Session, ids: Sequence[uuid.UUID]) -> list[PendingRow]:
    return list(
        session.execute(  # rows unpack as (id, text, extra, is_classification)
            select(
                Instruction.id, Instruction.text, Instruction.extra, Instruction.is_classification
            )
            .where(Instruction.id.in_(list(ids)))
            .order_by(Instruction.round, Instruction.slot, Instruction.variant)
        )
    )  # type: ignore[arg-type]


INSTANCE_SLICE_S = 30.0  # how long an instance task keeps taking its job's work, on average
# Each task's slice is drawn from INSTANCE_SLICE_S x [1 - SLICE_SPREAD, 1 + SLICE_SPREAD]: a job's
# instance tasks start together when its first rounds are stored, and with equal slices they
# would all stop taking work, and drain, at once, emptying the job's share of the backend; spread
# out, tasks still taking work can grow their windows into the slots the draining ones free (its
# effect alone is not measured: BENCHMARKS.md).
SLICE_SPREAD = 0.5
TAKE_AGAIN_S = 0.5  # after finding nothing to take: new instructions come with stored rounds


class _TakeMore:
    """More of the job's pending instructions for a running instance task: the oldest that no
    live task holds (their own messages are still queued, or their task died), claimed under
    the task's hold. After its slice (about INSTANCE_SLICE_S) it takes no more, so that other
    jobs' tasks get the pool process too; a job that is finished, cancelled or over a budget
    gives none."""

    def __init__(
        self,
        job_id: uuid.UUID,
        hold: leases.Hold,
        options: GenerationOptions,
        verdicts: Verdicts | None = None,
        payload: Callable[[PendingRow], Any] = lambda row: row[1],
    ) -> None:
        """`payload`: what the task's work gets of each row (the instruction's text, or an
        Unnatural core)."""
        self.job_id, self.hold, self.options = job_id, hold, options
        self.verdicts, self.payload = verdicts, payload
        spread = random.uniform(1 - SLICE_SPREAD, 1 + SLICE_SPREAD)
        self.until = time.monotonic() + INSTANCE_SLICE_S * spread

    def __call__(self, limit: int) -> list[tuple[uuid.UUID, Any]]:
        if limit < 1 or time.monotonic() >= self.until:
            return []
        with session_scope() as session:
            job = session.get(Job, self.job_id)
            if job is None or JobStatus(job.status).finished:
                return []
            if budget.budgeted(self.options) and stop_for_budget(session, job, self.options):
                return []
            job.heartbeat_at = datetime.now(UTC)
            session.flush()  # the job row first (see leases.claim_instructions)
            free = _unheld_pending(session, self.job_id, limit)
            claimed = leases.claim_instructions(session, self.job_id, free, self.hold)
            rows = _pending_rows(session, claimed)
        if self.verdicts is not None:
            self.verdicts.known.update((row[0], row[3]) for row in rows if row[3] is not None)
        return [(row[0], self.payload(row)) for row in rows]


class Verdicts:
    """Classifications answered for instructions still waiting for their instances. Each is
    stored as soon as it is back (its call recorded with it), so that a task sent again after
    its worker died asks only for what was not answered yet."""

    def __init__(self, job_id: uuid.UUID, known: dict[uuid.UUID, bool]) -> None:
        self.job_id, self.known = job_id, known
        # Classifications back while one is being stored go in the next transaction together.
        self._writer: CoalescingWriter[tuple[uuid.UUID, bool, CallRecord]] = CoalescingWriter(
            self._store
        )

    async def remember(self, instruction_id: uuid.UUID, verdict: bool, record: CallRecord) -> bool:
        """True once stored; False (the record then stays with the instruction) on any error."""
        try:
            await self._writer.put((instruction_id, verdict, record))
        except Exception:
            log.warning("instances: classification not stored early", exc_info=True)
            return False
        self.known[instruction_id] = verdict
        return True

    def _store(self, verdicts: list[tuple[uuid.UUID, bool, CallRecord]]) -> None:
        # Rows updated and inserted, no other lock taken: this cannot deadlock with the claims
        # and commits that lock the job row first.
        with session_scope() as session:
            session.add_all(record.row(self.job_id) for _, _, record in verdicts)
            for kind in (True, False):
                ids = [i for i, verdict, _ in verdicts if verdict is kind]
                if not ids:
                    continue
                session.execute(
                    update(Instruction)
                    .where(
                        Instruction.id.in_(ids),
                        Instruction.instances_state == InstancesState.PENDING,
                    )
                    .values(is_classification=kind)
                    .execution_options(synchronize_session=False)
                )


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
                answer = cleaned_answer(await client.acomplete(request), request)
                return CallRecord(purpose, None, answer, None, 0.0, digest)
            except LLMTransientError as exc:
                return CallRecord(
                    purpose,
                    None,
                    None,
                    error_text(exc),
                    exc.latency_s,
                    digest,
                    failed_attempts=exc.failed_attempts,
                )

    return call


async def _outputs_and_reformulations(
    llm: LLMClient,
    cores: Sequence[tuple[uuid.UUID, CoreExample]],
    options: GenerationOptions,
    store: Callable[[_InstanceResult], Awaitable[None]] | None = None,
    more: MoreWork | None = None,
) -> list[_InstanceResult]:
    """Unnatural mode's steps 2 and 3 per core: its output, then its rephrasings; a core whose
    requests did not all get answers stays incomplete and is retried. Streamed as paper mode's
    are (`_streamed`): each core is stored as soon as it is complete, and with `more` the task
    keeps taking the job's other pending cores."""
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
        if store is not None:
            await store(result)
        return result

    return await _streamed(cores, one, more, headroom=backend_headroom(llm))


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
    verdicts: Verdicts | None = None,
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
        _classify_and_generate_async(llm, pending, options, graders, store, more, limit, verdicts)
    )


MoreWork = Callable[[int], Sequence[tuple[uuid.UUID, Any]]]  # (id, text or core)


async def _classify_and_generate_async(
    llm: LLMClient,
    pending: Sequence[tuple[uuid.UUID, str]],
    options: GenerationOptions,
    graders: Sequence[_Grader],
    store: Callable[[_InstanceResult], Awaitable[None]] | None = None,
    more: MoreWork | None = None,
    limit: InstanceBudget | None = None,
    verdicts: Verdicts | None = None,
) -> list[_InstanceResult]:
    """`store`: called with each instruction that is complete, as soon as it is; `verdicts`:
    classifications already known (not asked again), and where new ones are kept."""
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
            record = await call(judge_request(prompt, grader.step), grader.purpose, grader.llm)
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
        elif verdicts is not None and instruction_id in verdicts.known:
            known = verdicts.known[instruction_id]
            result = _InstanceResult(instruction_id, known, [], [], complete=False)
        else:
            record = await call(_classification_request(text), "classify")
            verdict = (
                None
                if record.response is None
                else parse_classification_answer(record.response.text)
            )
            result = _InstanceResult(instruction_id, verdict, [], [record], complete=False)
            kept = verdicts is not None and verdict is not None
            if kept and await verdicts.remember(instruction_id, bool(verdict), record):  # type: ignore[union-attr]
                result.records, result.early = [], [record]
        if result.is_classification is not None:
            record = await call(_instance_request(text, result, options), "instances")
            _judge(result, record, options)
            if graders and result.complete:
                await grade_all(text, result)
        if store is not None and result.complete:
            await store(result)
        return result

    admission = None if limit is None else (limit, partial(_cost_of, options, graders))
    return await _streamed(pending, one, more, admission, backend_headroom(llm))


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
    first: Sequence[tuple[uuid.UUID, Any]],
    one: Callable[[uuid.UUID, Any], Awaitable[_InstanceResult]],
    more: MoreWork | None,
    admission: Admission | None = None,
    headroom: Headroom | None = None,
) -> list[_InstanceResult]:
    """`one` for each of `first`, and, with `more`, for what `more` hands out as they finish:
    the task keeps its window (`InstanceWindow`, grown from `headroom`, the backend's free
    slots) of instructions in work. After an empty answer it asks again not before
    TAKE_AGAIN_S. With `admission`, an instruction waits for its cost to fit the budget; what
    never fits comes back unsent. A permanent LLM error raises at once."""
    window = InstanceWindow(headroom)
    results: list[_InstanceResult] = []
    order: dict[uuid.UUID, int] = {}  # results in the order the task took the instructions
    waiting: deque[tuple[uuid.UUID, Any]] = deque()  # taken, not yet admitted by the budget
    running, taking, dry_until = 0, False, 0.0

    async def take(room: int) -> Sequence[tuple[uuid.UUID, Any]]:
        nonlocal dry_until, more
        try:
            items = await asyncio.to_thread(more, room)  # type: ignore[arg-type]
        except Exception:  # a database outage: finish what is in work, take no more
            log.warning("instance task: could not take more instructions", exc_info=True)
            items, more = [], None
        if not items:
            dry_until = time.monotonic() + TAKE_AGAIN_S
        return items

    async def start(group: asyncio.TaskGroup, items: Sequence[tuple[uuid.UUID, Any]]) -> None:
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
        group: asyncio.TaskGroup, instruction_id: uuid.UUID, text: Any, cost: Cost | None
    ) -> None:
        nonlocal running
        result = None
        try:
            result = await one(instruction_id, text)
            results.append(result)
        finally:
            running -= 1
            if admission is not None and cost is not None:
                if result is None:  # it raised: count its worst case as not yet stored
                    admission[0].release(cost, Cost(0, 0), cost)
                elif result.stored:
                    admission[0].release(cost, _used([*result.early, *result.records]), Cost(0, 0))
                else:
                    admission[0].release(cost, _used(result.early), _used(result.records))
        await start(group, [])
        await maybe_take(group)

    async def maybe_take(group: asyncio.TaskGroup) -> None:
        nonlocal taking
        spent = admission is not None and admission[0].exhausted is not None
        if more is None or taking or spent or time.monotonic() < dry_until:
            return
        taking = True  # one at a time: reading the backend's load and taking from the job
        try:
            room = await window.room(running + len(waiting), idle=running == 0)
            items = await take(room) if room else []
        finally:
            taking = False
        await start(group, items)

    try:
        async with asyncio.TaskGroup() as group:
            await start(group, first)
            await maybe_take(group)
    except* LLMError as failed:  # a permanent error: the job cannot go on
        raise failed.exceptions[0] from None
    if window.size > window.base:
        log.info("instance task: window grew from %d to %d", window.base, window.size)
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
        records = call_records(answers, requests, "classify", None)
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
        records = call_records(answers, requests, "instances", None)
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
