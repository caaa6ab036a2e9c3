"""The response cache of the caller's key: dropping its entries, all or those past an age."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.deps import CallerDep, SessionDep
from app.errors import ERROR_RESPONSES
from app.services import response_cache

router = APIRouter(prefix="/v1/response-cache", tags=["response cache"])


class CacheDropped(BaseModel):
    deleted: int = Field(description="Entries deleted.")


@router.delete(
    "", response_model=CacheDropped, responses={s: ERROR_RESPONSES[s] for s in (401, 422)}
)
def drop_response_cache(
    session: SessionDep,
    caller: CallerDep,
    older_than_days: Annotated[
        float | None,
        Query(
            ge=0,
            le=100_000,
            description="Only entries stored more than this many days ago; all when omitted.",
        ),
    ] = None,
) -> CacheDropped:
    """Delete this key's stored answers: identical requests are sent to the backend again."""
    deleted = response_cache.drop_entries(session, caller, older_than_days)
    return CacheDropped(deleted=deleted)
