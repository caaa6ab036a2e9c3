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
from collections.abc import Iterator
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
    from tests.support.stack import ServiceStack

    with ServiceStack(env, Path(tempfile.mkdtemp()) / "logs") as stack:
        stack.start_api()
        for _ in range(workers):
            stack.start_worker(**worker_options)
        time.sleep(3)  # workers connect to the broker
        with stack.client(None) as api:
            with SEEDS.open("rb") as fh:
                seed_set = api.post("/v1/seed-sets", files={"file": ("s.jsonl", fh)}).json()
            yield stack, api, seed_set["id"]
