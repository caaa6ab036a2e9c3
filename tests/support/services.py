"""Real PostgreSQL and Redis for integration tests: one database and one Redis db per xdist worker.

`scripts/test-services.sh` starts both on loopback and prints TEST_DATABASE_URL and TEST_REDIS_URL;
`make test` and CI export them. Without them integration tests skip, unless
SELFINSTRUCT_REQUIRE_SERVICES=1 (CI) turns the skip into a failure.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql
from sqlalchemy.engine import make_url

SERVICES_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "test-services.sh"
REQUIRE_SERVICES_ENV = "SELFINSTRUCT_REQUIRE_SERVICES"
CONNECT_TIMEOUT_SECONDS = 3


def postgres_admin_url() -> str | None:
    """The SQLAlchemy URL of a role allowed to create databases, or None when not configured."""
    return os.environ.get("TEST_DATABASE_URL") or None


def xdist_worker_number() -> int:
    """0 for gw0 or a run without xdist, n for gwn: keeps parallel workers out of each other's way."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = worker.removeprefix("gw")
    return int(digits) if digits.isdigit() else 0


def unique_db_name(prefix: str = "si_test") -> str:
    """A fresh database name, unique across xdist workers and across runs."""
    return f"{prefix}_gw{xdist_worker_number()}_{uuid.uuid4().hex[:10]}"


def _libpq_url(sqlalchemy_url: str) -> str:
    """psycopg wants `postgresql://`, not SQLAlchemy's `postgresql+psycopg://`."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _admin_connection(admin_url: str) -> psycopg.Connection:
    # CREATE/DROP DATABASE cannot run inside a transaction.
    return psycopg.connect(
        _libpq_url(admin_url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    )


def create_database(admin_url: str, name: str) -> str:
    """Create an empty database owned by the admin role and return its SQLAlchemy URL."""
    with _admin_connection(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    """Drop a database even while a leftover API or worker process still holds connections.
    Only client connections are ended: an autovacuum worker on the database belongs to the
    superuser (ending it is refused), and DROP DATABASE stops it by itself."""
    with _admin_connection(admin_url) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def postgres_ping(admin_url: str) -> bool:
    try:
        with _admin_connection(admin_url) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def redis_url(db: int | None = None) -> str | None:
    """TEST_REDIS_URL pointed at `db`, or by default at its own db (at least 1) + the xdist
    worker number.

    db 0 is left alone so a developer's own data there is never flushed by a test. Two test
    runs at once on one Redis (two checkouts) need URLs of different dbs, e.g. /1 and /8: tests
    flush their db, and workers on one db take each other's tasks.
    """
    base = os.environ.get("TEST_REDIS_URL")
    if not base:
        return None
    parts = urlsplit(base)
    first = max(1, int(parts.path.strip("/") or 0))
    number = first + xdist_worker_number() if db is None else db
    return urlunsplit(parts._replace(path=f"/{number}"))


def redis_ping(url: str) -> bool:
    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        )
        with client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def _missing_services_reason() -> str | None:
    missing = [name for name in ("TEST_DATABASE_URL", "TEST_REDIS_URL") if not os.environ.get(name)]
    if missing:
        names = " and ".join(missing)
        return f'{names} not set: run `eval "$(bash scripts/test-services.sh)"` or `make test`'
    if not postgres_ping(os.environ["TEST_DATABASE_URL"]):
        return "PostgreSQL at TEST_DATABASE_URL does not answer"
    if not redis_ping(os.environ["TEST_REDIS_URL"]):
        return "Redis at TEST_REDIS_URL does not answer"
    return None


def require_services() -> None:
    """Skip when PostgreSQL or Redis is unavailable; fail instead where they are required (CI)."""
    reason = _missing_services_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_SERVICES_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_SERVICES_ENV}=1)", pytrace=False)
    pytest.skip(reason)


def _service_ports() -> dict[str, str]:
    """The ports in the TEST_* URLs, so the script restarts the very services the tests use."""
    ports: dict[str, str] = {}
    database_url = postgres_admin_url()
    if database_url and make_url(database_url).port:
        ports["TEST_PG_PORT"] = str(make_url(database_url).port)
    broker_url = os.environ.get("TEST_REDIS_URL")
    if broker_url and urlsplit(broker_url).port:
        ports["TEST_REDIS_PORT"] = str(urlsplit(broker_url).port)
    return ports


def _run_services_script(action: str) -> None:
    result = subprocess.run(
        ["bash", str(SERVICES_SCRIPT), action],
        env={**os.environ, **_service_ports()},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"test-services.sh {action} failed:\n{result.stderr}")


def restart_redis() -> None:
    """Bounce Redis (data is lost: it runs without persistence) for broker-outage tests."""
    _run_services_script("restart-redis")


def restart_postgres() -> None:
    """Bounce PostgreSQL; open connections break, as they would in a real failover."""
    _run_services_script("restart-postgres")
