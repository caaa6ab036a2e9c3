"""Logging for the API and the workers: text for people, JSON lines for log collectors.

Every record carries the id of the job (or mixture) being worked on, from a context variable
that the Celery tasks set, so one job's lines can be followed across worker processes.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from app.config import Settings

current_job_id: ContextVar[str | None] = ContextVar("current_job_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]%(job_suffix)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s %(job_id)s"


class JobContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = getattr(record, "job_id", None) or current_job_id.get()
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None)
        record.job_suffix = f" job={job_id}" if job_id else ""
        return super().format(record)


@contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)


def configure_logging(
    settings: Settings, level: int | str = logging.INFO, *, queued: bool = False
) -> None:
    """One stderr handler on the root logger; libraries' loggers propagate to it.

    `queued` (the API server): records go through a queue to a thread that writes them. An
    access-log line per request written from the event loop was 7 % of the API's samples under
    500 pollers (py-spy), nearly all of it the write to stderr, and the loop answers every
    request. The job id and the message are still taken in the caller's thread; the line is
    formatted and written in the other."""
    _stop_listener()
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                JSON_FIELDS,
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's ANSI copy
            )
        )
    else:
        handler.setFormatter(_TextFormatter(TEXT_FORMAT))
    if queued:
        handler = _through_a_queue(handler)
    handler.addFilter(JobContext())  # reads a context variable: must run in the caller's thread
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


_listener: logging.handlers.QueueListener | None = None


def _through_a_queue(writer: logging.Handler) -> logging.Handler:
    global _listener
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, writer, respect_handler_level=True)
    listener.start()
    _listener = listener
    return logging.handlers.QueueHandler(records)


def _stop_listener() -> None:
    """Stop the logging thread, once it has written what is still queued."""
    global _listener
    if _listener is not None:
        listener, _listener = _listener, None
        listener.stop()


atexit.register(_stop_listener)
