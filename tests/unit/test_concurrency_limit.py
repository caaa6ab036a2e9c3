"""The adaptive concurrency limit per backend: the algorithm against simulated servers, the gates
(in the process, and in Redis shared by several processes) and the client holding slots."""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import json
import logging
import math
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest
import redis
from aiohttp import web

from app.config import Settings
from app.llm.adaptive import (
    AdaptiveConfig,
    LimitState,
    Outcome,
    Window,
    apply_window,
    effective_limit,
    initial_state,
)
from app.llm.aio import run_sync
from app.llm.base import LLMPermanentError, LLMRequest
from app.llm.concurrency import (
    BackendLoad,
    LocalConcurrencyGate,
    RedisConcurrencyGate,
    Slot,
    backend_loads,
    gate_for,
)
from app.llm.openai_compat import OpenAICompatClient, build_llm_client
from app.logs import current_job_id, job_context
from app.selfinstruct.options import GenerationOptions
from tests.support import services

# --- a discrete-event simulation of one sender against a server --------------------------------

SIGMA = 0.5  # lognormal spread of service times around their median: long-tailed


@dataclass
class SimResult:
    busy: float  # time-weighted share of the server's capacity in use
    limit: float  # time-weighted effective limit
    max_limit: int
    min_limit: int
    overload_share: float  # refused requests / requests sent
    reached: dict[int, float] = field(default_factory=dict)  # limit level -> first time reached


def simulate(
    capacity: int,
    latency_s: float,
    *,
    refuse: bool = False,
    faults: float = 0.0,
    change: tuple[float, int] | None = None,
    duration_s: float,
    warmup: float = 0.4,
    config: AdaptiveConfig | None = None,
    seed: int = 1,
) -> SimResult:
    """A sender with unlimited demand, gated by the adaptive limit, against a server that serves
    `capacity` requests at once (service times lognormal around `latency_s`) and either queues
    the rest first come first served or, with `refuse`, answers them 429 at once; `faults`:
    the share of requests it refuses at random, whatever the load; `change`: (when, capacity)
    it changes to. Measured after `warmup` (a share of the duration)."""
    config = config or AdaptiveConfig()
    rng = random.Random(seed)
    state = initial_state(config)
    window = Window(started_at=0.0)
    events: list[tuple[float, int, float, int, bool]] = []  # done at, seq, sent at, tag, served
    queue: deque[tuple[float, int]] = deque()
    serving = in_flight = sequence = sent = refused = 0
    now = last = 0.0
    measure_from = warmup * duration_s
    busy_area = limit_area = 0.0
    limit = effective_limit(state, config)
    lowest, highest = math.inf, 0
    reached: dict[int, float] = {}

    def service() -> float:
        return latency_s * math.exp(rng.gauss(0.0, SIGMA))

    def push(at: float, sent_at: float, tag: int, served: bool) -> None:
        nonlocal sequence
        sequence += 1
        heapq.heappush(events, (at, sequence, sent_at, tag, served))

    def send() -> None:
        nonlocal in_flight, serving, sent, refused
        in_flight += 1
        window.note_sent(now, in_flight)
        counted = now >= measure_from
        sent += counted
        if faults and rng.random() < faults:
            refused += counted
            push(now + 0.005 * latency_s, now, in_flight, False)
        elif serving < capacity:
            serving += 1
            push(now + service(), now, in_flight, True)
        elif refuse:
            refused += counted
            push(now + 0.005 * latency_s, now, in_flight, False)
        else:
            queue.append((now, in_flight))

    while in_flight < limit:
        send()
    while events:
        at, _, sent_at, tag, served = heapq.heappop(events)
        if at > duration_s:
            break
        if change is not None and at >= change[0]:
            capacity, change = change[1], None
        if at > measure_from:
            span = at - max(last, measure_from)
            busy_area += span * min(serving, capacity) / max(1, capacity)
            limit_area += span * limit
            lowest, highest = min(lowest, limit), max(highest, limit)
        now = last = at
        in_flight -= 1
        if served:
            serving -= 1
            if queue and serving < capacity:
                queued_at, queued_tag = queue.popleft()
                serving += 1
                push(now + service(), queued_at, queued_tag, True)
        window.add(sent_at, now - sent_at, "ok" if served else "overload", tag, tag)
        if window.due(config, now, state.baseline_s):
            state = apply_window(state, window, config, now)
            window = Window(started_at=now)
            limit = effective_limit(state, config)
            reached.setdefault(limit, now)
        while in_flight < limit:
            send()
    span = duration_s - measure_from
    return SimResult(
        busy=busy_area / span,
        limit=limit_area / span,
        max_limit=highest,
        min_limit=int(lowest),
        overload_share=refused / max(1, sent),
        reached=reached,
    )


