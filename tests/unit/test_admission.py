"""The database gate and the event loop's request gate: bounded waiting in order, fast 503s
with Retry-After, and /healthz beside them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.admission import (
    DatabaseGate,
    Overloaded,
    RequestGate,
    database_gate,
    request_gate,
    request_slots,
)
from app.config import get_settings
from app.db import get_engine
from tests.support.sqlite_db import in_process_api


def test_requests_beyond_the_slots_wait_their_turn() -> None:
    async def scenario() -> list[int]:
        gate = DatabaseGate(slots=2, max_wait_s=5, max_waiting=10)
        order: list[int] = []

        async def request(n: int) -> None:
            await gate.acquire()
            try:
                order.append(n)
                await asyncio.sleep(0.01)
            finally:
                gate.release()

        await asyncio.gather(*(request(n) for n in range(6)))
        assert gate.in_use == 0 and gate.waiting == 0 and gate.rejected == 0
        return order

    assert sorted(asyncio.run(scenario())) == list(range(6))


def test_a_full_queue_is_refused_at_once_with_a_retry_after() -> None:
    async def scenario() -> Overloaded:
        gate = DatabaseGate(slots=1, max_wait_s=30, max_waiting=1)
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await asyncio.wait_for(gate.acquire(), timeout=1)  # no waiting: refused now
        gate.release()
        await waiter
        gate.release()
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.retry_after_s >= 1
    assert "waiting for the database" in refused.detail


def test_a_wait_past_the_limit_ends_in_503() -> None:
    async def scenario() -> None:
        gate = DatabaseGate(slots=1, max_wait_s=0.05, max_waiting=10)
        await gate.acquire()
        with pytest.raises(Overloaded, match="no database slot within"):
            await gate.acquire()
        assert gate.waiting == 0 and gate.rejected == 1

    asyncio.run(scenario())


@pytest.fixture
def sqlite_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    # A short wait for a database slot, so the test's 503 comes quickly.
    with in_process_api(tmp_path, monkeypatch, SELFINSTRUCT_API_DB_WAIT_S="0.2") as client:
        yield client


def test_overload_is_a_503_with_retry_after_and_healthz_still_answers(
    sqlite_app: TestClient,
) -> None:
    assert sqlite_app.get("/v1/jobs").status_code == 200  # the gate binds to the app's loop
    gate = database_gate()
    assert gate.slots == min(get_settings().api_db_slots, request_slots(get_engine()))
    # Hold every slot, as if that many slow requests were in the database.
    assert gate._semaphore is not None
    gate._semaphore._value = 0  # type: ignore[attr-defined]
    try:
        response = sqlite_app.get("/v1/jobs?limit=7")  # not cached yet: needs the database
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()
        assert response.json()["error"] == "Overloaded"
        health = sqlite_app.get("/healthz")
        assert health.status_code == 200, health.text
    finally:
        gate._semaphore._value = gate.slots  # type: ignore[attr-defined]
    assert sqlite_app.get("/v1/jobs").status_code == 200


def test_slots_leave_room_beside_the_pool() -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import QueuePool

    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=10, max_overflow=10)
    assert request_slots(engine) == 17


def _passes_counter() -> tuple[list[int], asyncio.Handle]:
    """A counter of event-loop passes: [n] goes up by one in every pass."""
    count = [0]
    loop = asyncio.get_running_loop()

    def tick() -> None:
        count[0] += 1
        holder[0] = loop.call_soon(tick)

    holder = [loop.call_soon(tick)]
    return count, holder[0]


def test_at_most_the_budget_starts_per_pass_in_arrival_order() -> None:
    async def scenario() -> tuple[list[int], dict[int, int]]:
        gate = RequestGate(per_pass=4, max_queued=100, max_wait_s=5)
        passes, _ = _passes_counter()
        order: list[int] = []
        started_in_pass: dict[int, int] = {}

        async def request(n: int) -> None:
            await gate.enter()
            order.append(n)
            started_in_pass[passes[0]] = started_in_pass.get(passes[0], 0) + 1

        await asyncio.gather(*(request(n) for n in range(30)))  # all arrive in one pass
        return order, started_in_pass

    order, started_in_pass = asyncio.run(scenario())
    assert order == list(range(30))
    assert max(started_in_pass.values()) <= 4
    assert sum(started_in_pass.values()) == 30


def test_healthz_is_answered_ahead_of_a_backlog_of_reads() -> None:
    """Three hundred reads that each cost a millisecond of CPU arrive at once, then /healthz:
    it is answered within the first passes, not after the backlog."""
    import time

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from app.admission import RequestAdmission

    def busy(_: object) -> PlainTextResponse:
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            pass
        return PlainTextResponse("ok")

    async def endpoint(request: object) -> PlainTextResponse:
        return busy(request)

    app = RequestAdmission(
        Starlette(routes=[Route("/v1/jobs/x", endpoint), Route("/healthz", endpoint)])
    )

    async def scenario() -> tuple[int, int]:
        done: list[str] = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:

            async def get(path: str) -> None:
                await client.get(path)
                done.append(path)

            reads = [asyncio.create_task(get("/v1/jobs/x")) for _ in range(300)]
            await asyncio.sleep(0)
            health = asyncio.create_task(get("/healthz"))
            await asyncio.gather(*reads, health)
        return done.index("/healthz"), request_gate().per_pass

    position, per_pass = asyncio.run(scenario())
    assert per_pass == 12  # the default
    assert position <= 3 * per_pass, position  # without the gate: 300, after every read


def test_a_request_back_from_outside_the_loop_goes_before_new_arrivals() -> None:
    async def scenario() -> list[str]:
        gate = RequestGate(per_pass=1, max_queued=100, max_wait_s=5)
        order: list[str] = []
        # All three arrive in one pass: the first spends its budget, the others wait.
        first = asyncio.create_task(gate.enter())
        new = asyncio.create_task(gate.enter())
        back = asyncio.create_task(gate.enter(returning=True))
        new.add_done_callback(lambda _: order.append("new"))
        back.add_done_callback(lambda _: order.append("returning"))
        await asyncio.gather(first, new, back)
        return order

    assert asyncio.run(scenario()) == ["returning", "new"]


def test_a_full_line_or_a_long_wait_is_a_fast_503() -> None:
    async def scenario() -> tuple[Overloaded, Overloaded]:
        gate = RequestGate(per_pass=1, max_queued=1, max_wait_s=0.05)
        gate.admitted = 1  # a budget nothing renews: this pass never ends for the test
        gate._next_pass_due = True
        waiting = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as full:
            await gate.enter()  # the line is full: refused without waiting
        with pytest.raises(Overloaded) as late:
            await waiting  # waited past max_wait_s
        assert gate.queued == 0 and gate.rejected == 2
        return full.value, late.value

    full, late = asyncio.run(scenario())
    assert "already queued" in full.detail and "not served within" in late.detail
    assert full.retry_after_s >= 1 and late.status_code == 503


def test_a_cancelled_waiter_leaves_the_line() -> None:
    async def scenario() -> int:
        gate = RequestGate(per_pass=1, max_queued=10, max_wait_s=5)
        spend = asyncio.create_task(gate.enter())
        first = asyncio.create_task(gate.enter())
        second = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)  # all three ran: one admitted, two in line
        assert spend.done() and gate.queued == 2
        first.cancel()  # its client left
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, timeout=1)
        return gate.queued

    assert asyncio.run(scenario()) == 0


def test_healthz_and_cached_reads_answer_while_the_database_is_full(
    sqlite_app: TestClient,
) -> None:
    """With every database slot held and reads waiting for one, /healthz and a cached status
    read are still answered at once, and the waiting reads are answered once slots free up."""
    import threading
    import time

    assert sqlite_app.get("/v1/jobs?limit=3").status_code == 200  # bind the gates to the loop
    gate = database_gate()
    gate.max_wait_s = 30.0
    for _ in range(gate.slots):
        sqlite_app.portal.call(gate.acquire)  # type: ignore[union-attr]
    replies: list[int] = []

    def waiting_read(n: int) -> None:
        replies.append(sqlite_app.get(f"/v1/jobs?limit={n + 10}").status_code)  # uncached

    readers = [threading.Thread(target=waiting_read, args=(n,)) for n in range(8)]
    try:
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 10
        while gate.waiting < len(readers) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate.waiting == len(readers)
        assert sqlite_app.get("/healthz").status_code == 200
        assert sqlite_app.get("/v1/jobs?limit=3").status_code == 200  # cached: no database
    finally:
        for _ in range(gate.slots):
            sqlite_app.portal.call(gate.release)  # type: ignore[union-attr]
        for reader in readers:
            reader.join(timeout=30)
    assert replies == [200] * len(readers)
    loop_gate = sqlite_app.portal.call(request_gate)  # type: ignore[union-attr]
    assert loop_gate.queued == 0
