"""Liveness with a real check of the database and the broker, answered under any load.

The checks run every `interval_s` in a thread of their own, on a connection of their own (not
from the request pool), and /healthz only reads their latest result: however busy the thread
pool and the database queue are, the answer comes straight from the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import APIRouter, FastAPI, Response
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from app.config import get_settings
from app.schemas import Health
from workers.celery_app import celery_app

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


def _database_ok() -> bool:
    url = get_settings().resolved_database_url
    try:
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
        return True
    except Exception:
        return False


def _broker_ok() -> bool:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
        return True
    except Exception:
        return False


@dataclass
class HealthState:
    database: bool = False
    broker: bool = False
    checked_at: float = 0.0  # time.monotonic() of the last finished check; 0: none yet


class HealthMonitor:
    """Checks the database and the broker in the background; the route reads `state`."""

    def __init__(self, interval_s: float = 2.0, stale_after_s: float = 15.0) -> None:
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s
        self.state = HealthState()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="healthz")
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()

    async def check_now(self) -> None:
        loop = asyncio.get_running_loop()
        database = await loop.run_in_executor(self._executor, _database_ok)
        broker = await loop.run_in_executor(self._executor, _broker_ok)
        self.state = HealthState(database, broker, time.monotonic())
        self._first.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.check_now()
            except Exception:  # never let the monitor die: the next round tries again
                log.exception("health check failed")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def current(self) -> HealthState:
        """The latest result; before the first check has finished, waits for it (briefly)."""
        if not self._first.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first.wait(), timeout=5)
        return self.state


_monitor: HealthMonitor | None = None


@contextlib.asynccontextmanager
async def health_monitoring(_: FastAPI) -> AsyncIterator[None]:
    """Lifespan: one monitor per process while the app serves."""
    global _monitor
    _monitor = HealthMonitor()
    _monitor.start()
    try:
        yield
    finally:
        await _monitor.stop()
        _monitor = None


def _verdict(state: HealthState, stale_after_s: float) -> Health:
    fresh = state.checked_at > 0 and time.monotonic() - state.checked_at < stale_after_s
    ok = fresh and state.database and state.broker
    return Health(status="ok" if ok else "degraded", database=state.database, broker=state.broker)


def answer_now() -> tuple[int, bytes] | None:
    """/healthz's status and body from the latest check, without waiting; None while there is
    no check to read (no monitor, or its first check is still running): then the route answers.
    For the HTTP protocol's own fast path (app.prompt_health)."""
    monitor = _monitor
    if monitor is None or not monitor.state.checked_at:
        return None
    health = _verdict(monitor.state, monitor.stale_after_s)
    return (200 if health.status == "ok" else 503), health.model_dump_json().encode()


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(response: Response) -> Health:
    """200 when the last check (at most a few seconds old) reached the database and the broker."""
    if _monitor is None:  # an app served without its lifespan: check inline
        database, broker = await asyncio.gather(
            asyncio.to_thread(_database_ok), asyncio.to_thread(_broker_ok)
        )
        state = HealthState(database, broker, time.monotonic())
    else:
        state = await _monitor.current()
    health = _verdict(state, _monitor.stale_after_s if _monitor else 15.0)
    if health.status != "ok":
        response.status_code = 503
    return health
