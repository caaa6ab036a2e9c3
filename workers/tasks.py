"""Celery tasks: ids in, one pipeline call, follow-up work enqueued after the commit.

Retries: an unreachable LLM is retried with exponential backoff and jitter until the job's outage
limit (`llm_unreachable_timeout_s`) or the retry count runs out; a lost database connection is
retried the same way. Anything else is a bug and fails loudly in the worker log; the sweeper
then re-sends the step when its claim runs out.

Claims (app/services/leases.py): each task holds the work it does while it runs, renewed by a
heartbeat thread of its worker process; a retry or a Batch API poll inherits them, through the
`claim` argument carrying the holder's token.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid

from celery import Task
from celery.signals import task_postrun, task_prerun, worker_ready, worker_shutdown
from sqlalchemy.exc import InterfaceError, OperationalError

from app.config import get_settings
from app.llm.base import LLMPermanentError, LLMTransientError
from app.logs import current_job_id
from app.services import (
    batches,
    completion,
    instances,
    leases,
    mixtures,
    pipeline,
    round_driver,
    sweeper,
)
from app.services.batches import BatchPending
from app.services.llm import llm_for
from app.services.queue import enqueue_instances, enqueue_round
from workers.celery_app import INSTANCES_TASK, MIXTURE_TASK, ROUND_TASK, celery_app

log = logging.getLogger(__name__)

DATABASE_ERRORS = (OperationalError, InterfaceError)


def _max_retries() -> int:
    return get_settings().task_max_retries


def _backoff(retries: int) -> float:
    """Exponential, capped at 60 s, with full jitter on top so retries of many tasks spread out."""
    base = min(60.0, get_settings().task_retry_backoff_s * 2**retries)
    return base + random.uniform(0, base)


def _retry(
    self: Task,
    hold: leases.Hold,
    exc: Exception,
    countdown: float,
    args: tuple[object, ...] | None = None,
) -> Exception:
    """A retry that inherits the task's claims, so no sweeper re-sends the work meanwhile."""
    kwargs = {**(self.request.kwargs or {}), "claim": hold.hand_over(countdown)}
    return self.retry(args=args, exc=exc, countdown=countdown, kwargs=kwargs)


@celery_app.task(name=ROUND_TASK, bind=True, max_retries=None)
def run_round(self: Task, job_id: str, round_no: int, claim: str | None = None) -> None:
    jid = uuid.UUID(job_id)
    with leases.holding(jid, claim) as hold:
        try:
            result = round_driver.run_rounds(
                jid, round_no, llm_for, hold, lambda batches: _send_instances(jid, batches)
            )
        except (BatchPending, pipeline.InstancesPending) as pending:
            # A poll: a new message that keeps the retry count; a balanced round waiting for
            # steps 2-3 goes behind the instance tasks it waits for.
            token = hold.hand_over(pending.poll_after_s)
            enqueue_round(
                jid,
                round_no,
                countdown=pending.poll_after_s,
                claim=token,
                behind_bulk=isinstance(pending, pipeline.InstancesPending),
                retries=self.request.retries,
            )
            return
        except LLMPermanentError as exc:
            completion.fail_job(jid, f"LLM backend refused the request: {exc}")
            return
        except LLMTransientError as exc:
            if completion.note_llm_outage(jid, str(exc)):
                return
            if self.request.retries >= _max_retries():
                completion.fail_job(
                    jid,
                    f"LLM backend unavailable after {_max_retries()} retries of round "
                    f"{round_no}: {exc}",
                )
                return
            raise _retry(self, hold, exc, _backoff(self.request.retries)) from exc
        except DATABASE_ERRORS as exc:
            raise _retry(self, hold, exc, _backoff(min(self.request.retries, 4))) from exc
    _send_instances(jid, result.instance_batches)
    if result.next_round is not None:
        enqueue_round(jid, result.next_round, behind_bulk=result.next_round_after_instances)
    completion.finalize_if_complete(jid)


