"""The coalescing writer and reader: one write (or read) per burst, and a failed one fails each
of its waiters."""

from __future__ import annotations

import asyncio
import threading
import time

from app.services.coalesce import CoalescingReader, CoalescingWriter


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


def test_a_burst_of_lookups_is_one_read_and_a_failed_read_fails_only_its_own() -> None:
    reads: list[list[int]] = []

    def read(keys: list[int]) -> dict[int, str]:
        time.sleep(0.02)
        reads.append(keys)
        if -1 in keys:
            raise OSError("the database went away")
        return {k: f"v{k}" for k in keys if k % 2 == 0}

    async def main() -> tuple[list[str | None], list[object], str | None]:
        reader: CoalescingReader[int, str] = CoalescingReader(read)
        found = await asyncio.gather(*(reader.get(n) for n in [0, 1, 2, 2, 3]))
        failed = await asyncio.gather(reader.get(-1), reader.get(4), return_exceptions=True)
        return list(found), failed, await reader.get(4)

    found, failed, later = asyncio.run(main())
    assert found == ["v0", None, "v2", "v2", None]
    assert reads[0] == [0, 1, 2, 3]  # one read, each key once
    assert all(isinstance(outcome, OSError) for outcome in failed)
    assert later == "v4" and len(reads) == 3
