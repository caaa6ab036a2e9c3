"""How many requests may be in flight to each LLM backend, learnt as they go, shared by every worker.

Each HTTP attempt of a completion holds a slot of its backend's gate for its duration and
reports its latency and outcome when it gives the slot back; the limit adapts to those reports
(`adaptive.py`). The point is to keep a batching server full without a queue in front of it
that only adds latency, and to back off before a server that refuses requests starts doing so
on every other request, whatever the number of worker processes.

With a Redis broker the slots and the limit live in Redis, on Redis's clock, shared by every
process on every host: slots in a sorted set scored by their expiry, which the process holding
them pushes back every few seconds while its requests run (a lease: the slots of a killed process
come back by themselves within SLOT_LEASE_S, however long its requests were allowed to take; with
the request timeout as the expiry, a killed worker's slots blocked the backend for minutes),
taken by one Lua script that
also shares the limit fairly between jobs: a job may hold more than ceil(limit / active jobs)
only while no other job is waiting. Each process gathers its own window of answers and, at its
end, applies the update to the shared state with a compare-and-set on a version. Without Redis
(embedded mode, one process) the same gate lives in the process.

If Redis cannot be reached requests go ahead without the shared gate (logged once a minute),
as with the rate limits (`rate_limit.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from app.llm.adaptive import (
    AdaptiveConfig,
    LimitState,
    Outcome,
    Window,
    apply_window,
    effective_limit,
    initial_state,
)

log = logging.getLogger(__name__)

DEFAULT_CEILING = 1024  # the limit never goes above this unless a backend's cap says otherwise
DEFAULT_INITIAL = 16
ANONYMOUS_JOB = "-"  # requests made outside any job share this name for fairness
_WAITING_SEEN_S = 2.0  # a job counts as waiting for this long after it last found no slot
_FIRST_POLL_S = 0.004  # a waiter asks Redis again after this, doubling up to _MAX_POLL_S
_MAX_POLL_S = 0.05
_STATE_TTL_S = 7 * 24 * 3600  # a backend's learnt limit is kept this long without traffic
_CAS_ATTEMPTS = 5
_REDIS_ERROR_LOG_EVERY_S = 60.0
_REDIS_RETRY_AFTER_S = 5.0  # after a failure, go ahead without Redis this long before retrying
SLOT_LEASE_S = 15.0  # a slot of a dead process is free again after at most this long
_RENEWALS_PER_LEASE = 3  # a live process renews its slots this many times per lease


@dataclass(frozen=True, slots=True)
class BackendLoad:
    in_flight: int
    limit: int
    waiting: int
    baseline_s: float = 0.0  # the backend's no-load latency as the limit learnt it; 0: unknown


@dataclass(frozen=True, slots=True)
class Slot:
    """A held slot, and what its answer will be measured against."""

    id: str
    job: str
    sent_at: float  # on the gate's clock
    in_flight: int  # requests in flight to the backend (every process) with this one
    local_in_flight: int  # ... of this process
    shared: bool = True  # False: taken without the gate (Redis unavailable)


class ConcurrencyGate(Protocol):
    async def acquire(self, job: str | None) -> Slot:
        """Wait for a slot of the backend for one request of `job`, and take it."""

    async def release(self, slot: Slot, latency_s: float, outcome: Outcome) -> None:
        """Give the slot back, with how the request went ("ok": `latency_s` is a sample;
        "overload": HTTP 429/503 or a timeout; "error": anything else, not a sample)."""

    async def snapshot(self) -> BackendLoad:
        """Requests in flight, the current limit and requests waiting for a slot."""


def _share(limit: int, active_jobs: int) -> int:
    return math.ceil(limit / max(1, active_jobs))


class LocalConcurrencyGate:
    """The gate inside one process (asyncio, on the LLM loop)."""

    def __init__(self, config: AdaptiveConfig) -> None:
        self._config = config
        self._state = initial_state(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reset()

    def _reset(self) -> None:
        self._window = Window(started_at=time.monotonic())
        self._in_flight = 0
        self._holding: Counter[str] = Counter()
        self._waiting: OrderedDict[str, deque[asyncio.Future[Slot]]] = OrderedDict()

    def _bind(self) -> None:
        """Slots and waiters belong to one loop; a new loop (a forked child) starts afresh."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._reset()

    @property
    def limit(self) -> int:
        return effective_limit(self._state, self._config)

    async def acquire(self, job: str | None) -> Slot:
        self._bind()
        name = job or ANONYMOUS_JOB
        if not self._waiting and self._eligible(name):
            return self._take(name)
        future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(name, deque()).append(future)
        self._grant()  # this job may be eligible where the ones waiting before it are not
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._drop(future.result())  # granted as the waiter was cancelled
            else:
                self._forget(name, future)
            raise

    async def release(self, slot: Slot, latency_s: float, outcome: Outcome) -> None:
        now = time.monotonic()
        if outcome != "error":
            self._window.add(slot.sent_at, latency_s, outcome, slot.in_flight, slot.local_in_flight)
        if self._window.due(self._config, now, self._state.baseline_s):
            self._state = apply_window(self._state, self._window, self._config, now)
            self._window = Window(started_at=now)
        self._drop(slot)

    async def snapshot(self) -> BackendLoad:
        waiting = sum(len(q) for q in self._waiting.values())
        return BackendLoad(self._in_flight, self.limit, waiting, self._state.baseline_s)

    def _eligible(self, job: str) -> bool:
        limit = self.limit
        if self._in_flight >= limit:
            return False
        others_waiting = any(name != job for name in self._waiting)
        if not others_waiting:
            return True
        active = set(self._holding) | set(self._waiting) | {job}
        return self._holding[job] < _share(limit, len(active))

    def _take(self, job: str) -> Slot:
        self._in_flight += 1
        self._holding[job] += 1
        now = time.monotonic()
        self._window.note_sent(now, self._in_flight)
        return Slot(
            id=uuid.uuid4().hex,
            job=job,
            sent_at=now,
            in_flight=self._in_flight,
            local_in_flight=self._in_flight,
        )

    def _drop(self, slot: Slot) -> None:
        if self._in_flight > 0:
            self._in_flight -= 1
        if self._holding[slot.job] > 1:
            self._holding[slot.job] -= 1
        else:
            self._holding.pop(slot.job, None)
        self._grant()

    def _forget(self, job: str, future: asyncio.Future[Slot]) -> None:
        queue = self._waiting.get(job)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(future)
        if not queue:
            del self._waiting[job]

    def _grant(self) -> None:
        """Hand free slots to waiters: jobs under their share first, in arrival order."""
        while self._waiting and self._in_flight < self.limit:
            chosen = next((job for job in self._waiting if self._eligible(job)), None)
            if chosen is None:
                return
            queue = self._waiting[chosen]
            future = queue.popleft()
            if not queue:
                del self._waiting[chosen]
            else:
                self._waiting.move_to_end(chosen)  # round robin between jobs
            if not future.done():
                future.set_result(self._take(chosen))


