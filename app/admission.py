"""Admission control for requests that use the database.

Why this exists: routes are sync and run in the thread pool, and a request's session holds its
connection from its first query until the dependency's exit, which runs in another thread hop.
When more requests wait for a connection than the pool has, every pool thread can end up blocked
in `pool.get()` while the requests holding connections wait for a free thread to finish: the API
froze that way at about 120 pollers. So a request first takes a database slot here, waiting in
the event loop (which costs nothing), and there are never more slots than pooled connections the
API may use: a thread never waits for a connection held by a request that waits for a thread.

A request that cannot get a slot within `max_wait_s`, or that would join a queue already
`max_waiting` long, gets a fast 503 with `Retry-After` instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ServiceUnavailable


class Overloaded(ServiceUnavailable):
    """Too many requests are waiting for the database: come back after `retry_after_s`."""

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


@dataclass
class DatabaseGate:
    """At most `slots` requests use the database at once; the rest wait their turn, boundedly.

    The asyncio primitives are created lazily, so the gate binds to whichever event loop first
    uses it (uvicorn's), not to the loop, or lack of one, at import time.
    """

    slots: int
    max_wait_s: float
    max_waiting: int
    waiting: int = 0
    in_use: int = 0
    rejected: int = 0
    _semaphore: asyncio.Semaphore | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    def _gate(self) -> asyncio.Semaphore:
        """The semaphore of the running loop (a test may serve the app from several loops)."""
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:
            self._semaphore, self._loop = asyncio.Semaphore(self.slots), loop
            self.waiting = self.in_use = 0
        return self._semaphore

    async def acquire(self) -> None:
        gate = self._gate()
        if gate.locked() and self.waiting >= self.max_waiting:
            self._reject(f"{self.waiting} requests are already waiting for the database")
        self.waiting += 1
        started = time.monotonic()
        try:
            await asyncio.wait_for(gate.acquire(), timeout=self.max_wait_s)
        except TimeoutError:
            self._reject(
                f"no database slot within {self.max_wait_s:g} s "
                f"({time.monotonic() - started:.1f} s waited)"
            )
        finally:
            self.waiting -= 1
        self.in_use += 1

    def release(self) -> None:
        self.in_use -= 1
        self._gate().release()

    def _reject(self, why: str) -> None:
        self.rejected += 1
        raise Overloaded(
            f"the API is overloaded: {why}; retry shortly", retry_after_s=self.retry_after_s()
        )

    def retry_after_s(self) -> int:
        """Roughly how long the queue ahead takes to drain, at least a second."""
        return max(1, min(30, math.ceil(self.max_wait_s / 2)))


_gates: dict[int, DatabaseGate] = {}


def database_gate() -> DatabaseGate:
    """The gate of this process's engine, sized from its pool."""
    from app.config import get_settings
    from app.db import get_engine

    engine = get_engine()
    gate = _gates.get(id(engine))
    if gate is None:
        settings = get_settings()
        gate = DatabaseGate(
            slots=min(settings.api_db_slots, request_slots(engine)),
            max_wait_s=settings.api_db_wait_s,
            max_waiting=settings.api_max_waiting,
        )
        _gates.clear()
        _gates[id(engine)] = gate
    return gate


def request_slots(engine: object) -> int:
    """Pooled connections minus a few for what runs outside requests (health checks, metrics,
    download pages), each of which holds its connection only within one thread hop."""
    pool = getattr(engine, "pool", None)
    size = getattr(pool, "size", None)
    overflow = getattr(pool, "_max_overflow", 0)
    if not callable(size):
        return 8  # SQLite's pools have no size: one file, few writers
    return max(1, int(size()) + max(0, int(overflow)) - 3)


async def database_slot() -> AsyncIterator[None]:
    """Dependency: hold a database slot for the request's session (entered before the session,
    left after it is closed)."""
    gate = database_gate()
    async with stepped_aside():  # afterwards, back in line for the loop (app.admission)
        await gate.acquire()
        try:
            yield
        finally:
            gate.release()


_stream_limiters: dict[int, anyio.CapacityLimiter] = {}


def _streams() -> anyio.CapacityLimiter:
    """The download limiter of the running loop."""
    from app.config import get_settings

    loop = id(asyncio.get_running_loop())
    if loop not in _stream_limiters:
        _stream_limiters.clear()
        _stream_limiters[loop] = anyio.CapacityLimiter(get_settings().api_stream_threads)
    return _stream_limiters[loop]


async def produced_in_threads(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A download's chunks, each made in a worker thread, at most `api_stream_threads` at once.

    Making a chunk (a page of rows turned into JSON lines) is CPU-bound Python: with many
    downloads in the default thread pool, the threads took the GIL from the event loop and
    every other request, /healthz included, waited seconds. Bounded, downloads queue among
    themselves instead.
    """
    done = object()
    while True:
        async with stepped_aside():
            chunk = await anyio.to_thread.run_sync(next, chunks, done, limiter=_streams())
        if chunk is done:
            return
        yield chunk  # type: ignore[misc]


# --- The event loop's own admission: a bounded number of reads per pass of the loop ----------
#
# Why: a cached status read runs start to finish in one step of its task, so in each pass the
# loop ran every request that had arrived since the pass before. With a thousand pollers that
# was most of a second of work per pass, and /healthz, however cheap, waited a whole pass. Now
# at most `per_pass` reads start per pass; the rest wait, in arrival order, where waiting costs
# nothing, and /healthz is answered within a pass or two. A request back from waiting outside
# the loop (a database slot, a thread) goes ahead of new arrivals. Hand-written: no asyncio or
# anyio primitive admits by loop pass.

EXEMPT_PATHS = frozenset({"/healthz"})
GATED_METHODS = frozenset({"GET", "HEAD"})  # writes are few, rate-limited, and may upload slowly

# The gate of the request this task serves (None: not a gated request, or a detached task).
_request_gate: contextvars.ContextVar[RequestGate | None] = contextvars.ContextVar(
    "request_gate", default=None
)


@dataclass
class RequestGate:
    """At most `per_pass` requests start (or go on) per pass of the event loop; up to
    `max_queued` more wait, each at most `max_wait_s`, before a fast 503 with Retry-After."""

    per_pass: int
    max_queued: int
    max_wait_s: float
    admitted: int = 0  # in the current pass
    rejected: int = 0
    _next_pass_due: bool = False
    _queue: deque[asyncio.Future[None]] = field(default_factory=deque, repr=False)
    _returning: deque[asyncio.Future[None]] = field(default_factory=deque, repr=False)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def enter(self, *, returning: bool = False) -> None:
        if self.admitted < self.per_pass and not self._queue and not self._returning:
            self.admitted += 1
            self._schedule_next_pass()
            return
        if not returning and len(self._queue) >= self.max_queued:
            self._reject(f"{len(self._queue)} requests are already queued")
        waiter = asyncio.get_running_loop().create_future()
        line = self._returning if returning else self._queue
        line.append(waiter)
        self._schedule_next_pass()
        try:
            async with asyncio.timeout(None if returning else self.max_wait_s):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # admitted just as the wait ran out: go on
            self._forget(waiter, line)
            self._reject(f"not served within {self.max_wait_s:g} s")
        except BaseException:
            self._forget(waiter, line)
            raise

    @staticmethod
    def _forget(waiter: asyncio.Future[None], line: deque[asyncio.Future[None]]) -> None:
        waiter.cancel()
        with contextlib.suppress(ValueError):
            line.remove(waiter)

    def _schedule_next_pass(self) -> None:
        if not self._next_pass_due:
            self._next_pass_due = True
            asyncio.get_running_loop().call_soon(self._new_pass)

    def _new_pass(self) -> None:
        """Runs once per pass while there is work: a new budget, the first in line let in."""
        self._next_pass_due = False
        self.admitted = 0
        for line in (self._returning, self._queue):
            while line and self.admitted < self.per_pass:
                waiter = line.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    self.admitted += 1
        if self.admitted or self._queue or self._returning:
            self._schedule_next_pass()

    def _reject(self, why: str) -> None:
        self.rejected += 1
        retry = max(1, min(30, math.ceil(self.max_wait_s / 4)))
        raise Overloaded(f"the API is overloaded: {why}; retry shortly", retry_after_s=retry)


_request_gates: dict[int, RequestGate] = {}


def request_gate() -> RequestGate:
    """The gate of the running loop (a test may serve the app from several loops)."""
    from app.config import get_settings

    loop = id(asyncio.get_running_loop())
    gate = _request_gates.get(loop)
    if gate is None:
        settings = get_settings()
        gate = RequestGate(
            per_pass=settings.api_requests_per_pass,
            max_queued=settings.api_max_queued,
            max_wait_s=settings.api_queue_wait_s,
        )
        _request_gates.clear()
        _request_gates[loop] = gate
    return gate


@contextlib.asynccontextmanager
async def stepped_aside() -> AsyncIterator[None]:
    """For a request's wait outside the loop: when it is over, the request goes on only within
    the loop's budget for that pass, ahead of new arrivals."""
    yield
    gate = _request_gate.get()
    if gate is not None:
        await gate.enter(returning=True)


def detach_from_request() -> None:
    """For a background task started by a request: it need not wait its turn."""
    _request_gate.set(None)


class RequestAdmission:
    """ASGI middleware: GET and HEAD requests pass the loop's RequestGate; /healthz never waits."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in GATED_METHODS
            or scope["path"] in EXEMPT_PATHS
        ):
            await self.app(scope, receive, send)
            return
        gate = request_gate()
        try:
            await gate.enter()
        except Overloaded as exc:
            from app.errors import error_response

            await error_response(exc)(scope, receive, send)
            return
        token = _request_gate.set(gate)
        try:
            await self.app(scope, receive, send)
        finally:
            _request_gate.reset(token)
