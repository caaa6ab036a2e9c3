"""What the benchmarks share: a fake backend in a process of its own, and jobs on the real stack
(a fresh PostgreSQL database, an emptied Redis database, the API and worker processes).

Imported by the bench_*.py scripts, which run from this folder; the project's own modules are
imported lazily, from the repository root this module puts on the path.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH_REDIS_DB = 15  # tests use db 1 + their xdist worker number; never share their queues
SEEDS = ROOT / "app" / "data" / "seed_tasks.jsonl"
sys.path.insert(0, str(ROOT))


# --- a fake backend (its own process) --------------------------------------------------------------


def start_backend(command: list[str], base_url: str, name: str) -> subprocess.Popen[bytes]:
    """Start a fake backend's process and wait until it lists its models."""
    proc = subprocess.Popen(command, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base_url}/models", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"{name} did not start")


async def read_body(receive: Any) -> bytes:
    """An ASGI request's whole body (the servers are bare ASGI apps: little CPU per request)."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def send_json(send: Any, status: int, answer: Any) -> None:
    data = json.dumps(answer).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(data)).encode())]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


# --- the real stack --------------------------------------------------------------------------------


@contextmanager
def fresh_services(
    llm_url: str, env_extra: dict[str, str] | None = None
) -> Iterator[dict[str, str]]:
    """A new, migrated database and an emptied broker; yields the stack's environment for them
    and drops the database afterwards, so runs do not see each other's jobs."""
    import redis

    from app.migrate import upgrade_database
    from tests.support import services

    admin, redis_url = services.postgres_admin_url(), services.redis_url(BENCH_REDIS_DB)
    if admin is None or redis_url is None:
        raise SystemExit("set TEST_DATABASE_URL and TEST_REDIS_URL (scripts/test-services.sh)")
    name = services.unique_db_name()
    url = services.create_database(admin, name)
    try:
        redis.Redis.from_url(redis_url).flushdb()
        upgrade_database(url)
        yield {"DATABASE_URL": url, "CELERY_BROKER_URL": redis_url, "OPENAI_BASE_URL": llm_url,
               "OPENAI_API_KEY": "x", "SELFINSTRUCT_AUTH": "off", **(env_extra or {})}  # fmt: skip
    finally:
        services.drop_database(admin, name)


@contextmanager
def running_stack(
    env: dict[str, str], workers: int, **worker_options: Any
) -> Iterator[tuple[Any, httpx.Client, str]]:
    """The API and `workers` worker processes on `env`, once the workers had time to connect:
    yields the stack, a client of its API and the id of the default seeds, uploaded."""
    from app.cli.server import DEFAULT_WORKER_POOL
    from tests.support.stack import ServiceStack

    with ServiceStack(env, Path(tempfile.mkdtemp()) / "logs") as stack:
        stack.start_api()
        for _ in range(workers):
            # `selfinstruct worker`'s default pool unless the bench names one.
            stack.start_worker(**{"concurrency": DEFAULT_WORKER_POOL, **worker_options})
        time.sleep(3)  # workers connect to the broker
        with stack.client(None) as api:
            with SEEDS.open("rb") as fh:
                seed_set = api.post("/v1/seed-sets", files={"file": ("s.jsonl", fh)}).json()
            yield stack, api, seed_set["id"]


# --- CPU used by the stack -------------------------------------------------------------------------
# Read from /proc (Linux) by hand: psutil is not a dependency, and three fields are all it takes.

_TICKS = 100  # USER_HZ, the unit of /proc's CPU times on Linux


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (a worker's pool processes)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def pids_named(name: str) -> list[int]:
    """Processes whose command name is `name` (PostgreSQL's backends, Redis)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/comm"):
        try:
            if stat.read_text().strip() == name:
                found.append(int(stat.parent.name))
        except OSError:
            continue
    return found


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU seconds each part of the stack used between its creation and `used()`, and the
    machine's busy share: what bounds a job when the stack, not the backend, is saturated.
    Each part is a function listing its processes, asked again at the end: a process that
    started in between (a new PostgreSQL connection, a pool child) counts all its CPU."""

    def __init__(self, parts: dict[str, Callable[[], list[int]]]) -> None:
        self.parts = parts
        self.before = {pid: _cpu_ticks(pid) for find in parts.values() for pid in find()}
        self.machine_before = _machine_ticks()
        self.started = time.monotonic()

    def used(self) -> dict[str, float]:
        wall = time.monotonic() - self.started
        out = {
            f"{part} cpu s": round(
                sum(_cpu_ticks(p) - self.before.get(p, 0) for p in find()) / _TICKS, 1
            )
            for part, find in self.parts.items()
        }
        busy, total = (a - b for a, b in zip(_machine_ticks(), self.machine_before, strict=True))
        out["machine busy"] = round(busy / max(1, total), 2)
        out["wall s"] = round(wall, 1)
        return out
