"""/healthz answered by the HTTP protocol itself (app.prompt_health), through a real uvicorn."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from app import admission
from app.admission import RequestAdmission
from app.api import health
from app.apiserver import free_port
from app.config import get_settings
from app.prompt_health import PromptHealthProtocol


class Recorder:
    """An ASGI app that records what reaches it; each request holds the loop `busy_s`."""

    def __init__(self, busy_s: float = 0.0) -> None:
        self.busy_s = busy_s
        self.paths: list[str] = []
        self.finished_at: list[float] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.paths.append(scope["path"])
        time.sleep(self.busy_s)  # holds the loop but not the GIL: the test's thread runs freely
        body = b"from the app"
        headers = [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.finished_at.append(time.perf_counter())


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    yield
    get_settings.cache_clear()  # a test's environment must not outlive it in the cache


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[uvicorn.Server] = []

    def start(app: Any, http: Any = PromptHealthProtocol) -> str:
        port = free_port()
        config = uvicorn.Config(app, port=port, loop="asyncio", http=http, log_level="warning")
        server = uvicorn.Server(config)
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.should_exit = True


@pytest.fixture
def monitor(monkeypatch: pytest.MonkeyPatch) -> health.HealthMonitor:
    """A monitor whose last check passed just now (no checks actually run)."""
    checked = health.HealthMonitor()
    checked.state = health.HealthState(database=True, broker=True, checked_at=time.monotonic())
    monkeypatch.setattr(health, "_monitor", checked)
    return checked


def test_healthz_is_answered_from_the_last_check_without_the_app(
    serve: Any, monitor: health.HealthMonitor
) -> None:
    app = Recorder()
    url = serve(app)
    with httpx.Client(base_url=url) as client:  # one kept-alive connection throughout
        first = client.get("/healthz")
        assert first.status_code == 200
        assert first.headers["content-type"] == "application/json"
        assert first.json() == {"status": "ok", "database": True, "broker": True}
        assert client.get("/v1/jobs").text == "from the app"  # the same connection goes on
        head = client.head("/healthz")
        assert head.status_code == 200 and head.content == b""
        monitor.state = health.HealthState(database=True, broker=False, checked_at=1.0)
        degraded = client.get("/healthz")
        assert degraded.status_code == 503
        assert degraded.json() == {"status": "degraded", "database": True, "broker": False}
        closing = client.get("/healthz", headers={"connection": "close"})
        assert closing.status_code == 503 and closing.headers["connection"] == "close"
    assert app.paths == ["/v1/jobs"]


def test_healthz_goes_to_the_app_while_there_is_no_check_to_read(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "_monitor", None)
    app = Recorder()
    url = serve(app)
    assert httpx.get(f"{url}/healthz").text == "from the app"
    assert httpx.post(f"{url}/healthz").text == "from the app"  # only GET and HEAD
    assert app.paths == ["/healthz", "/healthz"]


def _response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response's head and body (headers and body may come in separate segments)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(4096)
    return head, body


def _request(sock: socket.socket, path: str) -> None:
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: api\r\n\r\n".encode())


def _reads_done_while_healthz_waits(serve: Any, http: Any) -> int:
    """Two hundred reads of 2 ms each wait in the loop's admission gate, then /healthz comes:
    how many reads finish between sending it and its answer."""
    app = Recorder(busy_s=0.002)
    host, port = serve(RequestAdmission(app), http).removeprefix("http://").split(":")
    reads = [socket.create_connection((host, int(port))) for _ in range(200)]
    probe = socket.create_connection((host, int(port)))
    try:
        for sock in reads:
            _request(sock, "/v1/jobs/x")
        while len(app.finished_at) < 20:  # the server is busy with the reads
            time.sleep(0.001)
        started = len(app.finished_at)
        _request(probe, "/healthz")
        head, body = _response(probe)
        answered_at = time.perf_counter()
        assert head.startswith(b"HTTP/1.1 200")
        if http is PromptHealthProtocol:  # answered from the check, not by the app
            assert json.loads(body)["status"] == "ok"
        return sum(1 for at in app.finished_at if at < answered_at) - started
    finally:
        for sock in [*reads, probe]:
            sock.close()


def test_healthz_is_answered_ahead_of_the_requests_already_read(
    serve: Any, monitor: health.HealthMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path answers within the pass that reads the probe; through the app (uvicorn's
    own protocol) its task runs in the next pass, after that pass's reads. Measured against
    each other in one test, so that a loaded machine slows both alike (alone: 13-16 reads
    against 46-49). A descheduled test thread only adds reads to a count, so each side takes
    the least of three tries (one try alone failed once on a machine busy with other tests)."""
    # 32 per pass rather than the default: a wide pass tells one pass from the next clearly.
    monkeypatch.setenv("SELFINSTRUCT_API_REQUESTS_PER_PASS", "32")
    get_settings.cache_clear()
    counts: dict[Any, list[int]] = {PromptHealthProtocol: [], "httptools": []}
    for _ in range(3):
        for http, seen in counts.items():
            monkeypatch.setattr(admission, "_request_gates", {})
            seen.append(_reads_done_while_healthz_waits(serve, http))
    fast, slow = min(counts[PromptHealthProtocol]), min(counts["httptools"])
    assert fast + 16 <= slow, counts  # at least half a pass sooner
