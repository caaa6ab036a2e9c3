"""Request-scoped dependencies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.admission import database_slot
from app.cache import TTLCache
from app.config import get_settings
from app.db import session_scope
from app.errors import Unauthorized
from app.services.keys import ANYONE, Caller, authenticate, hash_token


def get_session(
    _slot: Annotated[None, Depends(database_slot, scope="function")],
) -> Iterator[Session]:
    """The request's unit of work: committed when the route returns without error. It holds a
    database slot (app.admission) from before it opens until after it closes."""
    with session_scope() as session:
        yield session


# scope="function" commits before the response is sent. With the default ("request") the commit
# ran after it, so a client could see 201 for a seed set and get 404 for it on its next request
# (seen in CI on a slow run); a failing commit would also go unreported. Streaming responses open
# sessions of their own.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


_bearer = HTTPBearer(auto_error=False, description="An API key from `selfinstruct keys create`.")
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]

# Keys seen valid in the last second: most requests then need no query to authenticate (pollers
# send the same key many times a second). Past that second an entry is still used, for at most a
# few more, while one request checks the key again in the background. The price: a revoked key
# keeps working in each API process for about a second longer (AUTH_FRESH_S plus one check).
AUTH_FRESH_S = 1.0
AUTH_KEEP_S = 5.0
_valid_keys: TTLCache[str, Caller] = TTLCache(max_entries=10_000)
_rechecking: set[str] = set()
_rechecks: set[asyncio.Task[None]] = set()  # held, so a running check is not collected


def known_caller(credentials: HTTPAuthorizationCredentials | None) -> Caller | None:
    """For async routes: the caller without waiting for the database when that is possible
    (keys off, or a key validated lately); raises Unauthorized for a request without a key."""
    if credentials is None:
        if not get_settings().keys_required:
            return ANYONE
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    digest = hash_token(credentials.credentials)
    caller, stale = _valid_keys.lookup(digest)
    if caller is not None and stale and digest not in _rechecking:
        _rechecking.add(digest)
        task = asyncio.get_running_loop().create_task(_recheck(digest, credentials))
        _rechecks.add(task)
        task.add_done_callback(_rechecks.discard)
    return caller


async def _recheck(digest: str, credentials: HTTPAuthorizationCredentials) -> None:
    from app.db import run_in_session

    try:
        await run_in_session(lambda session: _validate(session, credentials))
    except Unauthorized:
        _valid_keys.discard(digest)
    except Exception:  # overload or a database hiccup: the entry expires on its own
        pass
    finally:
        _rechecking.discard(digest)


def resolve_caller(session: Session, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    """The caller, from a fresh cache entry or the database (then cached)."""
    if credentials is None:
        return known_caller(credentials)  # type: ignore[return-value]  # ANYONE or raises
    caller = _valid_keys.get(hash_token(credentials.credentials))
    return caller if caller is not None else _validate(session, credentials)


def _validate(session: Session, credentials: HTTPAuthorizationCredentials) -> Caller:
    key = authenticate(session, credentials.credentials)
    if key is None:
        raise Unauthorized("unknown or revoked API key")
    caller = Caller(key.id)
    _valid_keys.put(hash_token(credentials.credentials), caller, AUTH_FRESH_S, AUTH_KEEP_S)
    return caller


def get_caller(session: SessionDep, credentials: CredentialsDep) -> Caller:
    """The key behind the request; every seed set and job query is scoped to it."""
    return resolve_caller(session, credentials)


CallerDep = Annotated[Caller, Depends(get_caller)]
