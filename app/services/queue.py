"""Enqueue pipeline steps by task name, so the API never imports worker code."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from workers.celery_app import INSTANCES_TASK, MIXTURE_TASK, ROUND_TASK, celery_app


def enqueue_round(job_id: uuid.UUID, round_no: int, countdown: float | None = None) -> None:
    celery_app.send_task(ROUND_TASK, args=[str(job_id), round_no], countdown=countdown)


def enqueue_instances(
    job_id: uuid.UUID, instruction_ids: Sequence[uuid.UUID], countdown: float | None = None
) -> None:
    celery_app.send_task(
        INSTANCES_TASK, args=[str(job_id), [str(i) for i in instruction_ids]], countdown=countdown
    )


def enqueue_mixture(mixture_id: uuid.UUID) -> None:
    celery_app.send_task(MIXTURE_TASK, args=[str(mixture_id)])
