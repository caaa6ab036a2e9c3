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
import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from app.config import DEFAULT_BACKEND, get_settings
from app.db import session_scope
from app.llm.base import (
    LLMError,
    LLMPermanentError,
    LLMRequest,
    LLMResponse,
    LLMTransientError,
)
from app.llm.batch_api import RUNNING_STATES
from app.models import FINISHED_STATUSES, Job, LLMBatch
from app.selfinstruct.options import GenerationOptions
from app.services import response_cache
from app.services.llm import batch_client_for

log = logging.getLogger(__name__)


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
    """The answers in request order, or BatchPending while the batch runs.

    Requests the response cache answers are not submitted: at the first call the row keeps
    their answers and marks the rest pending, so every later call (another worker's, after a
    restart) submits and merges exactly the same positions whatever the cache holds by then."""
    key = batch_key(purpose, requests)
    row = _row(job_id, key, len(requests))
    stored = row.answers if row.answers is not None else [_PENDING] * len(requests)
    if _PENDING not in stored:
        return [_decode(a) for a in stored]
    client = batch_client_for(options)
    if row.remote_id is None:
        if row.answers is None:
            stored = _from_cache(job_id, requests, options, client.model)
            if _PENDING not in stored:  # nothing to submit: the cache answered every request
                _update(row.id, answers=stored, status="cached", completed_at=datetime.now(UTC))
                return [_decode(a) for a in stored]
            _update(row.id, answers=stored)
        pending = [r for r, a in zip(requests, stored, strict=True) if a == _PENDING]
        spent = _spent_batches(job_id, key)
        remote_id = client.find(key, spent) or client.submit(pending, key)
        _update(row.id, remote_id=remote_id, status="validating", request_count=len(pending))
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
    merged = _merge(stored, state.answers)
    _to_cache(job_id, requests, merged, options, client.model)
    _update(row.id, status=state.status, answers=merged, completed_at=datetime.now(UTC))
    return [_decode(a) for a in merged]


_PENDING: dict[str, object] = {"pending": True}  # a position the batch answers

_ABANDONABLE = sorted(RUNNING_STATES - {"cancelling"})
CANCEL_PER_SWEEP = 50  # remote calls one sweep makes at most; the rest wait for the next


def cancel_abandoned() -> int:
    """Cancel at the server every batch still running for a job that has finished, so that
    nobody pays for answers no step will read; returns how many were cancelled.

    Run by each worker's sweeper. Two sweepers may ask to cancel the same batch at once, which
    the Batch API answers harmlessly, so nothing is claimed first: a sweeper that dies before it
    records the new state leaves the row as it was, for the next sweep. A backend that cannot be
    reached leaves its rows for the next sweep too."""
    query = (
        select(LLMBatch.id, LLMBatch.remote_id, Job.id, Job.options)
        .join(Job, Job.id == LLMBatch.job_id)
        .where(
            # cancelled, failed, or at its target while a batch of surplus work still ran
            Job.status.in_(sorted(FINISHED_STATUSES)),
            LLMBatch.remote_id.is_not(None),
            LLMBatch.status.in_(_ABANDONABLE),
        )
        .order_by(LLMBatch.submitted_at)
        .limit(CANCEL_PER_SWEEP)
    )
    with session_scope() as session:
        rows = session.execute(query).all()
    cancelled = 0
    for row_id, remote_id, job_id, stored_options in rows:
        try:
            client = batch_client_for(GenerationOptions.model_validate(stored_options))
            status = client.cancel(remote_id)
        except LLMError as exc:
            log.warning("job %s: batch %s not cancelled yet: %s", job_id, remote_id, exc)
            continue
        log.info("job %s has finished: cancelled its batch %s (%s)", job_id, remote_id, status)
        _update(row_id, status=status[:32])
        cancelled += 1
    return cancelled


def _from_cache(
    job_id: uuid.UUID, requests: Sequence[LLMRequest], options: GenerationOptions, model: str
) -> list[dict[str, object]]:
    """Each request's cached answer (encoded, marked cached), or _PENDING."""
    digests = _digests(_owner(job_id), requests, options, model)
    try:
        found = response_cache.read_entries([d for d in digests if d is not None])
    except Exception:  # the cache is an optimisation: unreadable means every request is sent
        log.warning("response cache not read for a batch", exc_info=True)
        found = {}
    stored: list[dict[str, object]] = []
    for digest in digests:
        hit = found.get(digest) if digest is not None else None
        stored.append(_PENDING if hit is None else _encode_hit(hit))
    return stored


def _to_cache(
    job_id: uuid.UUID,
    requests: Sequence[LLMRequest],
    answers: list[dict[str, object]],
    options: GenerationOptions,
    model: str,
) -> None:
    owner = _owner(job_id)
    digests = _digests(owner, requests, options, model)
    entries = []
    for request, answer, digest in zip(requests, answers, digests, strict=True):
        decoded = _decode(answer)
        if digest is None or answer.get("cached") or not isinstance(decoded, LLMResponse):
            continue
        if response_cache.storable(decoded, request):
            entries.append(response_cache.entry(digest, owner, decoded))
    if not entries:
        return
    try:
        response_cache.store_entries(entries)
    except Exception:
        log.warning("batch answers not stored in the response cache", exc_info=True)


def _digests(
    owner: uuid.UUID | None,
    requests: Sequence[LLMRequest],
    options: GenerationOptions,
    model: str,
) -> list[str | None]:
    """The cache key of each request the job's policy caches (None for the others): the same
    key an online request gets, so online and batch jobs of one API key share answers."""
    if options.response_cache == "off":
        return [None] * len(requests)
    backend = options.backend or DEFAULT_BACKEND
    return [
        response_cache.request_digest(owner, backend, model, options.endpoint, r)
        if response_cache.cacheable(options.response_cache, r)
        else None
        for r in requests
    ]


def _owner(job_id: uuid.UUID) -> uuid.UUID | None:
    with session_scope() as session:
        return session.scalar(select(Job.owner_key_id).where(Job.id == job_id))


def _merge(
    stored: list[dict[str, object]], answers: Sequence[LLMResponse | LLMError]
) -> list[dict[str, object]]:
    """The batch's answers, in order, put in the pending positions."""
    if len(answers) != stored.count(_PENDING):
        raise LLMTransientError(
            f"the batch returned {len(answers)} answers for {stored.count(_PENDING)} requests"
        )
    fresh = iter(answers)
    return [_encode(next(fresh)) if a == _PENDING else a for a in stored]


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


def _encode_hit(hit: response_cache.Entry) -> dict[str, object]:
    return {
        "text": hit.text,
        "finish_reason": hit.finish_reason,
        "prompt_tokens": hit.prompt_tokens,
        "completion_tokens": hit.completion_tokens,
        "cached": True,
    }


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
        cached=bool(stored.get("cached")),
    )
