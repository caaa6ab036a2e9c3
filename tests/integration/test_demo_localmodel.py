"""The README's first command on the real local model: real, parsed, filtered examples.

Slow (the model generates at tens of tokens per second on 2 cores) but never skipped in CI:
SELFINSTRUCT_REQUIRE_LOCAL_MODEL=1 turns a missing `local` extra into a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.localmodel, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]


def embedded_env(data_dir: Path) -> dict[str, str]:
    """Nothing configured but the data directory: the embedded stack and the local model."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY")
    }
    env["SELFINSTRUCT_DATA_DIR"] = str(data_dir)
    return env


def test_demo_generates_real_examples_with_the_local_model(data_dir: Path, tmp_path: Path) -> None:
    """The README's first command, minus the virtualenv: nothing configured, the local model."""
    env = embedded_env(data_dir)
    output = tmp_path / "examples.jsonl"
    result = subprocess.run(
        # 16 instructions: the model samples without a fixed seed, and the 270M base model had
        # none of its instances pass the filters once in four CI runs with 6, and once in about
        # five with 10.
        [sys.executable, "-m", "app", "demo", "-n", "16", "-o", str(output)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "local model" in result.stderr and "succeeded" in result.stderr
    examples = [json.loads(line) for line in output.read_text().splitlines()]
    assert examples, "the local model produced no accepted example"
    for example in examples:
        assert example["instruction"].strip() and example["output"].strip()
        assert example["input"].strip() != example["output"].strip()
    instructions = {e["instruction"] for e in examples}
    assert len(instructions) <= 16
    log = (data_dir / "logs" / "local-model.log").read_text()
    assert "POST /v1/completions" in log
    # The model server and the worker are gone when the command returns.
    leftover = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", leftover.stdout


def test_ctrl_c_stops_the_model_server_and_worker(data_dir: Path, tmp_path: Path) -> None:
    env = embedded_env(data_dir)
    log = tmp_path / "demo.log"
    with log.open("wb") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "app", "demo", "-n", "500", "-o", str(tmp_path / "x.jsonl")],
            env=env,
            cwd=REPO_ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while "seed set:" not in log.read_text() and time.monotonic() < deadline:
            assert demo.poll() is None, log.read_text()
            time.sleep(0.5)
        time.sleep(3)  # the job is running: the model is busy
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) != 0
    leftover = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
