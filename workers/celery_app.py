"""The Celery application, configured from Settings. Creating it does no I/O."""

from __future__ import annotations

import logging
import uuid

from celery import Celery
from celery.signals import setup_logging, task_prerun, worker_process_init

from app.config import Settings, get_settings
from app.db import reset_engine
from app.services.fairness import PRIORITY_STEPS

ROUND_TASK = "selfinstruct.run_round"
INSTANCES_TASK = "selfinstruct.generate_instances"
MIXTURE_TASK = "selfinstruct.build_mixture"
QUEUE = "selfinstruct"  # bulk work: instance generation, mixtures
# Step 1, the job's critical path, has a queue of its own that workers read first, so a round
# never waits behind a backlog of instance tasks (only for a free pool process).
ROUND_QUEUE = "selfinstruct.rounds"
WORKER_QUEUES = (ROUND_QUEUE, QUEUE)


def create_celery(settings: Settings) -> Celery:
    app = Celery("selfinstruct", broker=settings.resolved_broker_url, include=["workers.tasks"])
    app.conf.update(
        task_default_queue=QUEUE,
        task_routes={ROUND_TASK: {"queue": ROUND_QUEUE}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        enable_utc=True,
    )
    if not settings.resolved_broker_url.startswith("sqla+"):
        # Longer than the longest task, so an unacknowledged round is not redelivered early.
        # (The SQLAlchemy transport passes its options to create_engine and has no such timeout.)
        # Priorities (0 first) carry fairness between API keys: app.services.fairness.
        app.conf.broker_transport_options = {
            "visibility_timeout": 3600,
            "priority_steps": PRIORITY_STEPS,
            "sep": ":",
            "queue_order_strategy": "priority",
        }
    return app


def _survive_broker_restarts() -> None:
    """Keep the worker alive when Redis restarts under it.

    On a lost broker connection, kombu 5.x closes the channel and then tries to restore its
    unacknowledged messages through a new connection pool built from a transport it has already
    detached (`connection.client` is None), and the AttributeError that follows ends the whole
    worker ("Unrecoverable error"; seen on every Redis restart in our fault tests). Raised as a
    connection error instead, kombu treats it as the broker being away and reconnects; the
    messages it could not restore come back after the visibility timeout, and the sweeper sends
    their work again sooner. Patched here because no setting avoids it and no kombu release
    fixes it yet.
    """
    import redis.exceptions
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, "_selfinstruct_guarded", False):
        return

    def connparams(self: kombu_redis.Channel, asynchronous: bool = False) -> dict[str, object]:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is already closed")
        return original(self, asynchronous=asynchronous)

    connparams._selfinstruct_guarded = True  # type: ignore[attr-defined]
    kombu_redis.Channel._connparams = connparams  # type: ignore[method-assign]


_survive_broker_restarts()
celery_app = create_celery(get_settings())


@setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_: object) -> None:
    """Our handler and format instead of Celery's, so worker lines carry job ids."""
    from app.logs import configure_logging

    configure_logging(get_settings(), loglevel or "INFO")


@worker_process_init.connect
def _fresh_engine_per_process(**_: object) -> None:
    """A connection pool must not cross a fork."""
    reset_engine()


@task_prerun.connect
def _message_left_the_queue(
    task: object = None, args: tuple[object, ...] | None = None, **_: object
) -> None:
    """Fairness: a job's message has left the queue, so its key's backlog is one shorter."""
    if getattr(task, "name", None) in (ROUND_TASK, INSTANCES_TASK) and args:
        from app.services.queue import job_started

        try:
            job_started(uuid.UUID(str(args[0])))
        except Exception:  # fairness is best effort; the task itself must run
            logging.getLogger(__name__).warning("fairness: no backlog update", exc_info=True)