# KEYS: slots (zset id -> expiry), slot jobs (hash id -> job), holders (hash job -> slots held),
# waiting jobs (zset job -> last seen waiting), waiters (zset process:job -> last seen),
# waiter counts (hash process:job -> count), state (hash).
# ARGV: slot id prefix, job, waiter field, slot TTL, initial limit, waiting window, slots wanted,
# state TTL. Takes what it may of the slots wanted, as <prefix>:1, <prefix>:2...
# Returns {slots taken, in flight after, limit, Redis time}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local prefix, job, waiter = ARGV[1], ARGV[2], ARGV[3]
local ttl, seen, want = tonumber(ARGV[4]), tonumber(ARGV[6]), tonumber(ARGV[7])
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local owner = redis.call('HGET', KEYS[2], gone)
  if owner then
    if redis.call('HINCRBY', KEYS[3], owner, -1) <= 0 then redis.call('HDEL', KEYS[3], owner) end
    redis.call('HDEL', KEYS[2], gone)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - seen)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - seen)
if redis.call('HSETNX', KEYS[7], 'effective', ARGV[5]) == 1 then
  redis.call('EXPIRE', KEYS[7], ARGV[8])  -- a new backend: its limit shows before it adapts
end
local limit = tonumber(redis.call('HGET', KEYS[7], 'effective'))
local in_flight = redis.call('ZCARD', KEYS[1])
local take = math.max(0, math.min(want, limit - in_flight))
if take > 0 then
  local others = false
  local active = {[job] = true}
  local count = 1
  for _, name in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    if name ~= job then others = true end
    if not active[name] then active[name] = true; count = count + 1 end
  end
  if others then
    -- Another job waits: this one may only fill its share.
    for _, name in ipairs(redis.call('HKEYS', KEYS[3])) do
      if not active[name] then active[name] = true; count = count + 1 end
    end
    local mine = tonumber(redis.call('HGET', KEYS[3], job) or '0')
    take = math.max(0, math.min(take, math.ceil(limit / count) - mine))
  end
