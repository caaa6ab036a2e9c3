"""Celery tasks: ids in, one pipeline call, follow-up work enqueued after the commit."""

from __future__ import annotations

import logging
import uuid

from celery import Task

from app.config import get_settings
from app.llm.base import LLMPermanentError, LLMTransientError
from app.services import pipeline
from app.services.llm import llm_for
from app.services.queue import enqueue_instances, enqueue_round
from workers.celery_app import INSTANCES_TASK, ROUND_TASK, celery_app

log = logging.getLogger(__name__)


def _max_retries() -> int:
    return get_settings().task_max_retries


def _backoff(retries: int) -> float:
    return min(60.0, get_settings().task_retry_backoff_s * 2**retries)


@celery_app.task(name=ROUND_TASK, bind=True, max_retries=None)
def run_round(self: Task, job_id: str, round_no: int) -> None:
    jid = uuid.UUID(job_id)
    try:
        result = pipeline.run_round(jid, round_no, llm_for)
    except LLMPermanentError as exc:
        pipeline.fail_job(jid, f"LLM backend refused the request: {exc}")
        return
    except LLMTransientError as exc:
        if self.request.retries >= _max_retries():
            pipeline.fail_job(
                jid,
                f"LLM backend unavailable after {_max_retries()} retries of round {round_no}: {exc}",
            )
            return
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from exc
    for batch in result.instance_batches:
        enqueue_instances(jid, batch)
    if result.next_round is not None:
        enqueue_round(jid, result.next_round)
    pipeline.finalize_if_complete(jid)


@celery_app.task(name=INSTANCES_TASK, bind=True, max_retries=None)
def generate_instances(self: Task, job_id: str, instruction_ids: list[str]) -> None:
    jid = uuid.UUID(job_id)
    ids = [uuid.UUID(i) for i in instruction_ids]
    try:
        pipeline.generate_instances(jid, ids, llm_for)
    except LLMPermanentError as exc:
        pipeline.fail_job(jid, f"LLM backend refused the request: {exc}")
        return
    except LLMTransientError as exc:
        if self.request.retries < _max_retries():
            raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from exc
        log.warning("job %s: giving up on instances of %d instructions: %s", jid, len(ids), exc)
        pipeline.mark_instances_failed(jid, ids)
    pipeline.finalize_if_complete(jid)
