"""Requests-per-minute and tokens-per-minute limits per backend, shared by every worker.

Two token buckets per backend (requests, tokens), refilled continuously at the configured rate and
holding at most one second's worth (`_BURST_S`): whatever the number of workers, the backend sees
at most rate * (window + 1 s) in any window, so scaling out does not turn into a storm of 429s.

With a Redis broker the buckets live in Redis and one Lua script checks and takes from both
atomically, on Redis's clock; without one (embedded mode, one process) they live in the process.
A request reserves its prompt's estimated tokens plus `max_tokens` before it is sent (as OpenAI's
own limiter counts it) and the difference to the tokens the server reports is settled afterwards.

Written here rather than taken from a library: the Python rate limiters on PyPI either keep state
per process or implement fixed windows, which let two windows' worth through at a boundary.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

log = logging.getLogger(__name__)

_BURST_S = 1.0
_CHARS_PER_TOKEN = 4  # a conservative average for English BPE vocabularies
_MAX_SLEEP_S = 5.0  # waiters re-check at least this often (a settle may refund tokens)
_REDIS_ERROR_LOG_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Limits:
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    @property
    def active(self) -> bool:
        return bool(self.requests_per_minute) or bool(self.tokens_per_minute)

    def rates(self) -> tuple[float, float, float, float]:
        """Per-second rate and capacity of the request bucket, then of the token bucket
        (0 when that limit is off)."""
        request_rate = (self.requests_per_minute or 0) / 60
        token_rate = (self.tokens_per_minute or 0) / 60
        return (
            request_rate,
            max(1.0, request_rate * _BURST_S) if request_rate else 0.0,
            token_rate,
            max(1.0, token_rate * _BURST_S) if token_rate else 0.0,
        )


def estimate_tokens(prompt: str, max_tokens: int) -> int:
    return len(prompt) // _CHARS_PER_TOKEN + 1 + max(0, max_tokens)


class RateLimiter(Protocol):
    async def acquire(self, tokens: int) -> None:
        """Wait until one request of `tokens` (estimated) may go out, and take it."""

    async def settle(self, reserved: int, used: int) -> None:
        """Correct the token bucket once the server has reported the tokens actually used."""


class LocalRateLimiter:
    """The same buckets inside one process (asyncio, on the LLM loop)."""

    def __init__(self, limits: Limits) -> None:
        self._request_rate, self._request_cap, self._token_rate, self._token_cap = limits.rates()
        self._requests = self._request_cap
        self._tokens = self._token_cap
        self._at = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        elapsed, self._at = now - self._at, now
        self._requests = min(self._request_cap, self._requests + elapsed * self._request_rate)
        self._tokens = min(self._token_cap, self._tokens + elapsed * self._token_rate)

    def _take(self, tokens: int) -> float:
        self._refill()
        wait = 0.0
        if self._request_rate and self._requests < 1:
            wait = (1 - self._requests) / self._request_rate
        need = min(tokens, self._token_cap)
        if self._token_rate and self._tokens < need:
            wait = max(wait, (need - self._tokens) / self._token_rate)
        if wait == 0:
            self._requests -= 1 if self._request_rate else 0
            self._tokens -= tokens if self._token_rate else 0
        return wait

    async def acquire(self, tokens: int) -> None:
        while (wait := self._take(tokens)) > 0:
            await asyncio.sleep(_sleep_for(wait))

    async def settle(self, reserved: int, used: int) -> None:
        if self._token_rate:
            self._refill()
            self._tokens = min(self._token_cap, self._tokens + reserved - used)


# KEYS: request bucket, token bucket. ARGV: request rate, request capacity, token rate, token
# capacity, tokens wanted, TTL in seconds. Returns "0" when taken, else the seconds to wait.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, rate, cap)
  local v = redis.call('HMGET', key, 'level', 'at')
  local lvl, at = tonumber(v[1]), tonumber(v[2])
  if lvl == nil or at == nil then return cap end
  return math.min(cap, lvl + math.max(0, now - at) * rate)
end
local request_rate, request_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local token_rate, token_cap, tokens = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local wait, requests, available = 0, 0, 0
if request_rate > 0 then
  requests = level(KEYS[1], request_rate, request_cap)
  if requests < 1 then wait = (1 - requests) / request_rate end
end
if token_rate > 0 then
  available = level(KEYS[2], token_rate, token_cap)
  local need = math.min(tokens, token_cap)
  if available < need then wait = math.max(wait, (need - available) / token_rate) end
end
if wait > 0 then return tostring(wait) end
if request_rate > 0 then
  redis.call('HSET', KEYS[1], 'level', tostring(requests - 1), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
if token_rate > 0 then
  redis.call('HSET', KEYS[2], 'level', tostring(available - tokens), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
return '0'
"""

