"""/healthz answered as soon as its request is read, ahead of the requests already in the loop.

Why: under load the event loop runs dozens of requests per pass. A request's task first runs in
the pass after the one that read it, so /healthz, however cheap, waited two or three passes
behind the status reads it was meant to outlast: its p99 was 200-400 ms at 1,000 pollers while
an idle server on the same loaded machine answered in 10-25 ms (bench/bench_api_load.py's
control probe). This protocol answers `GET`/`HEAD /healthz` from the latest background check
(app.api.health) in the same callback that parsed it: no task, no middleware, at most the rest
of the current pass. The answer goes through uvicorn's own response path (status line, default
headers, keep-alive, access log); only the ASGI app is skipped, so /healthz is not counted in
the API's request metrics. When there is no check to read yet, or the client is not reading
(write paused), the request takes the ordinary route.

Hand-written: uvicorn has no hook before a request's task. It subclasses uvicorn's httptools
protocol and relies on `_start_asgi_task` and `RequestResponseCycle.run_asgi`; the tests in
tests/unit/test_prompt_health.py fail if a uvicorn release changes them.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.api import health
from app.response_writes import HeadHoldingTransport

HEALTH_PATH = "/healthz"


def _health_app(status: int, body: bytes) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


class PromptHealthProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering /healthz within the callback that read it, and
    sending each response's head and body in one write (app.response_writes)."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(HeadHoldingTransport(transport))

    def on_response_complete(self) -> None:
        self.transport.send_held()  # type: ignore[attr-defined]  # a HEAD answer's head
        super().on_response_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        scope = cycle.scope
        answer = (
            health.answer_now()
            if scope["path"] == HEALTH_PATH
            and scope["method"] in ("GET", "HEAD")
            and not self.flow.write_paused
            else None
        )
        if answer is None:
            super()._start_asgi_task(cycle, app)
            return
        run = cycle.run_asgi(_health_app(*answer))
        try:
            run.send(None)  # sends never wait while writing is not paused: done in one step
        except StopIteration:
            return
        run.close()  # unreachable unless uvicorn's send changes: fail loudly, not silently
        raise RuntimeError("the /healthz fast path did not finish in one step")
