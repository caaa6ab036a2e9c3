"""The coalescing writer: one write per burst, and a failed write fails each of its waiters."""

from __future__ import annotations

import asyncio
import threading
import time

from app.services.coalesce import CoalescingWriter


def test_a_failed_write_fails_every_item_it_held_and_the_next_burst_is_written() -> None:
    writes: list[list[int]] = []
    lock = threading.Lock()

    def write(items: list[int]) -> None:
        time.sleep(0.02)
        with lock:
            writes.append(items)
        if 0 in items:
            raise OSError("the database went away")

    async def main() -> tuple[list[object], None]:
        writer: CoalescingWriter[int] = CoalescingWriter(write)
        first = await asyncio.gather(*(writer.put(n) for n in range(10)), return_exceptions=True)
        return first, await writer.put(99)

    outcomes, later = asyncio.run(main())
    failed = [n for n, outcome in enumerate(outcomes) if isinstance(outcome, OSError)]
    assert failed == writes[0]  # the items of the write that failed, no others
    assert later is None and writes[-1] == [99]
    assert sorted(n for batch in writes[:-1] for n in batch) == list(range(10))
    assert len(writes) <= 3