end
for i = 1, take do
  local id = prefix .. ':' .. i
  redis.call('ZADD', KEYS[1], now + ttl, id)
  redis.call('HSET', KEYS[2], id, job)
end
if take > 0 then redis.call('HINCRBY', KEYS[3], job, take) end
local rest = want - take
if rest > 0 then
  redis.call('ZADD', KEYS[4], now, job)
  redis.call('ZADD', KEYS[5], now, waiter)
  redis.call('HSET', KEYS[6], waiter, rest)
else
  redis.call('ZREM', KEYS[4], job)
  redis.call('ZREM', KEYS[5], waiter)
  redis.call('HDEL', KEYS[6], waiter)
end
local life = math.ceil(ttl * 2 + seen)
for i = 1, 6 do redis.call('EXPIRE', KEYS[i], life) end
return {take, in_flight + take, limit, tostring(now)}
"""

# KEYS: slots, slot jobs, holders. ARGV: slot id. Returns Redis time.
_GIVE_BACK = """
local t = redis.call('TIME')
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  local owner = redis.call('HGET', KEYS[2], ARGV[1])
  if owner then
    if redis.call('HINCRBY', KEYS[3], owner, -1) <= 0 then redis.call('HDEL', KEYS[3], owner) end
    redis.call('HDEL', KEYS[2], ARGV[1])
  end
end
return tostring(tonumber(t[1]) + tonumber(t[2]) / 1000000)
"""

# KEYS: slots, slot jobs, holders. ARGV: lease, key life, then the slot ids to renew (those
# still there: a slot given back is not brought back). Returns Redis time.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 3, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
return tostring(now)
"""

# KEYS: state. ARGV: the version it must still have, TTL, then field, value pairs.
_PUT_STATE = """
if (redis.call('HGET', KEYS[1], 'version') or '0') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: slots, waiters, waiter counts, state. ARGV: default limit, waiting window.
# Returns {in flight, limit, waiting, baseline latency (a string: Lua numbers become integers)}.
_LOAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local in_flight = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local limit = tonumber(redis.call('HGET', KEYS[4], 'effective') or ARGV[1])
local waiting = 0
for _, waiter in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now - tonumber(ARGV[2]), '+inf')) do
  waiting = waiting + tonumber(redis.call('HGET', KEYS[3], waiter) or '0')
end
return {in_flight, limit, waiting, redis.call('HGET', KEYS[4], 'baseline_s') or '0'}
"""


_TAKE_KEYS = (
    "slots",
    "slot_jobs",
    "holders",
    "waiting_jobs",
    "waiters",
    "waiter_counts",
    "state",
)
_LOAD_KEYS = ("slots", "waiters", "waiter_counts", "state")


def _keys(backend: str) -> dict[str, str]:
    prefix = f"selfinstruct:concurrency:{backend}"
    names = _TAKE_KEYS
    return {name: f"{prefix}:{name}" for name in names}


def _state_fields(state: LimitState, config: AdaptiveConfig) -> list[str]:
    pairs: list[str] = []
    for name, value in asdict(state).items():
        pairs += [name, str(int(value) if isinstance(value, bool) else value)]
    return [*pairs, "effective", str(effective_limit(state, config))]


