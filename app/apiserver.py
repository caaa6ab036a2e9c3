"""Run the API in a background thread of this process (for the demo and tests)."""

from __future__ import annotations

import random
import socket
import threading
import time
from pathlib import Path

import uvicorn

from app.main import create_app
from app.prompt_health import PromptHealthProtocol

_PICKER = random.SystemRandom()  # not the seeded global generator: two seeded runs would collide


def _ephemeral_low() -> int:
    """The first port the kernel hands out to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a server started next.

    Chosen below the ephemeral range: a port the kernel picks itself (bind to 0) can be taken
    by any outgoing connection on the machine before the server binds it, as happened under
    parallel tests."""
    low = _ephemeral_low()
    for _ in range(200):
        port = _PICKER.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class BackgroundAPIServer:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        config = uvicorn.Config(
            create_app(),
            host=host,
            port=self.port,
            log_level="warning",
            loop="asyncio",
            http=PromptHealthProtocol,
        )  # the loop and protocol `selfinstruct serve` uses (see app.cli.server)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundAPIServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start on {self.url}")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
