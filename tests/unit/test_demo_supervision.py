"""The demo stops waiting when a process serving its job dies, and says which and why."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from app.cli.progress import StackFailed, wait_for_job
from app.config import Settings
from app.embedded import EmbeddedStack
from app.localmodel import LocalModelServer


class _RunningJob:
    def __init__(self) -> None:
        self.polls = 0

    def job(self, job_id: str) -> dict[str, Any]:
        self.polls += 1
        progress = {
            "instructions_rejected": {}, "rounds_completed": 1, "instructions_accepted": 0,
            "instructions_with_instances": 0, "instances_accepted": 0, "prompt_tokens": 0,
            "completion_tokens": 0,
        }  # fmt: skip
        return {"id": job_id, "status": "running", "num_instructions": 5, "progress": progress}


def test_wait_for_job_raises_when_the_stack_fails() -> None:
    client = _RunningJob()
    failures = iter([None, None, "the local model server exited"])
    with pytest.raises(StackFailed, match="local model server exited"):
        wait_for_job(
            client,  # type: ignore[arg-type]
            "j",
            Console(file=io.StringIO()),
            poll_s=0.01,
            check=lambda: next(failures),
        )
    assert client.polls == 3


def test_a_crashed_local_model_is_reported_with_its_signal_and_log(tmp_path: Path) -> None:
    server = LocalModelServer(tmp_path)
    server.log_path.parent.mkdir(parents=True)
    server.log_path.write_text("loading model\nready\n")
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    server._process = subprocess.Popen([sys.executable, "-c", crash])
    server._process.wait(timeout=30)
    stack = EmbeddedStack(Settings(data_dir=tmp_path))
    stack.local_model = server
    failure = stack.failure()
    assert failure is not None
    assert failure.startswith("the local model server exited (killed by SIGSEGV)")
    assert failure.endswith("loading model\nready")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    server._process = alive
    try:
        assert stack.failure() is None
    finally:
        alive.kill()
        alive.wait()
