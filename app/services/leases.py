"""Claims on work units, kept alive by a heartbeat while the task holding them runs.

A job's next round is claimed in its row (round_claim_token, round_claimed_until), an instance
batch in its instructions' rows (claim_token, claimed_until), each by a conditional UPDATE: a
second copy of a message finds the work held and skips it, so work whose task is alive is never
done (and paid for) twice. A thread in each worker process renews the claims of the tasks running
in it every `heartbeat_interval_s`, and touches their jobs' heartbeat_at. A task that ends by
scheduling its own follow-up (a retry, a Batch API poll) hands its claims to that message, which
carries the token. A claim not renewed for `job_lease_s` belongs to a dead task: the sweeper
(app/services/sweeper.py) sends its work again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import session_scope
from app.models import InstancesState, Instruction, Job, JobStatus

log = logging.getLogger(__name__)

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass
class Hold:
    """What one running task holds: its job, its claim token and the work it has claimed."""

    job_id: uuid.UUID
    token: uuid.UUID = field(default_factory=uuid.uuid4)
    round: bool = False
    instruction_ids: frozenset[uuid.UUID] = frozenset()
    keep_for_s: float | None = None  # set by hand_over: the claims outlive the task

    def hand_over(self, countdown_s: float) -> str:
        """Keep the claims for a follow-up message due in `countdown_s`; its claim argument."""
        self.keep_for_s = countdown_s
        return str(self.token)


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def lease() -> timedelta:
    return timedelta(seconds=get_settings().job_lease_s)


# --- claiming ----------------------------------------------------------------------------------


def claim_round(session: Session, job_id: uuid.UUID, round_no: int, hold: Hold) -> bool:
    """Take the job's round `round_no` for this task; False while a live task holds it (or the
    round is no longer the next one)."""
    now = datetime.now(UTC)
    taken = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.rounds_completed == round_no - 1,
            _free_or_ours(Job.round_claim_token, Job.round_claimed_until, hold.token, now),
        )
        .values(
            round_claim_token=hold.token,
            round_claimed_until=now + lease(),
            round_claimed_by=holder_name(),
            heartbeat_at=now,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken:
        hold.round = True
    return bool(taken)


def claim_instructions(
    session: Session, job_id: uuid.UUID, instruction_ids: Sequence[uuid.UUID], hold: Hold
) -> list[uuid.UUID]:
    """Take the pending instructions among `instruction_ids` nobody else holds; the ids taken.

    Call it after the job row has been updated in the same transaction, so claims of one job's
    instructions queue on that row lock instead of deadlocking with each other.
    """
    now = datetime.now(UTC)
    session.execute(
        update(Instruction)
        .where(
            Instruction.job_id == job_id,
            Instruction.id.in_(list(instruction_ids)),
            Instruction.instances_state == InstancesState.PENDING,
            _free_or_ours(Instruction.claim_token, Instruction.claimed_until, hold.token, now),
        )
        .values(claim_token=hold.token, claimed_until=now + lease())
        .execution_options(synchronize_session=False)
    )
    taken = list(
        session.scalars(
            select(Instruction.id).where(
                Instruction.id.in_(list(instruction_ids)),
                Instruction.claim_token == hold.token,
                Instruction.instances_state == InstancesState.PENDING,
            )
        )
    )
    hold.instruction_ids = hold.instruction_ids | set(taken)
    return taken


def _free_or_ours(token_column, until_column, token: uuid.UUID, now: datetime):  # type: ignore[no-untyped-def]
    return or_(token_column.is_(None), until_column < now, token_column == token)


# --- renewing, handing over and releasing -------------------------------------------------------


def renew(holds: Iterable[Hold], now: datetime | None = None) -> None:
    """One heartbeat: touch each job and extend its holds' claims, one short transaction per
    job (job row first, as every writer of a job does, so beats never deadlock with commits)."""
    now = now or datetime.now(UTC)
    by_job: dict[uuid.UUID, list[Hold]] = {}
    for hold in holds:
        by_job.setdefault(hold.job_id, []).append(hold)
    for job_id in sorted(by_job):
        with session_scope() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_(ACTIVE))
                .values(heartbeat_at=now)
                .execution_options(synchronize_session=False)
            )
            for hold in by_job[job_id]:
                _extend(session, hold, now + lease())


def _extend(session: Session, hold: Hold, until: datetime) -> None:
    _update_claims(session, hold, {"round_claimed_until": until}, {"claimed_until": until})


def settle(hold: Hold) -> None:
    """At the end of a task: hand its claims to the follow-up, or give them up."""
    if not hold.round and not hold.instruction_ids:
        return
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == hold.job_id)
            .values(heartbeat_at=datetime.now(UTC))
            .execution_options(synchronize_session=False)
        )
        if hold.keep_for_s is not None:
            _extend(session, hold, datetime.now(UTC) + timedelta(seconds=hold.keep_for_s) + lease())
        else:
            _release(session, hold)


def _release(session: Session, hold: Hold) -> None:
    _update_claims(
        session,
        hold,
        {"round_claim_token": None, "round_claimed_until": None, "round_claimed_by": None},
        {"claim_token": None, "claimed_until": None},
    )


def _update_claims(
    session: Session, hold: Hold, job_values: dict[str, Any], instruction_values: dict[str, Any]
) -> None:
    """Write to the round and instructions `hold` claims, only where the claim is still its
    own: another task may have taken one over once its lease ran out."""
    if hold.round:
        session.execute(
            update(Job)
            .where(Job.id == hold.job_id, Job.round_claim_token == hold.token)
            .values(**job_values)
            .execution_options(synchronize_session=False)
        )
    if hold.instruction_ids:
        session.execute(
            update(Instruction)
            .where(
                Instruction.id.in_(list(hold.instruction_ids)),
                Instruction.claim_token == hold.token,
            )
            .values(**instruction_values)
            .execution_options(synchronize_session=False)
        )


# --- the heartbeat thread ----------------------------------------------------------------------


class _Heartbeat:
    """One thread per process renewing the claims of every task running in it."""

    def __init__(self) -> None:
        self._holds: dict[int, Hold] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._wake = threading.Event()  # set to beat now (tests) instead of after the interval

    def add(self, hold: Hold) -> None:
        with self._lock:
            self._restart_after_fork()
            self._holds[id(hold)] = hold
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="selfinstruct-heartbeat", daemon=True
                )
                self._thread.start()

    def remove(self, hold: Hold) -> None:
        with self._lock:
            self._holds.pop(id(hold), None)

    def holds(self) -> list[Hold]:
        with self._lock:
            return list(self._holds.values())

    def _restart_after_fork(self) -> None:
        """A forked pool child inherits the registry but not the thread."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._holds.clear()
            self._thread = None

    def beat_now(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        me = os.getpid()
        while os.getpid() == me:
            interval = get_settings().heartbeat_interval_s
            self._wake.wait(interval)
            self._wake.clear()
            holds = self.holds()
            if not holds:
                continue
            try:
                renew(holds)
            except Exception:  # a database outage: the claims last a lease; try again
                log.warning("heartbeat failed; retrying in %.0f s", interval, exc_info=True)


_heartbeat = _Heartbeat()


@contextmanager
def holding(job_id: uuid.UUID, token: str | uuid.UUID | None = None) -> Iterator[Hold]:
    """A task's claims for its duration: renewed while it runs, then handed over or released,
    whether it returns or raises."""
    hold = Hold(job_id) if token is None else Hold(job_id, uuid.UUID(str(token)))
    _heartbeat.add(hold)
    try:
        yield hold
    finally:
        _heartbeat.remove(hold)
        try:
            settle(hold)
        except Exception:  # the claims then simply expire after a lease
            log.warning("could not settle the claims of job %s", job_id, exc_info=True)


def running_holds() -> list[Hold]:
    """The holds this process renews (for tests and diagnostics)."""
    return _heartbeat.holds()


def beat_now() -> None:
    """Renew this process's claims now rather than at the next interval (for tests)."""
    _heartbeat.beat_now()
