"""Re-send the next step of jobs nobody is working on.

A worker killed mid-step, a broker restarted without persistence, or a crash between a commit and
the enqueue that follows it leaves a job `running` with no message for it anywhere. Every step
is idempotent (keyed by the job's round counter and each instruction's instance state), so
sending it again is safe; a lease keeps healthy jobs from being disturbed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update

from app.config import get_settings
from app.db import session_scope
from app.models import InstancesState, Instruction, Job, JobStatus
from app.services.pipeline import _batches, finalize_if_complete


@dataclass
class Resend:
    """What one stalled job needs sent again."""

    job_id: uuid.UUID
    round_no: int | None = None
    instance_batches: list[list[uuid.UUID]] = field(default_factory=list)


def stalled_jobs(now: datetime | None = None) -> list[Resend]:
    """Claim jobs whose heartbeat is older than the lease and list the work to send again.

    The claim is a conditional UPDATE of the heartbeat, so of several sweepers running at once
    only one re-sends a given job per lease.
    """
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=get_settings().job_lease_s)
    resends: list[Resend] = []
    with session_scope() as session:
        candidates = session.scalars(
            select(Job.id).where(
                Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
                or_(
                    Job.heartbeat_at < cutoff,
                    Job.heartbeat_at.is_(None) & (Job.created_at < cutoff),
                ),
            )
        ).all()
    for job_id in candidates:
        resend = _claim(job_id, now, cutoff)
        if resend is not None:
            resends.append(resend)
    return resends


def _claim(job_id: uuid.UUID, now: datetime, cutoff: datetime) -> Resend | None:
    with session_scope() as session:
        claimed = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
                or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff),
            )
            .values(heartbeat_at=now)
        ).rowcount
        if not claimed:
            return None
        job = session.get(Job, job_id)
        assert job is not None
        pending = list(
            session.scalars(
                select(Instruction.id)
                .where(
                    Instruction.job_id == job_id,
                    Instruction.accepted.is_(True),
                    Instruction.instances_state == InstancesState.PENDING,
                )
                .order_by(Instruction.round, Instruction.slot)
            )
        )
        round_no = None if job.instructions_complete else job.rounds_completed + 1
    if round_no is None and not pending:
        finalize_if_complete(job_id)
        return None
    return Resend(job_id, round_no, _batches(pending))
