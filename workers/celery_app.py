"""The Celery application, configured from Settings. Creating it does no I/O."""

from __future__ import annotations

from celery import Celery
from celery.signals import setup_logging, worker_process_init

from app.config import Settings, get_settings
from app.db import reset_engine

ROUND_TASK = "selfinstruct.run_round"
INSTANCES_TASK = "selfinstruct.generate_instances"
MIXTURE_TASK = "selfinstruct.build_mixture"
QUEUE = "selfinstruct"


def create_celery(settings: Settings) -> Celery:
    app = Celery("selfinstruct", broker=settings.resolved_broker_url, include=["workers.tasks"])
    app.conf.update(
        task_default_queue=QUEUE,
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
        app.conf.broker_transport_options = {"visibility_timeout": 3600}
    return app


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