def _first_time_at_least(result: SimResult, level: int) -> float:
    return min((t for lim, t in result.reached.items() if lim >= level), default=math.inf)


@pytest.mark.parametrize("latency_s", [0.2, 1.0, 5.0])
@pytest.mark.parametrize("capacity", [8, 32, 128, 512])
def test_queueing_server_is_kept_full_with_a_bounded_queue(capacity: int, latency_s: float) -> None:
    # About 16,000 answers at least: small servers need more latencies to average over probes.
    duration_s = max(200.0, 16_000 / capacity) * latency_s
    result = simulate(capacity, latency_s, duration_s=duration_s)
    assert result.busy >= 0.9, result
    assert capacity <= result.limit <= 3 * capacity, result
    assert result.max_limit <= 4 * capacity, result


@pytest.mark.parametrize("capacity", [32, 128, 512])
def test_a_probe_of_an_unchanged_server_stops_where_latency_is_back_at_the_baseline(
    capacity: int,
) -> None:
    """With the limit near twice the capacity, the first probe level (half of it) is about the
    capacity, where latency is the baseline again: going one level deeper would leave half the
    server idle for a window (it went to about 0.45 of the capacity)."""
    result = simulate(capacity, 1.0, duration_s=max(200.0, 16_000 / capacity))
    assert result.min_limit >= 0.7 * capacity, result


def test_slow_start_reaches_a_large_server_quickly() -> None:
    result = simulate(512, 0.2, duration_s=10.0, warmup=0.0)
    # From 16 to 512 is five doublings, each about one round of requests.
    assert _first_time_at_least(result, 512) < 3.0


@pytest.mark.parametrize("hidden", [20, 100])
def test_refusing_server_settles_just_under_its_concurrency(hidden: int) -> None:
    result = simulate(hidden, 1.0, refuse=True, duration_s=600.0)
    assert abs(result.limit - hidden) <= 0.1 * hidden, result
    assert result.overload_share < 0.02, result


def test_overloads_at_an_unchanged_level_come_ever_more_rarely() -> None:
    """A job of a few minutes against a server refusing above 40 (the bench's 429 server):
    repeated episodes at the same level slow the climb back, so refusals stay few."""
    result = simulate(40, 1.0, refuse=True, duration_s=300.0, warmup=0.2)
    assert abs(result.limit - 40) <= 4, result
    assert result.overload_share < 0.002, result  # without the halving: 0.0041


@pytest.mark.parametrize("refuse", [False, True])
@pytest.mark.parametrize("after", [16, 256])
def test_limit_follows_a_change_of_capacity(refuse: bool, after: int) -> None:
    # Replicas lost or added halfway: measured over the last quarter.
    result = simulate(64, 0.2, refuse=refuse, change=(60.0, after), duration_s=120.0, warmup=0.75)
    if refuse:
        assert abs(result.limit - after) <= 0.15 * after, result
    else:
        assert after <= result.limit <= 3 * after and result.busy >= 0.9, result


def test_cap_is_never_exceeded() -> None:
    result = simulate(
        100_000, 0.2, duration_s=40.0, warmup=0.0, config=AdaptiveConfig(cap=50, initial=16)
    )
    assert result.max_limit == 50
    assert max(result.reached) == 50


def test_minimum_holds_under_constant_overload() -> None:
    result = simulate(0, 0.2, refuse=True, duration_s=20.0, warmup=0.0)
    assert result.min_limit == 1
    assert min(result.reached) == 1


