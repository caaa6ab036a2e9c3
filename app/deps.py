"""Request-scoped dependencies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import session_scope
from app.errors import Unauthorized
from app.services.keys import ANYONE, Caller, authenticate


def get_session() -> Iterator[Session]:
    """The request's unit of work: committed when the route returns without error."""
    with session_scope() as session:
        yield session


# scope="function" commits before the response is sent. With the default ("request") the commit
# ran after it, so a client could see 201 for a seed set and get 404 for it on its next request
# (seen in CI on a slow run); a failing commit would also go unreported. Streaming responses open
# sessions of their own.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


_bearer = HTTPBearer(auto_error=False, description="An API key from `selfinstruct keys create`.")


def get_caller(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The key behind the request; every seed set and job query is scoped to it."""
    if not get_settings().keys_required and credentials is None:
        return ANYONE
    if credentials is None:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    key = authenticate(session, credentials.credentials)
    if key is None:
        raise Unauthorized("unknown or revoked API key")
    return Caller(key.id)


CallerDep = Annotated[Caller, Depends(get_caller)]
