"""Which LLM backends jobs may choose (names and models only: never URLs or keys), and how
busy each is: requests in flight and the concurrency limit the workers have learnt for it."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.config import get_settings
from app.deps import CallerDep
from app.errors import ERROR_RESPONSES
from app.services.backend_load import current_loads

router = APIRouter(prefix="/v1/backends", tags=["backends"])


class BackendRead(BaseModel):
    name: str
    models: list[str]
    in_flight: int | None = Field(
        None, description="Requests in flight to it now, from every worker (null: unknown)."
    )
    concurrency_limit: int | None = Field(
        None,
        description="Requests it may have in flight: grows while its latency holds, shrinks "
        "when it queues or refuses (null: unknown).",
    )
    waiting: int | None = Field(None, description="Requests waiting for one of its slots.")
    max_concurrency: int | None = Field(
        None, description="The configured cap on concurrency_limit (null: none)."
    )


@router.get("", response_model=list[BackendRead], responses=ERROR_RESPONSES)
def list_backends(_: CallerDep) -> list[BackendRead]:
    """Backend names for the `backend` job option (`models` empty means any model), with their
    load now."""
    settings = get_settings()
    loads = current_loads()
    backends = []
    for name in settings.backend_names():
        backend = settings.backend(name)
        assert backend is not None
        load = loads.get(name)
        backends.append(
            BackendRead(
                name=name,
                models=backend.models,
                in_flight=None if load is None else load.in_flight,
                concurrency_limit=None if load is None else load.limit,
                waiting=None if load is None else load.waiting,
                max_concurrency=backend.max_concurrency,
            )
        )
    return backends
