"""How long a round or instance task keeps taking its job's work before it gives its pool
process back.

A task that took work for ever would keep other jobs' messages waiting for a process, so a task
stops taking after a slice of `slice_s`, finishes what it holds and lets its follow-up queue up
behind the others. Finishing is not free: a task past its slice drains (its requests in flight
come back one by one, the slowest last) and nothing new goes out meanwhile; and a job's tasks
started together end their slices together, so the job's whole share of the backend empties at
once. When no other job is queued or running, nobody is waiting for the process, so the slice is
extended, up to `LONGEST_S` in all (a worker's warm shutdown waits for its tasks). A job submitted
meanwhile waits at most one more slice.
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import select

from app.db import session_scope
from app.models import Job
from app.services.leases import ACTIVE

LONGEST_S = 300.0  # the most one task takes work for, even when its job runs alone


def others_active(job_id: uuid.UUID) -> bool:
    """Whether another job is queued or running (the jobs table is small; status is indexed)."""
    with session_scope() as session:
        other = session.scalar(
            select(Job.id).where(Job.status.in_(ACTIVE), Job.id != job_id).limit(1)
        )
    return other is not None


class Slice:
    """One task's time for taking work. `over()` is cheap until the slice ends; then it asks
    the database once per extension."""

    def __init__(self, job_id: uuid.UUID, slice_s: float) -> None:
        self.job_id, self.slice_s = job_id, slice_s
        self.started = time.monotonic()
        self.until = self.started + slice_s
        self._over = False

    def over(self) -> bool:
        if self._over:
            return True
        now = time.monotonic()
        if now < self.until:
            return False
        if now - self.started + self.slice_s <= LONGEST_S and not others_active(self.job_id):
            self.until = now + self.slice_s
            return False
        self._over = True
        return True
