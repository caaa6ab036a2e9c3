"""A job step's requests through the Batch API: submit once, poll, keep the answers.

`collect` is called each time the step runs. The first call submits the batch and raises
`BatchPending`; later calls poll it; once it is done the answers are stored with the batch row
and returned, to this call and to any repeat of the step. The row is keyed by the job and a hash
of the requests, which the step rebuilds identically (prompts are sampled from the job's seed),
so a worker restarted at any point finds the batch again instead of paying for it twice.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from app.config import get_settings
from app.db import session_scope
from app.llm.base import (
    LLMError,
    LLMPermanentError,
    LLMRequest,
    LLMResponse,
    LLMTransientError,
)
from app.models import LLMBatch
from app.selfinstruct.options import GenerationOptions
from app.services.llm import batch_client_for


class BatchPending(Exception):
    """The step's batch is not done yet: run the step again after `poll_after_s`."""

    def __init__(self, key: str, status: str) -> None:
        super().__init__(f"batch {key} is {status}")
        self.poll_after_s = get_settings().batch_poll_interval_s


def batch_key(purpose: str, requests: Sequence[LLMRequest]) -> str:
    digest = hashlib.sha256(
        json.dumps([asdict(r) for r in requests], sort_keys=True).encode()
    ).hexdigest()
    return f"{purpose}:{digest[:40]}"


def collect(
    job_id: uuid.UUID, purpose: str, requests: Sequence[LLMRequest], options: GenerationOptions
) -> list[LLMResponse | LLMError]:
    """The answers in request order, or BatchPending while the batch runs."""
    key = batch_key(purpose, requests)
    row = _row(job_id, key, len(requests))
    if row.answers is not None:
        return [_decode(a) for a in row.answers]
    client = batch_client_for(options)
    if row.remote_id is None:
        spent = _spent_batches(job_id, key)
        remote_id = client.find(key, spent) or client.submit(list(requests), key)
        _update(row.id, remote_id=remote_id, status="validating")
        raise BatchPending(key, "submitted")
    state = client.poll(row.remote_id, row.request_count)
    if state.running:
        _update(row.id, status=state.status)
        raise BatchPending(key, state.status)
    if state.answers is None:  # refused as a whole: nothing to resubmit that would work
        _forget(row.id)
        raise LLMPermanentError(f"the Batch API refused the batch: {state.error}")
    if all(isinstance(a, LLMError) for a in state.answers):
        _retire(row.id, key, row.remote_id)  # the next attempt of the step submits a new batch
        raise next(a for a in state.answers if isinstance(a, LLMError))  # type: ignore[misc]
    _update(
        row.id,
        status=state.status,
        answers=[_encode(a) for a in state.answers],
        completed_at=datetime.now(UTC),
    )
    return state.answers


def _row(job_id: uuid.UUID, key: str, request_count: int) -> LLMBatch:
    """The batch row for this key, created (in its own transaction) if there is none yet."""
    query = select(LLMBatch).where(LLMBatch.job_id == job_id, LLMBatch.key == key)
    with session_scope() as session:
        row = session.scalar(query)
        if row is not None:
            session.expunge(row)
            return row
    try:
        with session_scope() as session:
            row = LLMBatch(job_id=job_id, key=key, request_count=request_count)
            session.add(row)
            session.flush()
            session.expunge(row)
            return row
    except IntegrityError:  # another worker created it first
        with session_scope() as session:
            row = session.scalar(query)
            assert row is not None
            session.expunge(row)
            return row


def _update(row_id: uuid.UUID, **values: object) -> None:
    with session_scope() as session:
        row = session.get(LLMBatch, row_id)
        if row is not None:
            for name, value in values.items():
                setattr(row, name, value)


_SPENT = "~"  # key of a retired batch: its step's key, this mark, the remote batch's id


def _retire(row_id: uuid.UUID, key: str, remote_id: str) -> None:
    """Keep a batch whose answers were all errors under a key of its own, so that the step's
    retry neither reads it as its answers nor finds it again on the server by its key."""
    _update(row_id, key=f"{key}{_SPENT}{remote_id}"[:100])


def _spent_batches(job_id: uuid.UUID, key: str) -> set[str]:
    with session_scope() as session:
        return set(
            session.scalars(
                select(LLMBatch.remote_id).where(
                    LLMBatch.job_id == job_id, LLMBatch.key.startswith(f"{key}{_SPENT}")
                )
            )
        ) - {None}  # type: ignore[arg-type]


def _forget(row_id: uuid.UUID) -> None:
    with session_scope() as session:
        session.execute(delete(LLMBatch).where(LLMBatch.id == row_id))


def _encode(answer: LLMResponse | LLMError) -> dict[str, object]:
    if isinstance(answer, LLMResponse):
        return {
            "text": answer.text,
            "finish_reason": answer.finish_reason,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
        }
    kind = "permanent" if isinstance(answer, LLMPermanentError) else "transient"
    return {"error": str(answer)[:2000], "kind": kind}


def _decode(stored: dict[str, object]) -> LLMResponse | LLMError:
    if "error" in stored:
        error_type = LLMPermanentError if stored.get("kind") == "permanent" else LLMTransientError
        return error_type(str(stored["error"]))
    return LLMResponse(
        text=str(stored["text"]),
        finish_reason=stored.get("finish_reason"),  # type: ignore[arg-type]
        prompt_tokens=int(stored.get("prompt_tokens") or 0),  # type: ignore[call-overload]
        completion_tokens=int(stored.get("completion_tokens") or 0),  # type: ignore[call-overload]
        latency_s=0.0,
    )
