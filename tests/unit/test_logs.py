"""Log lines as JSON objects or text, each with the job it belongs to."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

import pytest

from app.config import Settings
from app.logs import configure_logging, job_context


@pytest.fixture(autouse=True)
def restore_root_logger() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_job_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"))
    with job_context("0f2c-job"):
        logging.getLogger("app.services.pipeline").info("round %d: %d accepted", 3, 5)
    logging.getLogger("app").warning("no job here")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["message"] == "round 3: 5 accepted" and first["job_id"] == "0f2c-job"
    assert first["level"] == "INFO" and first["logger"] == "app.services.pipeline"
    assert "time" in first and isinstance(first["process"], int)
    assert second["job_id"] is None and second["level"] == "WARNING"


def test_text_lines_name_the_job(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="text"))
    with job_context("abc"):
        logging.getLogger("x").info("hello")
    assert "job=abc: hello" in capsys.readouterr().err


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log_format"):
        Settings(log_format="xml")  # type: ignore[arg-type]


class _BlockedStream:
    """A stderr whose writes wait until released, like a pipe nobody is reading."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.released.wait(10)
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_queued_logging_never_waits_for_the_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API's event loop logs a line per request: a slow stderr must not hold it up, and
    every line, with its job id, arguments and traceback, is still written."""
    stream = _BlockedStream()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(Settings(log_format="json"), queued=True)
    started = time.perf_counter()
    with job_context("queued-job"):
        for n in range(50):
            logging.getLogger("app.requests").info("GET /v1/jobs/%d 200", n)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("app").exception("failed")
    assert time.perf_counter() - started < 1.0  # the writes are all still blocked
    assert stream.lines == []
    stream.released.set()
    configure_logging(Settings(log_format="json"))  # stops the writer once it has written all
    records = [json.loads(line) for line in "".join(stream.lines).splitlines()]
    assert [r["message"] for r in records[:50]] == [f"GET /v1/jobs/{n} 200" for n in range(50)]
    assert {r["job_id"] for r in records} == {"queued-job"}
    assert "ValueError: boom" in records[50]["message"]
