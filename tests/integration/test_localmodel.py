"""The real local model: the bundled GGUF assembled once and served by llama-cpp-python.

Slow (seconds per call on 2 cores) but never silently skipped in CI:
SELFINSTRUCT_REQUIRE_LOCAL_MODEL=1 turns a missing `local` extra into a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.localmodel import (
    LocalModelServer,
    LocalModelUnavailable,
    check_installed,
    ensure_model,
)

pytestmark = [pytest.mark.localmodel, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(data_dir: Path) -> Iterator[LocalModelServer]:
    with LocalModelServer(data_dir) as running:
        yield running


def wait_until_gone(pid: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if ") Z " in Path(f"/proc/{pid}/stat").read_text():
                return True  # a zombie: it has exited and waits for its new parent to reap it
        except OSError:
            return True
        time.sleep(0.2)
    return False


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)
    with pytest.raises(LocalModelUnavailable) as raised:
        check_installed()
    assert "pip install -e '.[local]'" in str(raised.value)
    assert "pip install 'selfinstruct[local]'" in str(raised.value)


def test_model_is_assembled_once_then_reused(model_cache: Path) -> None:
    path = ensure_model(model_cache)
    mtime_before = path.stat().st_mtime_ns
    assert ensure_model(model_cache) == path
    assert path.stat().st_mtime_ns == mtime_before, "a verified model must not be rebuilt"
    assert path.stat().st_size > 100_000_000
    assert not list(path.parent.glob("*.partial-*"))


def test_server_completes_through_openai_and_is_gone_after_exit(data_dir: Path) -> None:
    import openai

    with LocalModelServer(data_dir) as server:
        assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
        pid = server.pid
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=120)
        reply = client.completions.create(
            model=server.model,
            prompt="Come up with a series of tasks:\n1. Name three primary colors.\n2.",
            max_tokens=24,
            temperature=0,
            stop=["\n\n"],
        )
        assert reply.choices[0].text.strip()
        assert reply.usage is not None
        assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert pid is not None and wait_until_gone(pid)
    assert not server.running()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.base_url}/models", timeout=2, trust_env=False)
    assert (data_dir / "logs" / "local-model.log").exists()


def test_a_running_server_refuses_a_second_start(server: LocalModelServer) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        server.start()
    assert server.running()


def test_an_exception_in_the_block_stops_the_server(data_dir: Path) -> None:
    pid = None
    with pytest.raises(ValueError, match="boom"), LocalModelServer(data_dir) as server:
        pid = server.pid
        raise ValueError("boom")
    assert pid is not None and wait_until_gone(pid)


def test_a_server_that_dies_reports_its_log(data_dir: Path) -> None:
    class CrashingServer(LocalModelServer):
        def command(self, model_path: Path) -> list[str]:
            return [sys.executable, "-c", "print('no model today'); raise SystemExit(3)"]

    with pytest.raises(LocalModelUnavailable, match=r"(?s)exited with code 3.*no model today"):
        CrashingServer(data_dir).start()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from app.localmodel import LocalModelServer

    with LocalModelServer(Path(sys.argv[1])) as server:
        print(server.pid, flush=True)
        time.sleep(600)
    """
)


@pytest.mark.parametrize("parent_signal", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_the_server_does_not_outlive_its_parent(data_dir: Path, parent_signal: int) -> None:
    """Ctrl-C unwinds through __exit__; a SIGKILL skips every handler, the death signal covers it."""
    parent = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline() or "0")
        assert server_pid, parent.stderr.read() if parent.stderr else ""
        parent.send_signal(parent_signal)
        parent.wait(timeout=60)
        assert wait_until_gone(server_pid), "the model server outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
