"""Real PostgreSQL and Redis for integration tests: one database and Redis db per xdist worker.

`scripts/test-services.sh` starts both on loopback and prints TEST_DATABASE_URL and TEST_REDIS_URL;
`make test` and CI export them. Without them integration tests skip, unless
SELFINSTRUCT_REQUIRE_SERVICES=1 (CI) turns the skip into a failure.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql
from sqlalchemy.engine import make_url

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "test-services.sh"


def postgres_admin_url() -> str | None:
    return os.environ.get("TEST_DATABASE_URL") or None


def _worker_number() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


def unique_db_name(prefix: str = "si_test") -> str:
    return f"{prefix}_{_worker_number()}_{uuid.uuid4().hex[:10]}"


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(admin_url: str, name: str) -> str:
    """Create an empty database and return its SQLAlchemy URL."""
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def redis_url(db: int | None = None) -> str | None:
    """TEST_REDIS_URL with a db number of its own per xdist worker (db 1 + worker number)."""
    base = os.environ.get("TEST_REDIS_URL")
    if not base:
        return None
    number = 1 + _worker_number() if db is None else db
    return make_url(base).set(database=str(number)).render_as_string(hide_password=False)


def redis_ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def require_services() -> None:
    """Skip (or fail, where services are required) when PostgreSQL or Redis is not available."""
    missing = [n for n in ("TEST_DATABASE_URL", "TEST_REDIS_URL") if not os.environ.get(n)]
    reason = None
    if missing:
        reason = f'{" and ".join(missing)} not set: run `eval "$(scripts/test-services.sh)"`'
    elif not redis_ping(os.environ["TEST_REDIS_URL"]):
        reason = "Redis at TEST_REDIS_URL does not answer"
    if reason is None:
        return
    if os.environ.get("SELFINSTRUCT_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _run_script(action: str) -> None:
    subprocess.run(["bash", str(SCRIPT), action], check=True, capture_output=True)


def restart_redis() -> None:
    _run_script("restart-redis")


def restart_postgres() -> None:
    _run_script("restart-postgres")