def _send_instances(job_id: uuid.UUID, batches: list[list[uuid.UUID]]) -> None:
    """Steps 2 and 3 for a stored round's accepted instructions (already committed)."""
    for batch in batches:
        enqueue_instances(job_id, batch)


@celery_app.task(name=INSTANCES_TASK, bind=True, max_retries=None)
def generate_instances(
    self: Task, job_id: str, instruction_ids: list[str], claim: str | None = None
) -> None:
    jid = uuid.UUID(job_id)
    ids = [uuid.UUID(i) for i in instruction_ids]
    with leases.holding(jid, claim) as hold:
        try:
            instances.generate_instances(jid, ids, llm_for, hold)
        except BatchPending as pending:  # as in run_round
            token = hold.hand_over(pending.poll_after_s)
            enqueue_instances(
                jid, ids, countdown=pending.poll_after_s, claim=token, retries=self.request.retries
            )
            return
        except LLMPermanentError as exc:
            completion.fail_job(jid, f"LLM backend refused the request: {exc}")
            return
        except LLMTransientError as exc:
            if completion.note_llm_outage(jid, str(exc)):
                return
            if isinstance(exc, instances.InstancesWaiting):  # it may have taken more than `ids`
                ids = exc.instruction_ids
            if self.request.retries < _max_retries():
                waiting = (job_id, [str(i) for i in ids])
                raise _retry(self, hold, exc, _backoff(self.request.retries), waiting) from exc
            log.warning("job %s: giving up on instances of %d instructions: %s", jid, len(ids), exc)
            instances.mark_instances_failed(jid, ids)
        except DATABASE_ERRORS as exc:
            raise _retry(self, hold, exc, _backoff(min(self.request.retries, 4))) from exc
    completion.finalize_if_complete(jid)


@celery_app.task(name=MIXTURE_TASK, bind=True, max_retries=None)
def build_mixture(self: Task, mixture_id: str) -> None:
    mid = uuid.UUID(mixture_id)
    try:
        mixtures.build(mid, llm_for)
    except DATABASE_ERRORS as exc:
        if self.request.retries >= _max_retries():
            mixtures.fail(mid, f"database unavailable ({type(exc).__name__})")
            return
        raise self.retry(exc=exc, countdown=_backoff(min(self.request.retries, 4))) from exc
    except Exception as exc:  # a bug: say so on the mixture rather than leave it running
        log.exception("mixture %s failed", mid)
        mixtures.fail(mid, f"internal error ({type(exc).__name__}); see the worker log")


# --- log context: every line a task writes names its job (or mixture) ----------------------------


@task_prerun.connect
def _enter_job(args: tuple[object, ...] | None = None, **_: object) -> None:
    current_job_id.set(str(args[0]) if args else None)


@task_postrun.connect
def _leave_job(**_: object) -> None:
    current_job_id.set(None)


# --- the sweeper: one thread in each worker's main process --------------------------------------


def sweep_once() -> int:
    """Send again the next step of every stalled job, and cancel the Batch API batches of jobs
    that have finished; returns how many jobs were re-sent."""
    resends = sweeper.stalled_jobs()
    for resend in resends:
        log.warning(
            "job %s stalled: re-sending round %s and %d instance batches",
            resend.job_id,
            resend.round_no,
            len(resend.instance_batches),
        )
        for batch in resend.instance_batches:
            enqueue_instances(resend.job_id, batch)
        if resend.round_no is not None:
            enqueue_round(resend.job_id, resend.round_no)
    batches.cancel_abandoned()
    return len(resends)


_stop_sweeping = threading.Event()


def _sweep_forever() -> None:
    interval = get_settings().sweep_interval_s
    while not _stop_sweeping.wait(interval):
        try:
            sweep_once()
        except Exception:  # a database or broker outage: try again next interval
            log.exception("sweep failed")


@worker_ready.connect
def _start_sweeper(**_: object) -> None:
    _stop_sweeping.clear()
    threading.Thread(target=_sweep_forever, name="selfinstruct-sweeper", daemon=True).start()


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    _stop_sweeping.set()
