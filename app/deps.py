"""Request-scoped dependencies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from app.db import session_scope


def get_session() -> Iterator[Session]:
    """The request's unit of work: committed when the route returns without error."""
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
