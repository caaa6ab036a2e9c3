"""A job's LLM calls summed per request kind, in one grouped query over its `llm_calls` rows.

A status read needs the totals (progress) and each kind's spread of tokens and mean latency
(the live projection); both come from this one query, which a status read makes once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Float, case, cast, func, select
from sqlalchemy.orm import Session

from app.models import LLMCall


@dataclass(frozen=True, slots=True)
class PurposeCalls:
    """The calls of one purpose ("instructions" for step 1, "classification", ...)."""

    purpose: str
    requests: int
    errors: int
    attempts: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    cached_completion_tokens: int
    prompt_squares: float  # sums of squared tokens per request, for the spread
    completion_squares: float
    answered: int  # answered by the backend (not the response cache)
    answered_latency_ms: float  # their latencies, summed


def _summed(
    column: ColumnElement[Any] | int, condition: ColumnElement[bool] | None = None
) -> ColumnElement[Any]:
    value = column if condition is None else case((condition, column), else_=0)  # type: ignore[arg-type]
    return func.coalesce(func.sum(value), 0)


def _squares(column: ColumnElement[Any]) -> ColumnElement[Any]:
    as_float = cast(column, Float)
    return func.coalesce(func.sum(as_float * as_float), 0.0)


def calls_by_purpose(session: Session, job_id: uuid.UUID) -> list[PurposeCalls]:
    cached = LLMCall.cached.is_(True)
    answered = LLMCall.ok.is_(True) & LLMCall.cached.is_(False)
    rows = session.execute(
        select(
            LLMCall.purpose,
            func.count(),
            _summed(1, LLMCall.ok.is_(False)),
            _summed(LLMCall.attempts),
            _summed(1, cached),
            _summed(LLMCall.prompt_tokens),
            _summed(LLMCall.completion_tokens),
            _summed(LLMCall.prompt_tokens, cached),
            _summed(LLMCall.completion_tokens, cached),
            _squares(LLMCall.prompt_tokens),
            _squares(LLMCall.completion_tokens),
            _summed(1, answered),
            _summed(LLMCall.latency_ms, answered),
        )
        .where(LLMCall.job_id == job_id)
        .group_by(LLMCall.purpose)
    )
    return [
        PurposeCalls(
            str(purpose),
            *(int(v) for v in ints),
            float(prompt_sq),
            float(completion_sq),
            int(answered_n),
            float(latency_ms),
        )
        for purpose, *ints, prompt_sq, completion_sq, answered_n, latency_ms in rows
    ]


def total(calls: Sequence[PurposeCalls], purpose: str | None = None) -> PurposeCalls:
    """The calls of every purpose (or of one) summed into one."""
    chosen = [c for c in calls if purpose is None or c.purpose == purpose]
    sums = [sum(getattr(c, name) for c in chosen) for name in PurposeCalls.__slots__[1:]]
    return PurposeCalls(purpose or "all", *sums)
