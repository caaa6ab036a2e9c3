"""A small process-local cache whose entries go stale, then expire, bounded in size (least
recently used out).

Stale entries are still served while one refresh runs (stale-while-revalidate): under load, a
refresh waits for the thread pool and the GIL, and making every reader of the entry wait with it
turned each expiry into a pause of up to a second for all of them.

Hand-written rather than a dependency: what the API needs (a freshness and an expiry per entry,
LRU bounds, safe use from the event loop and from worker threads) is a few dozen lines.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        # key -> (stale after, expired after, value), monotonic seconds
        self._entries: OrderedDict[K, tuple[float, float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, key: K) -> tuple[V | None, bool]:
        """The value (None when absent or expired) and whether it is stale (due a refresh)."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None, True
            stale_after, expires_after, value = entry
            if expires_after < now:
                del self._entries[key]
                return None, True
            self._entries.move_to_end(key)
            return value, stale_after < now

    def get(self, key: K) -> V | None:
        """The value while it is fresh."""
        value, stale = self.lookup(key)
        return None if stale else value

    def put(self, key: K, value: V, fresh_s: float, keep_s: float | None = None) -> None:
        """Fresh for `fresh_s`, then stale but served until `keep_s` (default: `fresh_s`)."""
        now = time.monotonic()
        with self._lock:
            self._entries[key] = (now + fresh_s, now + max(fresh_s, keep_s or 0.0), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
