"""Requests in flight and the adaptive concurrency limit of each LLM backend, as the API shows
them (status, /v1/backends, /metrics): read from Redis, where the workers' gates keep them, at
most once a second per API process however many clients ask."""

from __future__ import annotations

import threading
import time

from app.config import get_settings
from app.llm.aio import run_sync
from app.llm.concurrency import BackendLoad, backend_loads
from app.llm.openai_compat import shared_redis_url

FRESH_S = 1.0

_lock = threading.Lock()
_read_at = 0.0
_loads: dict[str, BackendLoad] = {}


def current_loads() -> dict[str, BackendLoad]:
    """Every configured backend's load, about a second old; a backend Redis could not be asked
    about is left out (the status page must not fail because Redis did)."""
    global _read_at, _loads
    with _lock:  # one reader at a time: the others wait for its answer instead of asking too
        if time.monotonic() - _read_at >= FRESH_S:
            settings = get_settings()
            _loads = run_sync(
                backend_loads(
                    shared_redis_url(settings),
                    settings.backend_names(),
                    initial=settings.llm_initial_concurrency,
                )
            )
            _read_at = time.monotonic()
        return dict(_loads)


def forget_loads() -> None:
    global _read_at
    with _lock:
        _read_at = 0.0
