"""Re-send the work of jobs nobody is working on.

A worker killed mid-step, a broker restarted without persistence, or a crash between a commit and
the enqueue that follows it leaves a job `running` with no live task for some of its work. Every
step is idempotent (keyed by the job's round counter and each instruction's instance state) and
claims its work (app/services/leases.py), so sending it again never has it done twice while its
first task lives. The sweeper sends again:

- work whose claim has expired: its task died (the claim was renewed every few seconds);
- work nobody holds, when the whole job has shown no heartbeat for a lease: its message was lost,
  or waits in the broker (a copy then finds the work done or held, and skips it).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import session_scope
from app.models import InstancesState, Instruction, Job, JobStatus
from app.services.completion import finalize_if_complete
from app.services.leases import ACTIVE
from app.services.pipeline import instance_batches

log = logging.getLogger(__name__)


@dataclass
class Resend:
    """What one stalled job needs sent again."""

    job_id: uuid.UUID
    round_no: int | None = None
    instance_batches: list[list[uuid.UUID]] = field(default_factory=list)


def stalled_jobs(now: datetime | None = None) -> list[Resend]:
    """Find jobs with dead claims or no heartbeat, and list the work to send again.

    Each job is settled under its row lock, and the sweeper clears the dead claims and touches
    the heartbeat of a quiet job it re-sends: of several sweepers running at once, only one
    re-sends given work, and a quiet job's work is re-sent at most once per lease.
    """
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=get_settings().job_lease_s)
    with session_scope() as session:
        candidates = _candidates(session, now, cutoff)
    resends: list[Resend] = []
    for job_id in sorted(candidates):
        resend = _claim(job_id, now, cutoff)
        if resend is not None:
            resends.append(resend)
    return resends


def _candidates(session: Session, now: datetime, cutoff: datetime) -> set[uuid.UUID]:
    quiet_or_dead_round = select(Job.id).where(
        Job.status.in_(ACTIVE),
        or_(
            Job.heartbeat_at < cutoff,
            Job.heartbeat_at.is_(None) & (Job.created_at < cutoff),
            Job.round_claim_token.is_not(None) & (Job.round_claimed_until < now),
        ),
    )
    dead_batches = (
        select(Instruction.job_id)
        .join(Job, Job.id == Instruction.job_id)
        .where(
            Instruction.claimed_until < now,
            Instruction.instances_state == InstancesState.PENDING,
            Job.status.in_(ACTIVE),
        )
        .distinct()
    )
    return set(session.scalars(quiet_or_dead_round)) | set(session.scalars(dead_batches))


def _quiet(job: Job, cutoff: datetime) -> bool:
    if job.heartbeat_at is None:
        return job.created_at < cutoff
    return job.heartbeat_at < cutoff


def _claim(job_id: uuid.UUID, now: datetime, cutoff: datetime) -> Resend | None:
    with session_scope() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None or JobStatus(job.status).finished:
            return None
        quiet = _quiet(job, cutoff)
        round_no = _round_to_resend(job, now, quiet)
        pending = session.execute(
            select(Instruction)
            .where(
                Instruction.job_id == job_id,
                Instruction.accepted.is_(True),
                Instruction.instances_state == InstancesState.PENDING,
            )
            .order_by(Instruction.round, Instruction.slot, Instruction.variant)
            .with_for_update()
        ).scalars()
        resend_ids = []
        for row in pending:
            dead = row.claim_token is not None and _expired(row.claimed_until, now)
            if dead:
                row.claim_token = row.claimed_until = None
            if dead or (quiet and row.claim_token is None):
                resend_ids.append(row.id)
        finished = job.instructions_complete and not resend_ids and quiet
        if quiet and (round_no is not None or resend_ids):
            job.heartbeat_at = now
    if finished:
        finalize_if_complete(job_id)
    if round_no is None and not resend_ids:
        return None
    return Resend(job_id, round_no, instance_batches(resend_ids))


def _round_to_resend(job: Job, now: datetime, quiet: bool) -> int | None:
    """The job's next round, when its claim is dead, or nobody holds it and the job is quiet."""
    if job.instructions_complete:
        return None
    if job.round_claim_token is None:
        return job.rounds_completed + 1 if quiet else None
    if not _expired(job.round_claimed_until, now):
        return None
    log.warning(
        "job %s: the claim of %s on round %d expired",
        job.id,
        job.round_claimed_by or "a task",
        job.rounds_completed + 1,
    )
    job.round_claim_token = job.round_claimed_until = job.round_claimed_by = None
    return job.rounds_completed + 1


def _expired(until: datetime | None, now: datetime) -> bool:
    return until is None or until < now