def _parse_state(raw: dict[bytes, bytes], config: AdaptiveConfig) -> LimitState:
    if not raw:
        return initial_state(config)
    values: dict[str, Any] = {}
    for spec in fields(LimitState):
        text = raw.get(spec.name.encode())
        if text is None:
            continue
        if spec.name in ("slow_start", "rising"):
            values[spec.name] = text == b"1"
        elif spec.name in ("version", "overload_repeats", "cuts_in_row"):
            values[spec.name] = int(float(text))
        else:
            values[spec.name] = float(text)
    if "limit" not in values:
        return initial_state(config)
    values["limit"] = max(float(config.minimum), min(float(config.cap), values["limit"]))
    return LimitState(**values)


class RedisConcurrencyGate:
    """Slots and limit in Redis, shared by every process that names the same backend.

    In each process, one task per job asks Redis for as many slots as the job has requests
    waiting, hands out what it gets, and asks again after a short sleep (a few ms, doubling up
    to 50 ms, with jitter) or as soon as a slot of this process is given back.
    """

    def __init__(
        self, redis_url: str, backend: str, config: AdaptiveConfig, slot_ttl_s: float
    ) -> None:
        self._url = redis_url
        self._config = config
        keys = _keys(backend)
        self._state_key = keys["state"]
        self._take_keys = [keys[k] for k in _TAKE_KEYS]
        self._give_keys = [keys[k] for k in ("slots", "slot_jobs", "holders")]
        self._load_keys = [keys[k] for k in _LOAD_KEYS]
        self._slot_ttl_s = slot_ttl_s
        self._bound: (
            tuple[asyncio.AbstractEventLoop, aioredis.Redis, dict[str, AsyncScript]] | None
        ) = None
        self._last_error_log = 0.0
        self._down_until = 0.0
        self._state = initial_state(config)
        self._clock_offset = 0.0  # Redis time minus time.monotonic(), as of the last reply
        self._reset()

    def _reset(self) -> None:
        self._process = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._window = Window(started_at=0.0)
        self._ending = False
        self._local = 0
        self._waiters: dict[str, deque[asyncio.Future[Slot]]] = {}
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._sleepers: set[asyncio.Future[None]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._held: set[str] = set()  # shared slots this process holds: their leases it renews
        self._renewer: asyncio.Task[None] | None = None

    def _redis(self) -> tuple[aioredis.Redis, dict[str, AsyncScript]]:
        """A client and scripts of the running loop (redis.asyncio connections belong to one
        loop; a forked worker child runs a new one, and starts its own bookkeeping afresh)."""
        loop = asyncio.get_running_loop()
        if self._bound is None or self._bound[0] is not loop:
            client = aioredis.Redis.from_url(self._url, socket_timeout=5, socket_connect_timeout=5)
            scripts = {
                "take": client.register_script(_TAKE),
                "give_back": client.register_script(_GIVE_BACK),
                "renew": client.register_script(_RENEW),
                "put_state": client.register_script(_PUT_STATE),
                "load": client.register_script(_LOAD),
            }
            self._bound = (loop, client, scripts)
            self._reset()
        return self._bound[1], self._bound[2]

    # --- the protocol ----------------------------------------------------------------------------

    async def acquire(self, job: str | None) -> Slot:
        self._redis()
        name = job or ANONYMOUS_JOB
        if time.monotonic() < self._down_until:
            return self._unshared(name)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Slot] = loop.create_future()
        self._waiters.setdefault(name, deque()).append(future)
        poller = self._pollers.get(name)
        if poller is None or poller.done():
            self._pollers[name] = loop.create_task(self._poll(name))
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._give_back_soon(future.result())  # granted as the waiter was cancelled
            raise

    async def release(self, slot: Slot, latency_s: float, outcome: Outcome) -> None:
        if not slot.shared:
            return
        self._local = max(0, self._local - 1)
        self._held.discard(slot.id)
        _, scripts = self._redis()
        try:
            if outcome != "error":
                self._window.add(
                    slot.sent_at, latency_s, outcome, slot.in_flight, slot.local_in_flight
                )
            # Before the slot is given back, so that a cut applies to whoever takes it next.
            if not self._ending and self._window.due(
                self._config, self._now(), self._state.baseline_s
            ):
                self._ending = True
                try:
                    await self._end_window()
                finally:
                    self._ending = False
            self._note_clock(
                float(await scripts["give_back"](keys=self._give_keys, args=[slot.id]))
            )
        except Exception as exc:  # any Redis failure: see the module docstring
            self._unavailable(exc)  # the slot expires by itself
        finally:
            self._wake()

    async def snapshot(self) -> BackendLoad:
        """Raises when Redis cannot be asked. A read is advice (instance windows size themselves
        by it): its failure must not switch the gate to going without Redis; requests find out
        themselves."""
        _, scripts = self._redis()
        return await _read_load(scripts["load"], self._load_keys, self._config.start)

    # --- internals -------------------------------------------------------------------------------

    async def _poll(self, job: str) -> None:
        try:
            await self._poll_until_served(job)
        except Exception:  # a bug here must not leave requests waiting for ever
            log.exception("concurrency gate failed; requests go ahead without it")
            self._let_go(job)

    def _let_go(self, job: str) -> None:
        for future in self._waiters.pop(job, ()):
            if not future.done():
                future.set_result(self._unshared(job))

    async def _poll_until_served(self, job: str) -> None:
        """Get slots for this job's waiters in this process until none is left."""
        _, scripts = self._redis()
        pause = _FIRST_POLL_S
        while True:
            waiters = self._waiters.get(job)
            while waiters and waiters[0].done():  # cancelled while waiting
                waiters.popleft()
            if not waiters:
                self._waiters.pop(job, None)
                return
            want, prefix = len(waiters), uuid.uuid4().hex
            args = [
                prefix,
                job,
                f"{self._process}:{job}",
                self._slot_ttl_s,
                self._config.start,
                _WAITING_SEEN_S,
                want,
                _STATE_TTL_S,
            ]
            try:
                taken, in_flight, _, at = await scripts["take"](keys=self._take_keys, args=args)
            except Exception as exc:  # as above: let them all go ahead
                self._unavailable(exc)
                self._let_go(job)
                return
            now = float(at)
            self._note_clock(now)
            if not self._window.started_at:  # the first window starts with the first slot
                self._window = Window(started_at=now)
            first = int(in_flight) - int(taken)
            for number in range(1, int(taken) + 1):
                slot = Slot(f"{prefix}:{number}", job, now, first + number, self._local + 1)
                while waiters and waiters[0].done():
                    waiters.popleft()
                if waiters:
                    self._local += 1
                    self._window.note_sent(now, slot.in_flight)
                    self._hold(slot)
                    waiters.popleft().set_result(slot)
                else:
                    self._give_back_soon(slot)
            if int(taken) < want:
                await self._pause(pause)
                pause = min(_MAX_POLL_S, pause * 2)
            else:
                pause = _FIRST_POLL_S

    def _hold(self, slot: Slot) -> None:
        """Keep the slot's lease fresh until it is given back."""
        self._held.add(slot.id)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        _, scripts = self._redis()
        life = math.ceil(self._slot_ttl_s * 2 + _WAITING_SEEN_S)
        while self._held:
            await asyncio.sleep(self._slot_ttl_s / _RENEWALS_PER_LEASE)
            if not self._held:
                return
            try:
                args = [self._slot_ttl_s, life, *sorted(self._held)]
                self._note_clock(float(await scripts["renew"](keys=self._give_keys, args=args)))
            except Exception as exc:  # as for every Redis call: see the module docstring
                self._unavailable(exc)

    def _give_back_soon(self, slot: Slot) -> None:
        """Give back a slot nobody will use, without waiting for it."""
        if not slot.shared:
            return
        self._held.discard(slot.id)
        _, scripts = self._redis()
        call = scripts["give_back"](keys=self._give_keys, args=[slot.id])
        task: asyncio.Task[Any] = asyncio.ensure_future(call)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda done: done.cancelled() or done.exception())  # best effort

    async def _end_window(self) -> None:
        """Apply this process's window to the shared state (compare-and-set on its version)."""
        client, scripts = self._redis()
        for _ in range(_CAS_ATTEMPTS):
            state = _parse_state(await client.hgetall(self._state_key), self._config)
            now = self._now()
            if state.updated_at > self._window.started_at:
                # Another process changed the limit during this window: keep only what was sent
                # since, and wait for more if that is not a window any more.
                self._window.rebase(state.updated_at)
                self._state = state
                if not self._window.due(self._config, now, state.baseline_s):
                    return
            new = apply_window(state, self._window, self._config, now)
            if new is state:
                break
            args = [str(state.version), _STATE_TTL_S, *_state_fields(new, self._config)]
            if int(await scripts["put_state"](keys=[self._state_key], args=args)):
                state = new
                break
        self._state = state
        self._window = Window(started_at=self._now())

    async def _pause(self, seconds: float) -> None:
        """Sleep (with jitter) until a slot of this process is given back, at most `seconds`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._sleepers.add(future)
        timer = loop.call_later(
            seconds * (0.5 + random.random()), lambda: future.done() or future.set_result(None)
        )
        try:
            await future
        finally:
            timer.cancel()
            self._sleepers.discard(future)

    def _wake(self) -> None:
        for future in self._sleepers:
            if not future.done():
                future.set_result(None)

    def _note_clock(self, redis_now: float) -> None:
        self._clock_offset = redis_now - time.monotonic()

    def _now(self) -> float:
        """Redis's clock, as of the last script reply."""
        return time.monotonic() + self._clock_offset

    def _unshared(self, job: str) -> Slot:
        return Slot(uuid.uuid4().hex, job, self._now(), 0, 0, shared=False)

    def _unavailable(self, exc: Exception) -> None:
        now = time.monotonic()
        self._down_until = now + _REDIS_RETRY_AFTER_S
        if now - self._last_error_log >= _REDIS_ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.warning("concurrency limit not applied, Redis unavailable: %s", exc)


