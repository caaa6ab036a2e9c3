"""Enqueue pipeline steps by task name, so the API never imports worker code.

Each message carries a priority from its key's backlog (app.services.fairness), so that one key's
large jobs cannot keep another key's small job waiting behind them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import lru_cache

from app.services import fairness
from workers.celery_app import INSTANCES_TASK, MIXTURE_TASK, QUEUE, ROUND_TASK, celery_app

_UNKNOWN = object()


def enqueue_round(
    job_id: uuid.UUID,
    round_no: int,
    countdown: float | None = None,
    *,
    claim: str | None = None,
    owner: uuid.UUID | object | None = _UNKNOWN,
    behind_bulk: bool = False,
    retries: int = 0,
) -> None:
    """`claim`: the token of a task handing its claim on this work over to the new message;
    `retries`: the retries it had used (a Batch API poll is a new message, not a new attempt).

    A round is its job's critical path, and a job has at most one in the queue: it is counted in
    its key's backlog like any message, but sent at the top priority, on the round queue that
    workers read first (the broker serves priority levels before queues), so that it never
    waits behind bulk work. `behind_bulk`: queued like bulk work instead, for a job whose prompts
    are steered by the results of the instance tasks sent before it.
    """
    counted = fairness.claim_priority(_owner(job_id, owner))
    top = None if counted is None else fairness.PRIORITY_STEPS[0]
    celery_app.send_task(
        ROUND_TASK,
        args=[str(job_id), round_no],
        kwargs={"claim": claim} if claim else None,
        countdown=countdown,
        priority=counted if behind_bulk else top,
        queue=QUEUE if behind_bulk else None,  # None: the route (ROUND_QUEUE)
        retries=retries,
    )


def enqueue_instances(
    job_id: uuid.UUID,
    instruction_ids: Sequence[uuid.UUID],
    countdown: float | None = None,
    *,
    claim: str | None = None,
    owner: uuid.UUID | object | None = _UNKNOWN,
    retries: int = 0,
) -> None:
    """`claim` and `retries` as for enqueue_round."""
    celery_app.send_task(
        INSTANCES_TASK,
        args=[str(job_id), [str(i) for i in instruction_ids]],
        kwargs={"claim": claim} if claim else None,
        countdown=countdown,
        priority=fairness.claim_priority(_owner(job_id, owner)),
        retries=retries,
    )


def enqueue_mixture(mixture_id: uuid.UUID) -> None:
    celery_app.send_task(MIXTURE_TASK, args=[str(mixture_id)])


def job_started(job_id: uuid.UUID) -> None:
    """A worker took one of the job's messages off the queue."""
    fairness.message_started(job_owner(job_id))


def _owner(job_id: uuid.UUID, owner: uuid.UUID | object | None) -> uuid.UUID | None:
    return job_owner(job_id) if owner is _UNKNOWN else owner  # type: ignore[return-value]


@lru_cache(maxsize=4096)
def job_owner(job_id: uuid.UUID) -> uuid.UUID | None:
    """The key a job belongs to (it never changes, so a process looks it up once)."""
    from app.db import session_scope
    from app.models import Job

    with session_scope() as session:
        job = session.get(Job, job_id)
        return job.owner_key_id if job is not None else None
