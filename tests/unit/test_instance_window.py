"""An instance task's window: the production default to start with, grown from the backend's free
slots, never past `llm_concurrency` (both read from the production settings)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from app.config import get_settings
from app.llm.adaptive import AdaptiveConfig
from app.llm.concurrency import BackendLoad, LocalConcurrencyGate
from app.selfinstruct.options import GenerationOptions
from app.services import instance_window
from app.services.instance_window import InstanceWindow, backend_headroom
from app.services.instances import _InstanceResult, _streamed
from app.services.response_cache import CachingClient

BASE = get_settings().instructions_per_instance_task
CAP = get_settings().llm_concurrency


class Headroom:
    """Free slots a backend reports, and how often it was asked."""

    def __init__(self, free: int) -> None:
        self.free, self.reads = free, 0

    async def __call__(self) -> int:
        self.reads += 1
        return self.free


@pytest.fixture(autouse=True)
def read_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every room() may read the load: the once-a-second pace is tested on its own below."""
    monkeypatch.setattr(instance_window, "READ_EVERY_S", 0.0)


def test_the_defaults_start_at_64_and_cap_at_llm_concurrency() -> None:
    window = InstanceWindow(None)
    assert (window.size, window.cap) == (BASE, CAP) == (64, 256)


def test_a_window_with_room_takes_without_reading_the_backend() -> None:
    load = Headroom(1000)
    window = InstanceWindow(load)
    assert asyncio.run(window.room(BASE - BASE // 4, idle=False)) == BASE // 4
    assert load.reads == 0


def test_a_full_window_grows_by_half_the_free_slots_at_most_doubling() -> None:
    window = InstanceWindow(Headroom(40))
    assert asyncio.run(window.room(BASE, idle=False)) == 20
    assert window.size == BASE + 20
    window = InstanceWindow(Headroom(10_000))
    asyncio.run(window.room(BASE, idle=False))
    assert window.size == 2 * BASE
    for _ in range(5):
        asyncio.run(window.room(window.size, idle=False))
    assert window.size == CAP


def test_a_full_backend_leaves_the_window_where_it_was() -> None:
    window = InstanceWindow(Headroom(1))
    assert asyncio.run(window.room(BASE, idle=False)) == 0
    assert window.size == BASE


def test_without_a_gate_or_when_the_load_cannot_be_read_the_window_stays() -> None:
    async def broken() -> int:
        raise ConnectionError("redis is down")

    for window in (InstanceWindow(None), InstanceWindow(broken)):
        assert asyncio.run(window.room(BASE, idle=False)) == 0
        assert window.size == BASE


def test_the_load_is_read_at_most_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instance_window, "READ_EVERY_S", 1.0)
    load = Headroom(0)
    window = InstanceWindow(load)
    for _ in range(10):
        asyncio.run(window.room(BASE, idle=False))
    assert load.reads == 1


def test_the_gate_is_found_through_the_response_cache() -> None:
    gate = LocalConcurrencyGate(AdaptiveConfig(initial=32, cap=512))
    cached = CachingClient(SimpleNamespace(gate=gate), GenerationOptions(), None)  # type: ignore[arg-type]
    assert cached.gate is gate and backend_headroom(cached) is not None
    assert backend_headroom(object()) is None


def test_headroom_is_the_limit_less_what_is_in_flight_or_waiting() -> None:
    class Gate:
        async def snapshot(self) -> BackendLoad:
            return BackendLoad(in_flight=100, limit=512, waiting=12)

    free = backend_headroom(SimpleNamespace(gate=Gate()))
    assert free is not None and asyncio.run(free()) == 400


def _peak_in_work(headroom: Any) -> int:
    """Most instructions a streamed task had in work at once, given an endless supply."""
    in_work, peak = 0, 0
    supply = iter(range(10_000))

    def more(limit: int) -> Sequence[tuple[uuid.UUID, Any]]:
        return [(uuid.uuid4(), n) for n, _ in zip(supply, range(limit), strict=False)]

    async def one(instruction_id: uuid.UUID, _: Any) -> _InstanceResult:
        nonlocal in_work, peak
        in_work += 1
        peak = max(peak, in_work)
        await asyncio.sleep(0.01)
        in_work -= 1
        return _InstanceResult(instruction_id, False, [], [], complete=True)

    async def run() -> None:
        first = more(BASE)
        task = asyncio.ensure_future(_streamed(first, one, more, headroom=headroom))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    return peak


def test_a_streamed_task_grows_into_a_large_backend_and_keeps_64_without_one() -> None:
    assert _peak_in_work(None) == BASE
    assert BASE < _peak_in_work(Headroom(10_000)) <= CAP
