"""A response's head and body leave in one write; nothing is held past the connection's end."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from app.response_writes import HeadHoldingTransport


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 5)}.get(name, default)


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_head_and_body_are_one_write() -> None:
    inner = _RecordingTransport()
    transport = HeadHoldingTransport(inner)  # type: ignore[arg-type]
    transport.write(HEAD)
    assert inner.writes == [] and transport.get_write_buffer_size() == len(HEAD)
    transport.write(b"{}")
    assert inner.writes == [HEAD + b"{}"]
    transport.write(b"HTTP/1.1 304 Not Modified\r\n\r\n")  # a head with no body: the empty write
    transport.write(b"")
    assert inner.writes[-1] == b"HTTP/1.1 304 Not Modified\r\n\r\n"


def test_an_informational_head_goes_at_once() -> None:
    """The client waits for `100 Continue` before it sends the body the response waits for."""
    inner = _RecordingTransport()
    HeadHoldingTransport(inner).write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[arg-type]
    assert inner.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]


def test_close_sends_a_held_head_and_abort_drops_it() -> None:
    inner = _RecordingTransport()
    transport = HeadHoldingTransport(inner)  # type: ignore[arg-type]
    transport.write(HEAD)
    transport.close()
    assert inner.writes == [HEAD] and inner.closed
    inner = _RecordingTransport()
    transport = HeadHoldingTransport(inner)  # type: ignore[arg-type]
    transport.write(HEAD)
    transport.send_held()  # the response is complete without a body write (HEAD)
    assert inner.writes == [HEAD] and not inner.closed
    inner = _RecordingTransport()
    transport = HeadHoldingTransport(inner)  # type: ignore[arg-type]
    transport.write(HEAD)
    transport.abort()
    assert inner.writes == [] and inner.aborted
    assert transport.get_extra_info("peername") == ("127.0.0.1", 5)  # the rest is the inner one's


async def _app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    if scope["type"] != "http":
        return
    body = b"x" * 10 if scope["path"] != "/stream" else b""
    chunked = scope["path"] == "/stream"
    headers = [] if chunked else [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
    if chunked:
        for n in range(3):
            await send({"type": "http.response.body", "body": b"%d" % n, "more_body": True})  # type: ignore[operator]
            await asyncio.sleep(0.01)
    if scope["method"] == "HEAD":
        body = b""  # the head says 10 bytes; a HEAD answer has none
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_served_responses_arrive_whole(method: str) -> None:
    """Through uvicorn with the API's protocol: plain, HEAD, streamed, and a 100-continue
    upload, on one keep-alive connection."""
    import threading

    import uvicorn

    from app.prompt_health import PromptHealthProtocol

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, http=PromptHealthProtocol,  # type: ignore[arg-type]
                            loop="asyncio", log_level="warning", lifespan="off")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            threading.Event().wait(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(3):
                answer = client.request(method, "/plain")
                assert answer.status_code == 200
                assert answer.content == (b"" if method == "HEAD" else b"x" * 10)
            if method == "GET":
                assert client.get("/stream").content == b"012"
                sent = client.post("/plain", content=b"y" * 100, headers={"expect": "100-continue"})
                assert sent.status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
