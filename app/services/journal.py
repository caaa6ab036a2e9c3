"""Step 1's answer journal: each answer a round gets is kept (`llm_answers`) until the round is
stored, so a task that dies mid-round loses only the requests it still had out; the round's next
task takes the journaled answers of the same prompts instead of asking again."""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db import session_scope
from app.llm.base import LLMRequest, LLMResponse, attempt_errors_text, parse_attempt_errors
from app.models import LLMAnswer
from app.services.calls import CallRecord, count_tokens, prompt_sha256
from app.services.coalesce import CoalescingWriter

log = logging.getLogger(__name__)


class JournalEntry(NamedTuple):
    job_id: uuid.UUID
    round_no: int
    position: int  # of the request in its round
    record: CallRecord


async def keep(entry: JournalEntry) -> None:
    """Journal an answer; returns once it is stored (or its write failed, which is logged)."""
    await _writer().put(entry)


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CoalescingWriter[JournalEntry]] = (
    weakref.WeakKeyDictionary()
)


def _writer() -> CoalescingWriter[JournalEntry]:
    """The running loop's journal writer (a forked child's loop gets its own): answers that
    come back while a journal write runs go in the next one, together."""
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = CoalescingWriter(_journal)
    return writer


def journaled(
    job_id: uuid.UUID, round_no: int, requests: Sequence[LLMRequest]
) -> dict[int, CallRecord]:
    """The journaled answers of the round whose prompts are `requests` now, by position."""
    digests = [prompt_sha256(r.prompt) for r in requests]
    try:
        with session_scope() as session:
            rows = session.scalars(
                select(LLMAnswer).where(LLMAnswer.job_id == job_id, LLMAnswer.round == round_no)
            ).all()
            return {
                row.position: CallRecord(
                    "instructions",
                    round_no,
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
        log.warning("round %d: journal not read", round_no, exc_info=True)
        return {}


def discard(session: Session, job_id: uuid.UUID, round_no: int) -> None:
    """Drop the journaled answers of a round once it is stored. A succeeded job keeps those of
    the rounds it dropped past its target: an extension takes them (app/services/extend.py)."""
    session.execute(
        delete(LLMAnswer).where(LLMAnswer.job_id == job_id, LLMAnswer.round == round_no)
    )


def _kinds(counts: Counter[str]) -> tuple[str, ...]:
    """Failed attempts as a tuple of kinds again, from their stored counts."""
    return tuple(kind for kind, n in sorted(counts.items()) for _ in range(n))


def _journal(entries: Sequence[JournalEntry]) -> None:
    """Keep these answers until their rounds are stored, in one transaction (best effort,
    like `journaled`)."""
    kept = [e for e in entries if e.record.response is not None and e.record.prompt_sha256]
    if not kept:
        return
    positions: dict[tuple[uuid.UUID, int], list[int]] = {}
    for e in kept:
        positions.setdefault((e.job_id, e.round_no), []).append(e.position)
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
            session.add_all(_journal_row(e) for e in kept)
    except Exception:
        rounds = sorted({e.round_no for e in kept})
        log.warning("rounds %s: answers not journaled", rounds, exc_info=True)


def _journal_row(entry: JournalEntry) -> LLMAnswer:
    record = entry.record
    response = record.response
    assert response is not None and record.prompt_sha256
    return LLMAnswer(
        job_id=entry.job_id,
        round=entry.round_no,
        position=entry.position,
        prompt_sha256=record.prompt_sha256,
        text=response.text,
        finish_reason=record.row(entry.job_id).finish_reason,
        prompt_tokens=count_tokens(response.prompt_tokens),
        completion_tokens=count_tokens(response.completion_tokens),
        latency_ms=round(response.latency_s * 1000),
        attempts=record.attempts,
        attempt_errors=attempt_errors_text(record.attempt_kinds),
        cached=response.cached,
    )
