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

from app.localmodel import LocalModelUnavailable, check_installed, ensure_model

pytestmark = [pytest.mark.localmodel, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding the assembled model, shared by the tests of this run."""
    try:
        check_installed()
    except LocalModelUnavailable as exc:
        if os.environ.get("SELFINSTRUCT_REQUIRE_LOCAL_MODEL") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    cache = Path(
        os.environ.get("SELFINSTRUCT_TEST_MODEL_CACHE") or tmp_path_factory.mktemp("model")
    )
    ensure_model(cache)
    return cache


def data_dir_with_model(cache: Path, data_dir: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "models").symlink_to(cache / "models", target_is_directory=True)
    return data_dir


def test_demo_generates_real_examples_with_the_local_model(
    model_cache: Path, tmp_path: Path
) -> None:
    """The README's first command, minus the virtualenv: nothing configured, the local model."""
    data_dir = data_dir_with_model(model_cache, tmp_path / "data")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY")
    }
    env["SELFINSTRUCT_DATA_DIR"] = str(data_dir)
    output = tmp_path / "examples.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "app", "demo", "-n", "6", "-o", str(output)],
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
    assert len(instructions) <= 6
    log = (data_dir / "logs" / "local-model.log").read_text()
    assert "POST /v1/completions" in log
    # The model server and the worker are gone when the command returns.
    leftover = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", leftover.stdout


def test_ctrl_c_stops_the_model_server_and_worker(model_cache: Path, tmp_path: Path) -> None:
    data_dir = data_dir_with_model(model_cache, tmp_path / "data")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY")
    }
    env["SELFINSTRUCT_DATA_DIR"] = str(data_dir)
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
