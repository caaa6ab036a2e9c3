"""Engine factory and the unit-of-work helper. Services flush; the caller of session_scope commits."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import anyio
from sqlalchemy import Engine, Row, Select, create_engine, event, tuple_
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from app.config import get_settings

T = TypeVar("T")


def make_engine(url: str) -> Engine:
    """An engine tuned for its backend; SQLite gets WAL and a busy timeout so that the API and a
    worker process can share the file without 'database is locked' errors."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    settings = get_settings()
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().resolved_database_url)


@lru_cache
def _session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def reset_engine() -> None:
    """Forget the process's engine (after a fork, or when tests change the settings)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
    get_engine.cache_clear()
    _session_factory.cache_clear()


async def run_in_session(work: Callable[[Session], T]) -> T:
    """Run `work` with a session of its own in one worker thread, holding a database slot.

    For async routes: the session opens, commits and closes inside the same thread hop, so its
    connection is never held while the request waits for anything else (see app.admission).
    """
    from app.admission import database_gate

    def in_session() -> T:
        with session_scope() as session:
            return work(session)

    gate = database_gate()
    await gate.acquire()
    try:
        return await anyio.to_thread.run_sync(in_session)
    finally:
        gate.release()


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    session = _session_factory(get_engine())()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def paged_rows(
    stmt: Select[Any], order_keys: Sequence[ColumnElement[Any]], page_size: int = 500
) -> Iterator[Row[Any]]:
    """The rows of `stmt` in `order_keys` order (a unique key), a page per short transaction.

    Keyset pagination rather than one cursor: a download that a slow client reads for minutes
    then holds a connection only while a page is fetched, never between pages (a streaming
    response iterates in a new thread hop per chunk, and a connection held across hops is what
    exhausts the pool under load). Each row comes back without the key columns appended here.
    """
    width = len(order_keys)
    keyed = stmt.add_columns(*order_keys).order_by(*order_keys).limit(page_size)
    after: tuple[Any, ...] | None = None
    while True:
        page_stmt = keyed if after is None else keyed.where(tuple_(*order_keys) > tuple_(*after))
        with session_scope() as session:
            rows = session.execute(page_stmt).all()
        for row in rows:
            yield row[:-width]  # type: ignore[misc]
        if len(rows) < page_size:
            return
        after = tuple(rows[-1][-width:])