# KEYS: token bucket. ARGV: token rate, token capacity, tokens to give back (negative: take),
# TTL in seconds.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, cap, back = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'level', 'at')
local lvl, at = tonumber(v[1]), tonumber(v[2])
if lvl == nil or at == nil then lvl, at = cap, now end
lvl = math.min(cap, math.min(cap, lvl + math.max(0, now - at) * rate) + back)
redis.call('HSET', KEYS[1], 'level', tostring(lvl), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 'ok'
"""


class RedisRateLimiter:
    """Buckets in Redis, shared by every process that names the same backend.

    If Redis cannot be reached the request goes out unthrottled (logged once a minute): the
    broker is the same Redis, so a worker that cannot reach it has bigger problems, and the
    client's own 429 handling still applies.
    """

    def __init__(self, redis_url: str, backend: str, limits: Limits) -> None:
        self._url = redis_url
        prefix = f"selfinstruct:ratelimit:{backend}"
        self._keys = [f"{prefix}:requests", f"{prefix}:tokens"]
        self._rates = limits.rates()
        self._ttl = 120
        self._bound: tuple[asyncio.AbstractEventLoop, AsyncScript, AsyncScript] | None = None
        self._last_error_log = 0.0

    def _scripts(self) -> tuple[AsyncScript, AsyncScript]:
        """The take and settle scripts on a client of the running loop (redis.asyncio
        connections belong to one loop; a forked worker child runs a new one)."""
        loop = asyncio.get_running_loop()
        if self._bound is None or self._bound[0] is not loop:
            client = aioredis.Redis.from_url(self._url, socket_timeout=5, socket_connect_timeout=5)
            self._bound = (loop, client.register_script(_TAKE), client.register_script(_SETTLE))
        return self._bound[1], self._bound[2]

    async def acquire(self, tokens: int) -> None:
        take, _ = self._scripts()
        request_rate, request_cap, token_rate, token_cap = self._rates
        args = [request_rate, request_cap, token_rate, token_cap, tokens, self._ttl]
        while True:
            try:
                wait = float(await take(keys=self._keys, args=args))
            except Exception as exc:  # any Redis failure: see the class docstring
                self._log_unavailable(exc)
                return
            if wait <= 0:
                return
            await asyncio.sleep(_sleep_for(wait))

    async def settle(self, reserved: int, used: int) -> None:
        _, settle = self._scripts()
        _, _, token_rate, token_cap = self._rates
        if not token_rate or reserved == used:
            return
        try:
            args = [token_rate, token_cap, reserved - used, self._ttl]
            await settle(keys=self._keys[1:], args=args)
        except Exception as exc:  # as above
            self._log_unavailable(exc)

    def _log_unavailable(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= _REDIS_ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.warning("rate limit not applied, Redis unavailable: %s", exc)


def _sleep_for(wait: float) -> float:
    """Up to 10% jitter, so waiters released together do not all retry at the same instant."""
    return min(_MAX_SLEEP_S, wait * (1 + 0.1 * random.random()))


_limiters: dict[tuple[str, Limits, str | None], RateLimiter] = {}


def limiter_for(backend: str, limits: Limits, redis_url: str | None) -> RateLimiter | None:
    """One limiter per backend and process; None when the backend has no limits."""
    if not limits.active:
        return None
    key = (backend, limits, redis_url)
    limiter = _limiters.get(key)
    if limiter is None:
        limiter = _limiters[key] = (
            RedisRateLimiter(redis_url, backend, limits) if redis_url else LocalRateLimiter(limits)
        )
    return limiter
