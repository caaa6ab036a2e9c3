"""Growing a succeeded job: a higher target, and the job runs on from where it stopped.

Nothing of what it has is generated or deduplicated again: the next round is the one after its
last stored round, planned as any round is (its own RNG, `{rng_seed}:{round}`, and the pool of
accepted instructions so far), so the accepted pool, the ROUGE-L index and the RNG stream carry
on. Rounds that were in flight when the job reached its old target are planned with the same
prompts again, and their journaled answers are taken instead of asking the backend twice. Budgets
count the whole job's usage, so a job stopped at a budget cannot grow.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput, NotFound
from app.models import Job, JobStatus
from app.selfinstruct.options import GenerationOptions
from app.services.completion import accepted_count
from app.services.job_index import forget_job_index
from app.services.jobs import check_active_jobs, check_backend
from app.services.keys import ANYONE, Caller


@dataclass(frozen=True)
class Extension:
    """An extended job, its first new round, and what to restore if that round cannot be sent."""

    job: Job
    first_round: int
    previous_target: int
    previous_finished_at: datetime | None


def extend_job(
    session: Session, job_id: uuid.UUID, *, num_instructions: int, caller: Caller = ANYONE
) -> Extension:
    """Raise the target of a succeeded job and set it running again (the caller commits, then
    sends `first_round`). The row lock serialises extensions of one job: a second one finds it
    running."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or not caller.owns(job.owner_key_id):
        raise NotFound(f"job {job_id} not found")
    _check_extendable(job)
    have = max(job.num_instructions, accepted_count(session, job.id))
    if num_instructions <= have:
        raise InvalidInput(
            f"num_instructions: {num_instructions} is not more than the job's "
            f"{have} instructions; give the new total target"
        )
    check_backend(GenerationOptions.model_validate(job.options))
    check_active_jobs(session, caller)
    extension = Extension(job, job.rounds_completed + 1, job.num_instructions, job.finished_at)
    now = datetime.now(UTC)
    job.num_instructions = num_instructions
    job.status = JobStatus.RUNNING
    job.instructions_complete = False
    job.finished_at = None
    job.rounds_without_progress = 0
    job.llm_unavailable_since = None
    job.heartbeat_at = now  # running again now: not a stalled job for the sweeper
    session.flush()
    forget_job_index(job.id)  # a worker in this process rebuilds it from the stored pool
    return extension


def _check_extendable(job: Job) -> None:
    if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        raise Conflict(
            f"job {job.id} is {job.status} (or being extended); only a succeeded job can be "
            "extended: wait until it has finished"
        )
    if job.status != JobStatus.SUCCEEDED:
        raise Conflict(f"job {job.id} has {job.status}; only a succeeded job can be extended")
    if job.stopped_reason:
        raise Conflict(
            f"job {job.id} stopped at its {job.stopped_reason.replace('_', ' ')} before its "
            "target; an extension would stop there too"
        )


def undo_extension(session: Session, extension: Extension) -> None:
    """The first round could not be sent: the job is the succeeded job it was."""
    job = extension.job
    job.num_instructions = extension.previous_target
    job.status = JobStatus.SUCCEEDED
    job.instructions_complete = True
    job.finished_at = extension.previous_finished_at
    session.flush()
