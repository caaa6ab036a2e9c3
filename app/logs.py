"""Logging for the API and the workers: text for people, JSON lines for log collectors.

Every record carries the id of the job (or mixture) being worked on, from a context variable
that the Celery tasks set, so one job's lines can be followed across worker processes.
"""

from __future__ import annotations

import logging
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


def configure_logging(settings: Settings, level: int | str = logging.INFO) -> None:
    """One stderr handler on the root logger; libraries' loggers propagate to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobContext())
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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
