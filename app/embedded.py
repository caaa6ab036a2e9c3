"""The embedded default: SQLite, a server-less broker, a worker process and (optionally) the local
model, started together and stopped together. Only settings differ from production; the same
migrations, tasks and pipeline run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from app.config import Settings
from app.migrate import upgrade_database

if TYPE_CHECKING:
    from app.localmodel import LocalModelServer


class EmbeddedStack:
    """Context manager: migrate, start the local model if no backend is configured, start a worker.

    The child processes get the same settings through their environment, so the worker resolves
    the same SQLite files and broker as the API in this process.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        console_echo: Callable[[str], object] = print,
        worker_concurrency: int = 2,
    ) -> None:
        self.settings = settings
        self.echo = console_echo
        self.worker_concurrency = worker_concurrency
        self.worker: subprocess.Popen[bytes] | None = None
        self.llm_base_url: str | None = settings.openai_base_url
        self.local_model: LocalModelServer | None = None
        self._stack = ExitStack()

    @property
    def log_dir(self) -> Path:
        return self.settings.data_dir / "logs"

    def __enter__(self) -> EmbeddedStack:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        upgrade_database(self.settings.resolved_database_url)
        if self.llm_base_url is None:
            self._start_local_model()
        self._start_worker()

    def _start_local_model(self) -> None:
        from app.localmodel import LocalModelServer

        self.echo("starting the local model (first run assembles it; this can take a minute)")
        server = self._stack.enter_context(LocalModelServer(self.settings.data_dir))
        self.local_model = server
        self.llm_base_url = server.base_url
        # This process (the API, the demo) reads the same setting the worker gets.
        os.environ["OPENAI_BASE_URL"] = server.base_url
        self.echo(f"local model {server.model} serving at {server.base_url}")

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SELFINSTRUCT_DATA_DIR"] = str(self.settings.data_dir)
        if self.settings.database_url:
            env["DATABASE_URL"] = self.settings.database_url
        if self.settings.celery_broker_url:
            env["CELERY_BROKER_URL"] = self.settings.celery_broker_url
        if self.llm_base_url:
            env["OPENAI_BASE_URL"] = self.llm_base_url
        return env

    def _start_worker(self) -> None:
        log = (self.log_dir / "worker.log").open("ab")
        self._stack.callback(log.close)
        self.worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app",
                "worker",
                f"--concurrency={self.worker_concurrency}",
                "--loglevel=WARNING",
            ],
            env=self.child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop the worker ourselves
        )
        self._stack.callback(self._stop_worker)

    def _stop_worker(self) -> None:
        worker, self.worker = self.worker, None
        if worker is None or worker.poll() is not None:
            return
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=5)

    def worker_alive(self) -> bool:
        return self.worker is not None and self.worker.poll() is None

    def failure(self) -> str | None:
        """Why the stack can no longer finish a job (a child process died), or None."""
        model = self.local_model
        if model is not None and not model.running():
            return (
                f"the local model server exited ({model.exit_description()}):\n{model.log_tail()}"
            )
        if self.worker is not None and self.worker.poll() is not None:
            return f"the worker exited with code {self.worker.returncode}; see {self.log_dir}"
        return None

    def close(self) -> None:
        self._stack.close()
