"""Token buckets per backend: in the process, and in Redis shared by several processes."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
import uuid

import pytest

from app.llm.rate_limit import (
    Limits,
    LocalRateLimiter,
    RedisRateLimiter,
    estimate_tokens,
    limiter_for,
)
from tests.support import services


def _takes(limiter: LocalRateLimiter | RedisRateLimiter, count: int, tokens: int) -> list[float]:
    """Acquire `count` times, all at once, and return when each was granted."""

    async def run() -> list[float]:
        async def one() -> float:
            await limiter.acquire(tokens)
            return time.time()

        return list(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(run())


def _most_in_any_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_estimate_and_rates() -> None:
    assert estimate_tokens("x" * 400, 100) == 201
    assert Limits().active is False and Limits(requests_per_minute=60).active
    assert Limits(requests_per_minute=1200, tokens_per_minute=30).rates() == (20.0, 20.0, 0.5, 1.0)
    assert limiter_for("b", Limits(), None) is None
    one = limiter_for("b", Limits(requests_per_minute=60), None)
    assert one is limiter_for("b", Limits(requests_per_minute=60), None)  # one per process
    assert isinstance(one, LocalRateLimiter)


def test_local_requests_bucket_holds_the_rate() -> None:
    limiter = LocalRateLimiter(Limits(requests_per_minute=1200))  # 20/s, a burst of 20
    started = time.time()
    times = _takes(limiter, 50, tokens=1)
    assert max(times) - started >= (50 - 20) / 20 * 0.95
    assert _most_in_any_window(times, 0.5) <= 20 + 10 + 1


def test_local_token_bucket_settles_to_actual_usage() -> None:
    limiter = LocalRateLimiter(Limits(tokens_per_minute=6000))  # 100 tokens/s
    started = time.time()
    _takes(limiter, 3, tokens=100)  # 300 tokens: the burst, then 2 s
    assert time.time() - started >= 1.9

    async def refunded() -> float:
        await limiter.acquire(100)
        await limiter.settle(reserved=100, used=0)  # the server reported no tokens at all
        began = time.perf_counter()
        await limiter.acquire(100)
        return time.perf_counter() - began

    assert asyncio.run(refunded()) < 0.5
    # An answer that used more than reserved costs the difference later.
    asyncio.run(limiter.settle(reserved=10, used=310))
    started = time.time()
    _takes(limiter, 1, tokens=1)
    assert time.time() - started >= 2.0


def _worker(url: str, backend: str, count: int, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    limiter = RedisRateLimiter(
        url, backend, Limits(requests_per_minute=1200, tokens_per_minute=None)
    )
    queue.put(_takes(limiter, count, tokens=50))


def test_redis_buckets_hold_the_rate_across_processes() -> None:
    services.require_services()
    url = services.redis_url()
    assert url is not None
    backend = f"test-{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_worker, args=(url, backend, 25, queue)) for _ in range(3)]
    for process in processes:
        process.start()
    times = [t for _ in processes for t in queue.get(timeout=60)]
    for process in processes:
        process.join(timeout=10)
    assert len(times) == 75
    # 75 requests at 20/s with a burst of 20 take at least 55/20 s, however many processes ask.
    assert max(times) - min(times) >= (75 - 20) / 20 * 0.95
    assert _most_in_any_window(times, 1.0) <= 20 + 20 + 2


def test_redis_unreachable_lets_requests_through(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0", "down", Limits(requests_per_minute=1))
    with caplog.at_level(logging.WARNING):
        times = _takes(limiter, 3, tokens=1)
    assert max(times) - min(times) < 5
    assert "rate limit not applied" in caplog.text
