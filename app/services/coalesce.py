"""Small writes that come in bursts, made in one transaction per burst.

Answers come back from the LLM in bursts (a round's prompts, a task's classifications), and each
wants a row stored before its task goes on. A transaction per answer, run in the thread pool,
queued up behind the others under load: dozens of answers waited their turn, a worker killed
meanwhile lost them (the backend was asked again), and the transactions themselves were most
of the cost. Here each caller waits for the write that holds its item, and everything that
arrives while one write runs goes in the next. Nothing in asyncio or SQLAlchemy batches writes
across awaiting callers like this, hence the few lines by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class CoalescingWriter(Generic[T]):
    """`write(items)` runs in a thread, for the items queued since the last one began; `put`
    returns once the write holding its item has returned, and raises what that write raised.
    One writer belongs to one event loop."""

    def __init__(self, write: Callable[[list[T]], None]) -> None:
        self._write = write
        self._queued: list[tuple[T, asyncio.Future[None]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def put(self, item: T) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queued.append((item, done))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                error: BaseException | None = None
                try:
                    await asyncio.to_thread(self._write, [item for item, _ in batch])
                except Exception as exc:  # each waiter gets the write's failure
                    error = exc
                except BaseException:  # cancelled (the loop is closing): so are the waiters
                    for _, done in [*batch, *self._queued]:
                        done.cancel()
                    raise
                for _, done in batch:
                    if done.done():
                        continue
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)
        finally:
            self._drainer = None


K = TypeVar("K")
V = TypeVar("V")


class CoalescingReader(Generic[K, V]):
    """The reading counterpart: `read(keys)` runs in a thread for the keys asked for since the
    last one began and returns what it found; `get` returns its key's value (None when absent)
    and raises what that read raised. One reader belongs to one event loop."""

    def __init__(self, read: Callable[[list[K]], dict[K, V]]) -> None:
        self._read = read
        self._queued: list[tuple[K, asyncio.Future[V | None]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[V | None] = loop.create_future()
        self._queued.append((key, done))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    found = await asyncio.to_thread(self._read, list({k: None for k, _ in batch}))
                except Exception as exc:  # each waiter gets the read's failure
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                except BaseException:  # cancelled (the loop is closing): so are the waiters
                    for _, done in [*batch, *self._queued]:
                        done.cancel()
                    raise
                for key, done in batch:
                    if not done.done():
                        done.set_result(found.get(key))
        finally:
            self._drainer = None
