"""Run the real service as separate processes (API via uvicorn, Celery workers) for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from app.apiserver import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


class ServiceStack:
    """An API process and any number of worker processes sharing one environment."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        python: str = sys.executable,
        cwd: Path = REPO_ROOT,
    ) -> None:
        """`python` and `cwd`: another interpreter (a plain install's) run away from the repo,
        so that it imports the installed package, not the checkout."""
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.python, self.cwd = python, cwd
        self.log_dir = log_dir
        self.port = free_port()
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        return subprocess.Popen(
            [self.python, "-m", "app", *args],
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_api(self, *extra: str) -> None:
        """Start the API; on a port another process took between picking and binding, on a new one."""
        for attempt in range(3):
            self.api = self._spawn(
                "api", "serve", "--host", "127.0.0.1", "--port", str(self.port), *extra
            )
            try:
                self.wait_healthy()
                return
            except RuntimeError:
                if attempt == 2 or "address already in use" not in self.log_tail("api", 10):
                    raise
                self.port = free_port()

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.api is not None and self.api.poll() is not None:
                raise RuntimeError(f"API exited early:\n{self.log_tail('api')}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"API not healthy after {timeout_s}s:\n{self.log_tail('api')}")

    def start_worker(
        self, concurrency: int = 2, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """`env`: settings for this worker only, over the stack's."""
        name = f"worker{len(self.workers)}"
        proc = self._spawn(
            name, "worker", f"--concurrency={concurrency}", "--loglevel=INFO", env=env
        )
        self.workers.append(proc)
        return proc

    @contextlib.contextmanager
    def worker(
        self, concurrency: int = 2, env: dict[str, str] | None = None
    ) -> Iterator[subprocess.Popen[bytes]]:
        """A worker for the length of a `with` block, stopped with SIGTERM (a warm shutdown)
        when it ends, whatever the test asserted."""
        proc = self.start_worker(concurrency, env)
        try:
            yield proc
        finally:
            self.kill_worker(proc, sig=signal.SIGTERM)

    def wait_until(
        self, condition: Callable[[], object], timeout_s: float, every_s: float = 0.1
    ) -> float:
        """Seconds until `condition()` is true; fails with the stack's logs after `timeout_s`."""
        started = time.monotonic()
        while not condition():
            waited = time.monotonic() - started
            assert waited < timeout_s, f"still false after {timeout_s} s\n{self.logs()}"
            time.sleep(every_s)
        return time.monotonic() - started

    def create_key(self, name: str) -> str:
        """A new API key through the CLI, as an operator would make one."""
        result = subprocess.run(
            [self.python, "-m", "app", "keys", "create", "--name", name],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return result.stdout.strip().splitlines()[-1]

    def cli(self, *args: str, key: str | None = None) -> str:
        """Run the `selfinstruct` client CLI against this stack; its standard output."""
        env = {**self.env, "SELFINSTRUCT_API_URL": self.url}
        if key:
            env["SELFINSTRUCT_API_KEY"] = key
        result = subprocess.run(
            [self.python, "-m", "app", *args],
            env=env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else None
        return httpx.Client(base_url=self.url, timeout=30, headers=headers)

    def kill_worker(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def log_tail(self, name: str, lines: int = 60) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.stem} ---\n{self.log_tail(p.stem)}" for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self) -> None:
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def __enter__(self) -> ServiceStack:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def wait_for_status(
    client: httpx.Client, job_id: str, *, timeout_s: float = 120, resource: str = "jobs"
) -> dict:  # type: ignore[type-arg]
    """Poll a job (or a mixture, with resource="mixtures") until it has finished."""
    deadline = time.monotonic() + timeout_s
    job: dict = {}  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        job = client.get(f"/v1/{resource}/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise TimeoutError(f"{resource} {job_id} still {job.get('status')} after {timeout_s}s: {job}")


@contextlib.contextmanager
def llm_stack(
    *,
    pg_url: str,
    broker_url: str,
    llm_url: str,
    tmp: Path,
    concurrency: int = 2,
    **settings: str,
) -> Iterator[ServiceStack]:
    """An API and one worker process (`concurrency` pool processes) on PostgreSQL and Redis,
    pointed at the OpenAI-compatible server at `llm_url`; `settings` are more env variables."""
    env = {
        "DATABASE_URL": pg_url,
        "CELERY_BROKER_URL": broker_url,
        "OPENAI_BASE_URL": llm_url,
        "OPENAI_API_KEY": "test-key",
        "SELFINSTRUCT_DATA_DIR": str(tmp / "data"),
        **settings,
    }
    with ServiceStack(env, tmp / "logs") as running:
        running.start_api()
        running.start_worker(concurrency=concurrency)
        yield running


def queued_bulk_messages(broker_url: str) -> int:
    """Messages waiting in the bulk task queue (instance batches), over all priority levels."""
    import redis

    from app.services.fairness import PRIORITY_STEPS
    from workers.celery_app import QUEUE

    client = redis.Redis.from_url(broker_url)
    names = [QUEUE, *(f"{QUEUE}:{p}" for p in PRIORITY_STEPS[1:])]
    return sum(int(client.llen(name)) for name in names)