def test_refusals_cut_once_per_episode_and_only_when_most_are_refused() -> None:
    config = AdaptiveConfig()
    state = LimitState(limit=100.0, slow_start=False, baseline_s=1.0)
    window = Window(started_at=0.0)
    for level in range(95, 101):
        window.note_sent(1.5, level)
    window.add(sent_at=1.5, latency_s=0.01, outcome="overload", in_flight=99)
    assert not window.due(config, now=2.0)  # one refusal is no signal yet
    window.add(sent_at=1.5, latency_s=0.01, outcome="overload", in_flight=100)
    assert window.due(config, now=2.0) and window.overload_in_flight == 99
    state = apply_window(state, window, config, now=2.0)
    assert state.limit == pytest.approx(99 * 0.7)
    assert (state.overload_level, state.last_cut_at) == (98, 2.0)

    def late(sent_at: float, answers_ok: int = 0) -> Window:
        """A window started after the cut with refusals of requests sent before it."""
        window = Window(started_at=2.5)
        for _ in range(answers_ok):
            window.add(sent_at=2.1, latency_s=1.0, outcome="ok", in_flight=69)
        for _ in range(3):
            window.add(sent_at=sent_at, latency_s=0.01, outcome="overload", in_flight=69)
        return window

    # Refusals of requests sent before the cut are the same episode; those sent after it are
    # a signal when they are most of the window's answers, and not within a baseline of the cut.
    assert apply_window(state, late(1.9), config, now=5.0) is state
    assert apply_window(state, late(2.2), config, now=2.6) is state
    assert apply_window(state, late(2.2), config, now=3.5).limit < state.limit
    assert not late(2.2, answers_ok=4).due(config, now=3.5)
    # Random faults: a few refusals among many requests sent at the same level are no signal.
    faults = Window(started_at=4.0)
    for i in range(40):
        faults.note_sent(4.0 + i / 100, 69)
    for _ in range(5):
        faults.add(sent_at=4.1, latency_s=0.01, outcome="overload", in_flight=69)
    assert faults.overload_in_flight == 0


def test_slow_start_doubles_only_a_used_limit() -> None:
    config = AdaptiveConfig()
    state = initial_state(config)
    busy, idle = Window(started_at=0.0), Window(started_at=0.0)
    for i in range(16):
        busy.add(sent_at=0.1, latency_s=1.0 + i / 100, outcome="ok", in_flight=16)
        idle.add(sent_at=0.1, latency_s=1.0 + i / 100, outcome="ok", in_flight=3)
    assert busy.due(config, now=1.2)
    assert apply_window(state, busy, config, now=1.2).limit == 32
    assert apply_window(state, idle, config, now=1.2).limit == 16
    # Errors are not samples.
    errors = Window(started_at=0.0)
    for _ in range(20):
        errors.add(sent_at=0.1, latency_s=0.1, outcome="error", in_flight=16)
    assert not errors.due(config, now=1.0)


@pytest.mark.parametrize("faults", [0.05, 0.1, 0.2])
def test_random_refusals_do_not_starve_the_server(faults: float) -> None:
    # Like a flaky server or a rate limit: refusals at every level, not above a concurrency.
    result = simulate(128, 0.2, faults=faults, duration_s=60.0)
    assert result.busy >= 0.9, result


# --- run_sync carries the caller's context -------------------------------------------------------

_probe_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("probe", default=None)


def test_run_sync_runs_in_the_callers_context() -> None:
    async def read() -> tuple[str | None, str | None]:
        await asyncio.sleep(0)
        return _probe_var.get(), current_job_id.get()

    seen: list[tuple[str | None, str | None]] = []

    def in_thread(value: str) -> None:
        _probe_var.set(value)
        with job_context(f"job-{value}"):
            seen.append(run_sync(read()))

    threads = [threading.Thread(target=in_thread, args=(v,)) for v in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(seen) == [("a", "job-a"), ("b", "job-b")]
    assert run_sync(read()) == (None, None)

    async def fails() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError):
        run_sync(fails())


# --- the gate in one process ---------------------------------------------------------------------


