"""Log lines as JSON objects or text, each with the job it belongs to."""

from __future__ import annotations

import json
import logging

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