async def _read_load(load: AsyncScript, keys: list[str], default_limit: int) -> BackendLoad:
    in_flight, limit, waiting, baseline = await load(
        keys=keys, args=[default_limit, _WAITING_SEEN_S]
    )
    return BackendLoad(int(in_flight), int(limit), int(waiting), float(baseline))


_gates: dict[tuple[str, int | None, str | None, int, float], ConcurrencyGate] = {}


def gate_for(
    backend: str,
    cap: int | None,
    redis_url: str | None,
    *,
    initial: int = DEFAULT_INITIAL,
    slot_ttl_s: float = SLOT_LEASE_S,
) -> ConcurrencyGate:
    """One gate per backend and process. `cap`: the most requests ever in flight (None:
    DEFAULT_CEILING); `slot_ttl_s`: how long a slot outlives a process that dies holding it."""
    key = (backend, cap, redis_url, initial, slot_ttl_s)
    gate = _gates.get(key)
    if gate is None:
        config = AdaptiveConfig(initial=initial, cap=cap or DEFAULT_CEILING)
        gate = _gates[key] = (
            RedisConcurrencyGate(redis_url, backend, config, slot_ttl_s)
            if redis_url
            else LocalConcurrencyGate(config)
        )
    return gate


async def backend_loads(
    redis_url: str | None, backends: Iterable[str], *, initial: int = DEFAULT_INITIAL
) -> dict[str, BackendLoad]:
    """In-flight requests, limit and waiters per backend, read without taking part (for status
    and metrics). Without Redis, what this process's gates hold; a backend without traffic yet
    shows the initial limit. Backends Redis could not be asked about are left out."""
    names = list(dict.fromkeys(backends))
    if not redis_url:
        loads = {}
        for name in names:
            local = [g for k, g in _gates.items() if k[0] == name and k[2] is None]
            loads[name] = await local[0].snapshot() if local else BackendLoad(0, max(1, initial), 0)
        return loads
    loads = {}
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        load = client.register_script(_LOAD)
        for name in names:
            keys = _keys(name)
            load_keys = [keys[k] for k in _LOAD_KEYS]
            loads[name] = await _read_load(load, load_keys, max(1, initial))
    except Exception as exc:  # status pages must not fail because Redis did
        log.warning("cannot read LLM backend loads from Redis: %s", exc)
    finally:
        await client.aclose()
    return loads
