"""Job status and job lists as pollers read them: from a per-process cache, about a second old.

A dashboard, `--wait` and users' scripts poll the same jobs many times a second. Each answer is
kept fresh for STATUS_FRESH_S (as old as the progress counters it shows may be anyway); after
that it is still served while one request reads it again in the background (stale while
revalidate), so a hundred pollers of a job cost this process about one database read per
second, and every answer they get is sent straight from the event loop. A job changed through
this process (created, cancelled) is dropped from the cache at once; another API process shows
the change within about a second. A read that cannot find the job, or is not its owner's, always
goes to the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from fastapi import Response
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session

from app.admission import detach_from_request, stepped_aside
from app.cache import TTLCache
from app.db import run_in_session
from app.deps import known_caller, resolve_caller
from app.schemas import JobPage
from app.services import jobs as job_service

JSON = "application/json"
STATUS_FRESH_S = job_service.SUMMARY_MAX_AGE_S
STATUS_KEEP_S = 10.0  # the most a stale answer is served while its refreshes fail

Credentials = HTTPAuthorizationCredentials | None


@dataclass(frozen=True)
class _Cached:
    owner_key_id: uuid.UUID | None  # whose it is: another key's request is never served it
    body: bytes


_answers: TTLCache[Hashable, _Cached] = TTLCache(max_entries=20_000)
_reading: dict[Hashable, asyncio.Future[_Cached]] = {}
_list_generation: dict[uuid.UUID | None, int] = {}
_refreshes: set[asyncio.Task[None]] = set()  # held, so a running refresh is not collected


def forget_job(job_id: uuid.UUID, owner_key_id: uuid.UUID | None) -> None:
    """This process changed the job (or the owner's list): the next read goes to the database."""
    _answers.discard(("job", job_id))
    _list_generation[owner_key_id] = _list_generation.get(owner_key_id, 0) + 1


async def job_status(job_id: uuid.UUID, credentials: Credentials) -> Response:
    def read(session: Session) -> _Cached:
        caller = resolve_caller(session, credentials)
        job = job_service.get_job(session, job_id, caller)
        body = job_service.job_read(session, job).model_dump_json().encode()
        return _Cached(job.owner_key_id, body)

    return await _answer(("job", job_id), credentials, read)


async def job_page(credentials: Credentials, *, limit: int, offset: int) -> Response:
    caller = known_caller(credentials)
    owner = caller.key_id if caller is not None else None

    def read(session: Session) -> _Cached:
        caller = resolve_caller(session, credentials)
        jobs, total = job_service.list_jobs(session, limit=limit, offset=offset, caller=caller)
        page = JobPage(
            items=[job_service.job_read(session, j) for j in jobs],
            total=total,
            limit=limit,
            offset=offset,
        )
        return _Cached(caller.key_id, page.model_dump_json().encode())

    if caller is None:  # the key is not known yet: read (which also validates it)
        async with stepped_aside():
            fresh = await run_in_session(read)
        return Response(fresh.body, media_type=JSON)
    key = ("page", owner, _list_generation.get(owner, 0), limit, offset)
    return await _answer(key, credentials, read)


async def _answer(
    key: Hashable, credentials: Credentials, read: Callable[[Session], _Cached]
) -> Response:
    caller = known_caller(credentials)
    cached, stale = _answers.lookup(key)
    if caller is not None and cached is not None and caller.owns(cached.owner_key_id):
        if stale and key not in _reading:
            _refresh_later(key, read)
        return Response(cached.body, media_type=JSON)
    joined = await _join_read(key, credentials)
    if joined is not None:
        return Response(joined.body, media_type=JSON)
    return Response((await _read_now(key, read)).body, media_type=JSON)


async def _join_read(key: Hashable, credentials: Credentials) -> _Cached | None:
    """The result of a read of `key` already in flight, if there is one and it is ours to see
    (500 pollers arriving together then cost one read, not 500)."""
    pending = _reading.get(key)
    if pending is None:
        return None
    with contextlib.suppress(Exception):
        async with stepped_aside():
            result = await asyncio.shield(pending)
        caller = known_caller(credentials)
        if caller is not None and caller.owns(result.owner_key_id):
            return result
    return None


async def _read_now(key: Hashable, read: Callable[[Session], _Cached]) -> _Cached:
    reading: asyncio.Future[_Cached] = asyncio.ensure_future(run_in_session(read))
    _reading.setdefault(key, reading)
    try:
        async with stepped_aside():
            fresh = await reading
    finally:
        if _reading.get(key) is reading:
            del _reading[key]
    _answers.put(key, fresh, STATUS_FRESH_S, STATUS_KEEP_S)
    return fresh


def _refresh_later(key: Hashable, read: Callable[[Session], _Cached]) -> None:
    async def refresh() -> None:
        detach_from_request()  # this may outlive the request that started it
        try:
            await _read_now(key, read)
        except Exception:  # gone, no longer visible, or overload: read afresh next time
            _answers.discard(key)

    task = asyncio.get_running_loop().create_task(refresh())
    _refreshes.add(task)
    task.add_done_callback(_refreshes.discard)
