"""GET /metrics in the Prometheus text format, and the middleware that counts API requests."""

from __future__ import annotations

import time

from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.services.metrics import build_registry
from workers.celery_app import WORKER_QUEUES, celery_app

router = APIRouter(tags=["health"])


def _queue_depth() -> list[tuple[str, int]]:
    with celery_app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
        # Not passive: the Redis transport only knows queues declared in this process; declaring
        # the worker's queue again (same options) changes nothing and returns its size.
        depths = []
        for queue in WORKER_QUEUES:
            declared = conn.default_channel.queue_declare(
                queue=queue, durable=True, auto_delete=False
            )
            depths.append((queue, int(declared.message_count)))
        return depths


registry, http_requests, http_latency = build_registry(_queue_depth)


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    """Jobs, instructions and instances by outcome and reason, LLM requests, tokens and latency,
    queue depth, and this API's requests (aggregates only: no texts, no job ids)."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """Counts requests by method, route and status, and times them per route. Plain ASGI rather
    than `@app.middleware("http")`, whose extra task and stream per request cost more CPU than
    a cached status read itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before it answers

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            http_requests.labels(scope["method"], route, str(status)).inc()
            http_latency.labels(route).observe(time.perf_counter() - started)


def install_metrics(app: FastAPI) -> None:
    app.add_middleware(RequestMetrics)
    app.include_router(router)
