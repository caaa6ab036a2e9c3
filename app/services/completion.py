"""How a job ends: it succeeds once it has its instructions and all their instances, stops
when a budget is used up, and fails on a permanent LLM error, an outage that outlasts the
configured time, or rounds that stop bringing new instructions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import session_scope
from app.models import Instruction, Job, JobStatus
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.sanitize import clean_text
from app.services import budget
from app.services.balance import undecided_through
from app.services.job_index import forget_job_index
from app.services.scores import store_missed_scores


def accepted_count(session: Session, job_id: uuid.UUID) -> int:
    """The job's accepted instructions (reformulations of Unnatural mode not counted)."""
    count = session.scalar(
        select(func.count())
        .select_from(Instruction)
        .where(
            Instruction.job_id == job_id,
            Instruction.accepted.is_(True),
            Instruction.variant == 0,
        )
    )
    return int(count or 0)


def mark_failed(job: Job, message: str) -> None:
    """Fail the job in the caller's transaction."""
    job.status = JobStatus.FAILED
    job.error = clean_text(message)  # it may quote a server's answer
    job.finished_at = datetime.now(UTC)


def fail_job(job_id: uuid.UUID, message: str) -> None:
    with session_scope() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is not None and not JobStatus(job.status).finished:
            mark_failed(job, message)
    forget_job_index(job_id)


def stop_for_budget(session: Session, job: Job, options: GenerationOptions) -> bool:
    """Stop the job when a budget is used up: cleanly for tokens and requests (the job
    succeeds with what it has), as a failure for the error budget."""
    usage = budget.job_usage(session, job.id)
    if usage.errors >= options.max_llm_errors:
        mark_failed(job, f"error budget used up: {usage.errors} failed LLM requests")
        return True
    reason = budget.used_up(usage, options)
    if reason is None:
        return False
    budget.stop_job(job, reason)
    return True


def note_llm_outage(job_id: uuid.UUID, message: str) -> bool:
    """Record that a step found the LLM unreachable; fail the job (and return True) once every
    request has failed for longer than the configured time."""
    timeout = get_settings().llm_unreachable_timeout_s
    now = datetime.now(UTC)
    with session_scope() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None or JobStatus(job.status).finished:
            return True
        job.heartbeat_at = now
        if job.llm_unavailable_since is None:
            job.llm_unavailable_since = now
            return False
        if (now - job.llm_unavailable_since).total_seconds() < timeout:
            return False
        mark_failed(
            job,
            f"LLM backend unreachable for {timeout:.0f} s (every request failed); last error: "
            f"{message}",
        )
    forget_job_index(job_id)
    return True


def finalize_if_complete(job_id: uuid.UUID) -> bool:
    """Mark the job succeeded once it has all its instructions and every one has instances
    (and every candidate its ROUGE-L score, which a dead worker may have left unstored)."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        ready = job is not None and job.status == JobStatus.RUNNING and job.instructions_complete
    if ready:
        store_missed_scores(job_id)
    with session_scope() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None or job.status != JobStatus.RUNNING or not job.instructions_complete:
            return False
        if undecided_through(session, job_id, None):
            return False
        job.status = JobStatus.SUCCEEDED
        job.finished_at = datetime.now(UTC)
        # The journal keeps the answers of rounds dropped past the target: an extension of the
        # job plans those rounds again and takes them (app/services/extend.py).
    forget_job_index(job_id)
    return True
