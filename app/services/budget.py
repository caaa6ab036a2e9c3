"""Token and request budgets: what a job has used, and reserving before sending.

A budget is a cap on what is sent. Step 1 sends a round only while the rounds in flight are
expected to fit (app/services/round_driver.py); an instance task admits an instruction only
while the job's recorded usage, what the task's admitted instructions may still use and what
it has used but not yet stored fit, each instruction priced at its worst case (its prompts at
about four characters a token, plus every answer's max_tokens). What other processes have in
flight at the same moment is the only overshoot left.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import session_scope
from app.models import InstancesState, Instruction, Job, LLMCall
from app.selfinstruct.options import GenerationOptions

CHARS_PER_TOKEN = 4  # English text in the tokenizers of common models; an estimate, not a count
READ_AGAIN_S = 0.5  # how stale the job's recorded usage may be when an instruction is admitted


@dataclass(frozen=True)
class Usage:
    requests: int
    errors: int
    tokens: int


def job_usage(session: Session, job_id: uuid.UUID) -> Usage:
    requests, errors, tokens = session.execute(
        select(
            func.count(),
            func.count().filter(LLMCall.ok.is_(False)),
            func.coalesce(func.sum(LLMCall.prompt_tokens + LLMCall.completion_tokens), 0),
        ).where(LLMCall.job_id == job_id)
    ).one()
    return Usage(int(requests), int(errors), int(tokens))


def budgeted(options: GenerationOptions) -> bool:
    return options.max_total_tokens is not None or options.max_llm_requests is not None


def used_up(usage: Usage, options: GenerationOptions) -> str | None:
    """The stop reason once a budget is used up."""
    if options.max_total_tokens is not None and usage.tokens >= options.max_total_tokens:
        return "token_budget"
    if options.max_llm_requests is not None and usage.requests >= options.max_llm_requests:
        return "request_budget"
    return None


def stop_job(job: Job, reason: str) -> None:
    """A budget stop: the job takes no new instructions and succeeds with what it has."""
    job.stopped_reason = job.stopped_reason or reason
    job.instructions_complete = True


@dataclass(frozen=True)
class Cost:
    """What something may use at most."""

    requests: int
    tokens: int


def request_cost(prompt_chars: int, max_tokens: int) -> Cost:
    """One request: its prompt's estimated tokens and the longest answer it allows."""
    return Cost(1, prompt_chars // CHARS_PER_TOKEN + 1 + max_tokens)


def total(costs: Iterable[Cost]) -> Cost:
    costs = list(costs)
    return Cost(sum(c.requests for c in costs), sum(c.tokens for c in costs))


def over(tokens: float, requests: float, options: GenerationOptions) -> str | None:
    """The budget that `tokens` and `requests` would pass, as a stop reason."""
    if options.max_total_tokens is not None and tokens > options.max_total_tokens:
        return "token_budget"
    if options.max_llm_requests is not None and requests > options.max_llm_requests:
        return "request_budget"
    return None


def round_over(
    session: Session,
    job_id: uuid.UUID,
    options: GenerationOptions,
    *,
    rounds_done: int,
    rounds_out: int,
    accepted: int,
    instruction_guess: Cost,
) -> str | None:
    """The budget one more step-1 round would pass, if any, counting what is already on its way:
    the rounds in flight, and steps 2 and 3 of every accepted instruction still waiting for
    them and of those the rounds will bring. A round is priced at the job's step-1 usage per
    stored round, an instruction at its steps' usage per settled instruction (before one has
    settled, at `instruction_guess`, its worst case)."""
    usage = job_usage(session, job_id)
    step1_requests, step1_tokens = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(LLMCall.prompt_tokens + LLMCall.completion_tokens), 0),
        ).where(LLMCall.job_id == job_id, LLMCall.round.is_not(None))
    ).one()
    counts = dict(
        session.execute(
            select(Instruction.instances_state, func.count())
            .where(Instruction.job_id == job_id, Instruction.accepted.is_(True))
            .group_by(Instruction.instances_state)
        ).all()
    )
    waiting = counts.get(InstancesState.PENDING, 0)
    settled = counts.get(InstancesState.DONE, 0) + counts.get(InstancesState.FAILED, 0)
    if settled:
        per_instruction = (
            (usage.requests - step1_requests) / settled,
            (usage.tokens - step1_tokens) / settled,
        )
    else:
        per_instruction = (instruction_guess.requests, instruction_guess.tokens)
    brought = accepted / max(rounds_done, 1)
    per_round = [
        step1 / max(rounds_done, 1) + brought * instruction
        for step1, instruction in zip((step1_requests, step1_tokens), per_instruction, strict=True)
    ]
    requests, tokens = (
        used + waiting * instruction + (rounds_out + 1) * round_cost
        for used, instruction, round_cost in zip(
            (usage.requests, usage.tokens), per_instruction, per_round, strict=True
        )
    )
    return over(tokens, requests, options)


class InstanceBudget:
    """One instance task's admissions under its job's budgets (see the module docstring)."""

    def __init__(self, job_id: uuid.UUID, options: GenerationOptions) -> None:
        self.job_id, self.options = job_id, options
        self.exhausted: str | None = None  # the stop reason, once nothing more fits
        self._reserved = Cost(0, 0)
        self._unstored = Cost(0, 0)  # used by answers not yet committed
        self._since_read = Cost(0, 0)  # committed after the last read of the usage
        self._usage: Usage | None = None
        self._read_at = 0.0

    async def admit(self, cost: Cost, others_running: int) -> bool:
        """Reserve `cost` if it fits. With nothing of this task in flight that could free
        room, a cost that does not fit means the budget is spent."""
        if self.exhausted is not None:
            return False
        usage = await self._recorded()
        used = total([Cost(usage.requests, usage.tokens), self._unstored, self._since_read])
        after = total([used, self._reserved, cost])
        reason = over(after.tokens, after.requests, self.options)
        if reason is None:
            self._reserved = total([self._reserved, cost])
            return True
        if not others_running:
            self.exhausted = reason
        return False

    def release(self, cost: Cost, committed: Cost, unstored: Cost) -> None:
        """An admitted instruction is done: its reservation becomes what it really used, part
        of it committed already (in the usage at the next read), part not yet."""
        self._reserved = Cost(
            self._reserved.requests - cost.requests, self._reserved.tokens - cost.tokens
        )
        self._since_read = total([self._since_read, committed])
        self._unstored = total([self._unstored, unstored])

    async def _recorded(self) -> Usage:
        if self._usage is None or time.monotonic() - self._read_at >= READ_AGAIN_S:
            counted = self._since_read
            self._usage = await asyncio.to_thread(self._read)
            self._read_at = time.monotonic()
            # What was committed while the read ran stays counted (perhaps twice: the safe side).
            self._since_read = Cost(
                self._since_read.requests - counted.requests,
                self._since_read.tokens - counted.tokens,
            )
        return self._usage

    def _read(self) -> Usage:
        with session_scope() as session:
            return job_usage(session, self.job_id)
