"""How many instructions an instance task keeps in work: at least `instructions_per_instance_task`,
and more while the backend has free slots.

Each instruction in work has one request out at a time, so a fixed window per task caps a job's
steps 2 and 3 at (pool processes x window) requests, whatever the backend serves: with the
default 64 and three free pool processes, 192 requests of a backend that takes 512. The backend's
shared limit (`app.llm.concurrency`) already decides how many requests go out; the window only has
to be large enough that the task is never what holds them back. So a task whose window is nearly
full reads the backend's free slots (its limit less what every process has in flight or waiting)
and grows by half of them, at most doubling per read: several tasks reading the same figure at
once then take no more than the backend has room for between them, and the work spreads over
pool processes instead of gathering in the first task that looked (one process's CPU would
then bound the backend's throughput). The window never passes `llm_concurrency`, the most
requests one task keeps in flight, and never shrinks below where it started: when the backend is
full, instructions simply wait for slots at the gate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from app.config import get_settings
from app.llm.concurrency import ConcurrencyGate

log = logging.getLogger(__name__)

READ_EVERY_S = 1.0  # the backend's load is read at most this often per task

Headroom = Callable[[], Awaitable[int]]


def backend_headroom(client: object) -> Headroom | None:
    """Free slots of the client's backend, or None for a client without a gate (a test
    double): its task keeps the starting window."""
    gate: ConcurrencyGate | None = getattr(client, "gate", None)
    if gate is None:
        return None

    async def free() -> int:
        load = await gate.snapshot()
        return max(0, load.limit - load.in_flight - load.waiting)

    return free


class InstanceWindow:
    """The window of one task."""

    def __init__(self, headroom: Headroom | None) -> None:
        settings = get_settings()
        self.size = self.base = settings.instructions_per_instance_task
        self.cap = max(self.base, settings.llm_concurrency)
        self._headroom = headroom
        self._read_at = float("-inf")

    def _wants_more(self, in_work: int, idle: bool) -> bool:
        """A quarter of the window free (one transaction per few instructions, not per
        instruction), or nothing running."""
        return self.size - in_work >= max(1, self.size // 4) or idle

    async def room(self, in_work: int, idle: bool) -> int:
        """Instructions the task may take now (0: not yet), the window grown first when it is
        nearly full and the backend has free slots. `idle`: nothing of the task is running."""
        if self._wants_more(in_work, idle) or await self._grew(in_work):
            return max(0, self.size - in_work)
        return 0

    async def _grew(self, in_work: int) -> bool:
        now = time.monotonic()
        if self._headroom is None or self.size >= self.cap or now - self._read_at < READ_EVERY_S:
            return False
        self._read_at = now
        try:
            free = await self._headroom()
        except Exception:  # the load is advice: without it the window stays as it is
            log.debug("could not read the backend's load", exc_info=True)
            return False
        grown = min(self.cap, in_work + free // 2, 2 * self.size)
        if grown <= self.size:
            return False
        self.size = grown
        return True