def test_local_gate_holds_the_limit_and_shares_it_between_jobs() -> None:
    gate = LocalConcurrencyGate(AdaptiveConfig(initial=4, cap=4))
    held = {"now": 0, "most": 0}

    async def one(job: str) -> None:
        slot = await gate.acquire(job)
        held["now"] += 1
        held["most"] = max(held["most"], held["now"])
        await asyncio.sleep(0.002)
        held["now"] -= 1
        await gate.release(slot, 0.002, "ok")

    async def fairness() -> list[str]:
        slots = [await gate.acquire("A") for _ in range(4)]
        order: list[str] = []

        async def wait(job: str) -> Slot:
            slot = await gate.acquire(job)
            order.append(job)
            return slot

        waiters = [asyncio.create_task(wait(j)) for j in ("A", "A", "B", "B")]
        await asyncio.sleep(0.01)
        load = await gate.snapshot()
        assert replace(load, baseline_s=0.0) == BackendLoad(in_flight=4, limit=4, waiting=4)
        for slot in slots:
            await gate.release(slot, 0.1, "error")
            await asyncio.sleep(0)
        for slot in await asyncio.gather(*waiters):
            await gate.release(slot, 0.1, "error")
        return order

    async def many() -> None:
        await asyncio.wait_for(asyncio.gather(*(one(j) for j in "ABC" * 40)), 30)

    asyncio.run(many())
    assert held["most"] == 4
    # A holds all 4 slots: B's waiters get the next two (A is over its share of 2 while B waits).
    assert asyncio.run(fairness()) == ["B", "B", "A", "A"]


# --- the gate in Redis ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> str:
    # Without TEST_REDIS_URL: a database the integration tests (which flush theirs) leave alone.
    url = services.redis_url() or "redis://127.0.0.1:6379/15"
    if not services.redis_ping(url):
        reason = f"no Redis answers at {url} (set TEST_REDIS_URL)"
        if os.environ.get(services.REQUIRE_SERVICES_ENV) == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return url


