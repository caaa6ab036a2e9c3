"""GET /metrics in the Prometheus text format, and the middleware that counts API requests."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.services.metrics import build_registry
from workers.celery_app import QUEUE, celery_app

router = APIRouter(tags=["health"])


def _queue_depth() -> list[tuple[str, int]]:
    with celery_app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
        # Not passive: the Redis transport only knows queues declared in this process; declaring
        # the worker's queue again (same options) changes nothing and returns its size.
        declared = conn.default_channel.queue_declare(queue=QUEUE, durable=True, auto_delete=False)
        return [(QUEUE, int(declared.message_count))]


registry, http_requests, http_latency = build_registry(_queue_depth)


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    """Jobs, instructions and instances by outcome and reason, LLM requests, tokens and latency,
    queue depth, and this API's requests (aggregates only: no texts, no job ids)."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def install_metrics(app: FastAPI) -> None:
    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        http_requests.labels(request.method, route, str(response.status_code)).inc()
        http_latency.labels(route).observe(time.perf_counter() - started)
        return response

    app.include_router(router)
