"""Which LLM backends jobs may choose (names and models only: never URLs or keys)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from app.config import get_settings
from app.deps import CallerDep
from app.errors import ERROR_RESPONSES

router = APIRouter(prefix="/v1/backends", tags=["backends"])


class BackendRead(BaseModel):
    name: str
    models: list[str]


@router.get("", response_model=list[BackendRead], responses=ERROR_RESPONSES)
def list_backends(_: CallerDep) -> list[BackendRead]:
    """Backend names for the `backend` job option; `models` empty means any model."""
    settings = get_settings()
    backends = []
    for name in settings.backend_names():
        backend = settings.backend(name)
        assert backend is not None
        backends.append(BackendRead(name=name, models=backend.models))
    return backends
