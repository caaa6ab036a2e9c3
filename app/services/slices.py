"""How long a job's round task keeps sending rounds before it gives its pool process back.

A round task that sent for ever would keep other jobs' messages waiting for a process, so it
stops sending after a slice, stores what it has in flight and hands the next round to a new
message. That hand-over is not free: while the old task drains, its rounds come back one by one,
and the new task's first round is stored one round latency after it starts, so the job stores no
new instructions for about two round latencies and steps 2 and 3 run dry. When no other job is
queued or running nobody waits for the process, so the slice is extended, up to `LONGEST_S` in
all (a worker's warm shutdown waits for its tasks). A job submitted meanwhile finds this task
handing over at the end of its current slice.
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import select

from app.db import session_scope
from app.models import Job
from app.services.leases import ACTIVE

LONGEST_S = 300.0  # the most one task sends for, even when its job runs alone


def others_active(job_id: uuid.UUID) -> bool:
    """Whether another job is queued or running (a query on the indexed status column)."""
    with session_scope() as session:
        other = session.scalar(
            select(Job.id).where(Job.status.in_(ACTIVE), Job.id != job_id).limit(1)
        )
    return other is not None


class Slice:
    """One task's time for sending: `over()` costs nothing until the slice ends, then one query
    per extension."""

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
        fits = now - self.started + self.slice_s <= LONGEST_S
        if fits and not others_active(self.job_id):
            self.until = now + self.slice_s
            return False
        self._over = True
        return True