@pytest.fixture
def backend(redis_url: str) -> Iterator[str]:
    """A backend name of this test alone; its keys are deleted afterwards (and only them)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    with client:
        keys = list(client.scan_iter(match=f"selfinstruct:concurrency:{name}:*"))
        if keys:
            client.delete(*keys)


def _redis_gate(url: str, backend: str, limit: int, ttl_s: float = 30.0) -> RedisConcurrencyGate:
    return RedisConcurrencyGate(url, backend, AdaptiveConfig(initial=limit, cap=limit), ttl_s)


def test_two_processes_never_hold_more_than_the_limit(redis_url: str, backend: str) -> None:
    gates = [_redis_gate(redis_url, backend, 5) for _ in range(2)]  # as two processes would
    held = {"now": 0, "most": 0}
    rng = random.Random(3)

    async def one(gate: RedisConcurrencyGate, job: str) -> None:
        slot = await gate.acquire(job)
        assert slot.shared and slot.in_flight <= 5
        held["now"] += 1
        held["most"] = max(held["most"], held["now"])
        pause = rng.uniform(0.005, 0.02)
        await asyncio.sleep(pause)
        held["now"] -= 1
        await gate.release(slot, pause, "ok")

    async def run() -> BackendLoad:
        tasks = [one(gates[i % 2], f"job-{i % 3}") for i in range(80)]
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return await gates[0].snapshot()

    load = asyncio.run(run())
    assert held["most"] == 5
    assert load.in_flight == 0 and load.waiting == 0 and load.limit <= 5


def test_slots_of_a_dead_process_expire(redis_url: str, backend: str) -> None:
    dead = _redis_gate(redis_url, backend, 2, ttl_s=0.4)
    alive = _redis_gate(redis_url, backend, 2, ttl_s=0.4)

    async def run() -> float:
        await dead.acquire("J")
        await dead.acquire("J")  # never given back: the process was killed ...
        assert dead._renewer is not None
        dead._renewer.cancel()  # ... and renews nothing any more
        assert (await alive.snapshot()).in_flight == 2
        started = time.perf_counter()
        slot = await asyncio.wait_for(alive.acquire("J"), 5)
        waited = time.perf_counter() - started
        assert (await alive.snapshot()).in_flight == 1
        await alive.release(slot, 0.1, "ok")
        return waited

    assert 0.2 <= asyncio.run(run()) < 3


def test_a_live_process_keeps_its_slots_past_the_lease(redis_url: str, backend: str) -> None:
    """A request may run far longer than a slot's lease (the default lease is 15 s, the
    request timeout minutes): its process renews the lease, so nobody else gets the slot.
    The lease is 0.4 s here so the test takes about a second."""
    holder = _redis_gate(redis_url, backend, 1, ttl_s=0.4)
    other = _redis_gate(redis_url, backend, 1, ttl_s=0.4)

    async def run() -> None:
        slot = await holder.acquire("J")
        await asyncio.sleep(1.2)  # three leases
        assert (await other.snapshot()).in_flight == 1
        waiter = asyncio.create_task(other.acquire("K"))
        await asyncio.sleep(0.3)
        assert not waiter.done()
        await holder.release(slot, 1.5, "ok")
        await other.release(await asyncio.wait_for(waiter, 2), 0.1, "ok")
        assert (await other.snapshot()).in_flight == 0
        assert holder._held == set()

    asyncio.run(run())


def test_the_default_lease_frees_a_dead_process_slots_within_seconds() -> None:
    from app.llm.concurrency import SLOT_LEASE_S

    gate = gate_for("lease-default", None, "redis://127.0.0.1:1/0")
    assert isinstance(gate, RedisConcurrencyGate) and gate._slot_ttl_s == SLOT_LEASE_S <= 15


def test_a_waiting_job_gets_the_next_slots(redis_url: str, backend: str) -> None:
    one, other = _redis_gate(redis_url, backend, 4), _redis_gate(redis_url, backend, 4)

    async def run() -> None:
        a_slots = [await one.acquire("A") for _ in range(4)]
        a_waiter = asyncio.create_task(one.acquire("A"))
        b_waiters = [asyncio.create_task(other.acquire("B")) for _ in range(2)]
        await asyncio.sleep(0.2)  # both jobs have been seen waiting
        assert not a_waiter.done() and not any(w.done() for w in b_waiters)
        load = await other.snapshot()
        assert (load.in_flight, load.limit, load.waiting) == (4, 4, 3)
        # A holds 3 of 4 after this, above its share of 2 while B waits: B's turn, twice.
        await one.release(a_slots[0], 0.1, "error")
        done, _ = await asyncio.wait(b_waiters, timeout=2, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and not a_waiter.done()
        await one.release(a_slots[1], 0.1, "error")
        b_slots = await asyncio.wait_for(asyncio.gather(*b_waiters), 2)
        await asyncio.sleep(0.1)
        assert not a_waiter.done()
        # Now A holds 2 and B 2: A's waiter is next.
        await one.release(a_slots[2], 0.1, "error")
        last = await asyncio.wait_for(a_waiter, 2)
        for slot in [a_slots[3], last]:
            await one.release(slot, 0.1, "error")
        for slot in b_slots:
            await other.release(slot, 0.1, "error")
        assert (await one.snapshot()).in_flight == 0

    asyncio.run(run())


def test_backend_loads_read_without_taking_part(redis_url: str, backend: str) -> None:
    gate = _redis_gate(redis_url, backend, 8)
    idle = f"{backend}-idle"

    async def run() -> tuple[dict[str, BackendLoad], dict[str, BackendLoad]]:
        slots = [await gate.acquire("J") for _ in range(3)]
        during = await backend_loads(redis_url, [backend, idle])
        for slot in slots:
            await gate.release(slot, 0.1, "ok")
        return during, await backend_loads(redis_url, [backend])

    async def measured() -> BackendLoad:
        for _ in range(16):  # one window of answers: the limit learns the no-load latency
            await gate.release(await gate.acquire("J"), 0.25, "ok")
        return (await backend_loads(redis_url, [backend]))[backend]

    during, after = asyncio.run(run())
    assert during == {backend: BackendLoad(3, 8, 0), idle: BackendLoad(0, 16, 0)}
    assert after[backend].in_flight == 0
    assert asyncio.run(measured()).baseline_s == pytest.approx(0.25)
    assert asyncio.run(backend_loads("redis://127.0.0.1:1/0", [backend])) == {}


def test_redis_unreachable_lets_requests_through(caplog: pytest.LogCaptureFixture) -> None:
    gate = RedisConcurrencyGate("redis://127.0.0.1:1/0", "down", AdaptiveConfig(cap=1), 30)

    async def run() -> list[Slot]:
        slots = await asyncio.wait_for(asyncio.gather(*(gate.acquire("J") for _ in range(5))), 10)
        for slot in slots:
            await gate.release(slot, 0.1, "ok")
        return slots

    with caplog.at_level(logging.WARNING):
        slots = asyncio.run(run())
    assert len(slots) == 5 and not any(s.shared for s in slots)
    assert caplog.text.count("concurrency limit not applied") == 1


def test_gate_for_is_one_per_backend_and_process() -> None:
    one = gate_for("b", None, None)
    assert one is gate_for("b", None, None)
    assert isinstance(one, LocalConcurrencyGate) and one.limit == 16
    capped = gate_for("b", 4, None, initial=16)
    assert capped is not one and isinstance(capped, LocalConcurrencyGate) and capped.limit == 4
    assert isinstance(gate_for("b", None, "redis://127.0.0.1:1/0"), RedisConcurrencyGate)


# --- the client against a server that serves C at once ------------------------------------------


class QueueingServer:
    """An OpenAI-compatible completions endpoint that serves `capacity` requests at once, each
    for about `latency_s`, and queues the rest; it counts the requests open at any time."""

    def __init__(self, capacity: int, latency_s: float) -> None:
        self.capacity = capacity
        self.latency_s = latency_s
        self.open = 0
        self.most_open = 0
        self.served = 0
        self._rng = random.Random(5)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _completions(self, request: web.Request) -> web.Response:
        await request.read()
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            async with self._slots:
                await asyncio.sleep(self.latency_s * math.exp(self._rng.gauss(0.0, 0.3)))
        finally:
            self.open -= 1
        self.served += 1
        body = {
            "choices": [{"text": "ok", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        }
        return web.Response(text=json.dumps(body), content_type="application/json")

    async def _start(self) -> None:
        self._slots = asyncio.Semaphore(self.capacity)
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def __enter__(self) -> QueueingServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


class CheckedLocalGate(LocalConcurrencyGate):
    """Records the limit whenever a slot is taken, and any slot taken beyond it."""

    def __init__(self, config: AdaptiveConfig) -> None:
        super().__init__(config)
        self.limits: list[int] = []
        self.beyond = 0

    def _take(self, job: str) -> Slot:
        self.limits.append(self.limit)
        self.beyond += self._in_flight >= self.limit
        return super()._take(job)


@pytest.fixture
def queueing_server() -> Iterator[QueueingServer]:
    # Slow start goes 16, 32, 64 (under 1.5 C: latency barely rises), 128 (2.7 C: it doubles).
    with QueueingServer(capacity=48, latency_s=0.08) as server:
        yield server


def test_client_grows_the_limit_and_keeps_in_flight_under_it(
    queueing_server: QueueingServer,
) -> None:
    gate = CheckedLocalGate(AdaptiveConfig())
    client = OpenAICompatClient(
        base_url=queueing_server.base_url, api_key="k", model="m", timeout_s=30, gate=gate
    )
    requests = [LLMRequest(prompt=f"p{i}", max_tokens=4) for i in range(1000)]
    try:
        answers = client.complete_many(requests, concurrency=300)
    finally:
        client.close()
    assert all(not isinstance(a, Exception) for a in answers)
    capacity = queueing_server.capacity
    assert gate.beyond == 0
    assert 16 < queueing_server.most_open <= max(gate.limits)
    # Past slow start (which may overshoot once on a busy machine), at most 3 C.
    assert max(gate.limits[len(gate.limits) // 2 :]) <= 3 * capacity


def test_client_through_the_redis_gate(
    queueing_server: QueueingServer, redis_url: str, backend: str
) -> None:
    gate = gate_for(backend, None, redis_url)
    assert isinstance(gate, RedisConcurrencyGate)
    client = OpenAICompatClient(
        base_url=queueing_server.base_url, api_key="k", model="m", timeout_s=30, gate=gate
    )
    limits: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        async def loads() -> None:
            while not stop.is_set():
                limits.append((await backend_loads(redis_url, [backend]))[backend].limit)
                await asyncio.sleep(0.05)

        asyncio.run(loads())

    watcher = threading.Thread(target=watch)
    watcher.start()
    requests = [LLMRequest(prompt=f"p{i}", max_tokens=4) for i in range(1000)]
    try:
        with job_context("job-e2e"):
            answers = client.complete_many(requests, concurrency=300)
    finally:
        stop.set()
        watcher.join(10)
        client.close()
    assert all(not isinstance(a, Exception) for a in answers)
    capacity = queueing_server.capacity
    assert 16 < queueing_server.most_open <= max(limits)
    assert max(limits[len(limits) // 2 :]) <= 3 * capacity
    assert run_sync(gate.snapshot()).in_flight == 0


def test_a_failed_load_read_leaves_the_gate_as_it_was(caplog: pytest.LogCaptureFixture) -> None:
    """Instance windows read the load about once a second as advice: a failed read raises to
    the reader and does not switch the gate to going without Redis (which logs its warning)."""
    gate = RedisConcurrencyGate("redis://127.0.0.1:1/0", "down", AdaptiveConfig(cap=1), 30)
    with caplog.at_level(logging.WARNING), pytest.raises(redis.RedisError):
        asyncio.run(gate.snapshot())
    assert "concurrency limit not applied" not in caplog.text


def test_client_goes_ahead_when_redis_is_down(queueing_server: QueueingServer) -> None:
    gate = RedisConcurrencyGate("redis://127.0.0.1:1/0", "down", AdaptiveConfig(cap=1), 30)
    client = OpenAICompatClient(
        base_url=queueing_server.base_url, api_key="k", model="m", timeout_s=30, gate=gate
    )
    try:
        answers = client.complete_many([LLMRequest(prompt="p", max_tokens=4)] * 20, 20)
    finally:
        client.close()
    assert all(not isinstance(a, Exception) for a in answers)
    assert queueing_server.most_open > 1  # the cap of 1 could not be applied


class RecordingGate(LocalConcurrencyGate):
    """Records what each request reported when it gave its slot back."""

    def __init__(self) -> None:
        super().__init__(AdaptiveConfig())
        self.outcomes: list[str] = []
        self.jobs: list[str] = []

    async def release(self, slot: Slot, latency_s: float, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.jobs.append(slot.job)
        await super().release(slot, latency_s, outcome)


def test_each_attempt_holds_a_slot_and_reports_how_it_went() -> None:
    statuses = iter([429, 503, 500, 200, 400])

    async def completions(request: web.Request) -> web.Response:
        status = next(statuses)
        body = {"choices": [{"text": "ok", "finish_reason": "stop"}]} if status == 200 else {}
        return web.json_response(body, status=status, headers={"retry-after": "0"})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "listed"}]})

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        app.router.add_get("/v1/models", models)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    gate = RecordingGate()
    client = OpenAICompatClient(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="k", model=None, max_retries=4, gate=gate
    )
    try:
        with job_context("job-7"):
            assert client.complete(LLMRequest(prompt="p", max_tokens=4)).text == "ok"
            with pytest.raises(LLMPermanentError):
                client.complete(LLMRequest(prompt="p", max_tokens=4))
    finally:
        client.close()
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    # The model listing took no slot; every completion attempt did, under the caller's job.
    assert gate.outcomes == ["overload", "overload", "error", "ok", "error"]
    assert set(gate.jobs) == {"job-7"}
    assert run_sync(gate.snapshot()).in_flight == 0


def test_settings_reach_the_gate() -> None:
    settings = Settings(
        openai_base_url="http://127.0.0.1:9/v1",
        llm_max_concurrency=8,
        llm_initial_concurrency=4,
        backends={"big": {"base_url": "http://127.0.0.1:9/v1", "max_concurrency": 2000}},
    )
    default = build_llm_client(settings, GenerationOptions(model="m"))
    assert isinstance(default, OpenAICompatClient)
    assert isinstance(default.gate, LocalConcurrencyGate) and default.gate.limit == 4
    assert default.gate is gate_for("default", 8, None, initial=4)
    big = build_llm_client(settings, GenerationOptions(model="m", backend="big"))
    assert isinstance(big, OpenAICompatClient) and big.gate is not default.gate
    assert Settings().llm_max_concurrency is None and Settings().llm_initial_concurrency == 16
