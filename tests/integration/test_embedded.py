"""The embedded default (SQLite + server-less broker + worker process) and the CLI client.

No PostgreSQL or Redis here: these are the paths a newcomer takes with nothing configured.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.apiserver import free_port
from tests.support.fake_llm import FakeLLMServer

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_VARIABLES = ("DATABASE_URL", "CELERY_BROKER_URL", "OPENAI_BASE_URL", "SELFINSTRUCT_API_URL")


def embedded_env(data_dir: Path, llm_base_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    env["SELFINSTRUCT_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    if llm_base_url:
        env["OPENAI_BASE_URL"] = llm_base_url
        env["OPENAI_API_KEY"] = "test-key"
    return env


def selfinstruct(
    *args: str, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_runs_embedded_end_to_end(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    data_dir, output = tmp_path / "data", tmp_path / "examples.jsonl"
    result = selfinstruct(
        "demo", "-n", "12", "-o", str(output), env=embedded_env(data_dir, fake_llm.base_url)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "embedded SQLite" in result.stderr
    assert (data_dir / "selfinstruct.sqlite3").exists()
    examples = [json.loads(line) for line in output.read_text().splitlines()]
    assert examples and len({e["instruction_id"] for e in examples}) <= 12
    assert all(e["instruction"] and e["output"] for e in examples)
    assert f"wrote {len(examples)} examples" in result.stderr.replace("\n", " ")
    assert "instructions accepted: 12" in result.stderr


def test_demo_reports_a_backend_that_is_down(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    env = embedded_env(tmp_path / "data", f"http://127.0.0.1:{port}/v1")
    env["SELFINSTRUCT_LLM_MAX_RETRIES"] = "0"
    env["SELFINSTRUCT_TASK_MAX_RETRIES"] = "1"
    env["SELFINSTRUCT_TASK_RETRY_BACKOFF_S"] = "0.2"
    result = selfinstruct("demo", "-n", "3", "-o", str(tmp_path / "x.jsonl"), env=env, timeout=300)
    assert result.returncode == 1
    assert "failed" in result.stderr


@pytest.fixture(scope="module")
def embedded_server(
    tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeLLMServer
) -> Iterator[str]:
    """`selfinstruct serve --embedded` as a user would run it, in its own process group."""
    tmp = tmp_path_factory.mktemp("embedded-serve")
    port = free_port()
    env = embedded_env(tmp / "data", fake_llm.base_url)
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--embedded", "--port", str(port)],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, tmp / "serve.log")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"serve never became healthy:\n{log.read_text()[-3000:]}")


def test_cli_drives_a_running_server(
    embedded_server: str, tmp_path: Path, default_seeds: Path
) -> None:
    env = {**os.environ, "SELFINSTRUCT_API_URL": embedded_server}
    output = tmp_path / "out.jsonl"
    submitted = selfinstruct(
        "submit", str(default_seeds), "-n", "6", "--wait", "-o", str(output), env=env
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[0]
    assert output.read_text().strip()

    status = selfinstruct("status", job_id, env=env)
    assert status.returncode == 0
    assert json.loads(status.stdout)["status"] == "succeeded"

    listed = selfinstruct("jobs", env=env)
    assert listed.returncode == 0 and job_id[:8] in listed.stdout

    again = tmp_path / "again.jsonl"
    downloaded = selfinstruct("download", job_id, "-o", str(again), env=env)
    assert downloaded.returncode == 0
    assert again.read_text() == output.read_text()

    chat = tmp_path / "chat.jsonl"
    exported = selfinstruct(
        "download",
        job_id,
        "-o",
        str(chat),
        "--format",
        "openai_chat",
        "--system-prompt",
        "Hi.",
        env=env,
    )
    assert exported.returncode == 0, exported.stderr
    first = json.loads(chat.read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]

    started = selfinstruct("submit", str(default_seeds), "-n", "500", env=env)
    other = started.stdout.split()[0]
    cancelled = selfinstruct("cancel", other, env=env)
    assert cancelled.returncode == 0 and cancelled.stdout.split() == [other, "cancelled"]

    rerun = selfinstruct("rerun", other, env=env)
    assert rerun.returncode == 0, rerun.stderr
    again_id = rerun.stdout.split()[0]
    assert rerun.stdout.strip().endswith(f"(rerun of {other})") and again_id != other
    assert json.loads(selfinstruct("status", again_id, env=env).stdout)["rerun_of"] == other
    selfinstruct("cancel", again_id, env=env)


def test_cli_errors_are_one_clear_line(embedded_server: str, tmp_path: Path) -> None:
    env = {**os.environ, "SELFINSTRUCT_API_URL": embedded_server}
    missing = selfinstruct("status", "00000000-0000-0000-0000-000000000000", env=env)
    assert missing.returncode != 0
    assert "not found" in missing.stderr.lower() and "Traceback" not in missing.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "Fine task here.", "instances": []}\nnot json\n')
    rejected = selfinstruct("submit", str(bad), env=env)
    assert rejected.returncode != 0
    assert "line 2" in rejected.stderr and "Traceback" not in rejected.stderr

    down = {**os.environ, "SELFINSTRUCT_API_URL": f"http://127.0.0.1:{free_port()}"}
    unreachable = selfinstruct("jobs", env=down)
    assert unreachable.returncode != 0 and "Traceback" not in unreachable.stderr
