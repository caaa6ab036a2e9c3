"""Mixtures: a recipe in, a worker builds it, stages and a manifest out."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import StreamingResponse

from app.admission import produced_in_threads
from app.api.jobs import MEDIA_TYPES
from app.deps import CallerDep, SessionDep
from app.errors import ERROR_RESPONSES, Conflict, NotFound, ServiceUnavailable
from app.models import MixtureStatus
from app.schemas import MixturePage, MixtureRead
from app.selfinstruct.recipes import ApiRecipe
from app.services import mixtures as mixture_service
from app.services.export import Container, in_chunks
from app.services.queue import enqueue_mixture

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/mixtures", tags=["mixtures"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=MixtureRead,
    responses={**ERROR_RESPONSES, 503: {"description": "Task broker unavailable"}},
)
def create_mixture(
    recipe: ApiRecipe, session: SessionDep, caller: CallerDep, response: Response
) -> MixtureRead:
    """Build a training mixture from jobs and uploaded datasets; poll the `Location`."""
    mixture = mixture_service.create_mixture(session, recipe, caller)
    session.commit()
    try:
        enqueue_mixture(mixture.id)
    except Exception as exc:
        log.warning("could not enqueue %s: %s", mixture.id, exc)
        # The exception text names the broker's address: server configuration, not for tenants.
        mixture_service.fail(mixture.id, f"could not reach the task broker ({type(exc).__name__})")
        raise ServiceUnavailable(
            "the task broker is unavailable; the mixture was not built"
        ) from exc
    response.headers["Location"] = f"/v1/mixtures/{mixture.id}"
    return mixture_service.mixture_read(mixture)


@router.get("", response_model=MixturePage, responses=ERROR_RESPONSES)
def list_mixtures(
    session: SessionDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> MixturePage:
    """Your mixtures, newest first (each as `GET /v1/mixtures/{id}` shows it)."""
    mixtures, total = mixture_service.list_mixtures(
        session, limit=limit, offset=offset, caller=caller
    )
    return MixturePage(
        items=[mixture_service.mixture_read(m) for m in mixtures],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/{mixture_id}", response_model=MixtureRead, responses=ERROR_RESPONSES)
def read_mixture(mixture_id: uuid.UUID, session: SessionDep, caller: CallerDep) -> MixtureRead:
    return mixture_service.mixture_read(mixture_service.get_mixture(session, mixture_id, caller))


@router.get(
    "/{mixture_id}/stages/{stage}",
    response_class=StreamingResponse,
    responses={
        **ERROR_RESPONSES,
        409: {"description": "Not built yet"},
        200: {
            "content": {media: {} for media, _ in MEDIA_TYPES.values()},
            "description": "The records of one stage, in the recipe's format",
        },
    },
)
def download_stage(
    mixture_id: uuid.UUID,
    session: SessionDep,
    caller: CallerDep,
    stage: Annotated[int, Path(ge=1, le=100)],
    container: Annotated[Container, Query(description="File type.")] = "jsonl",
) -> StreamingResponse:
    """One stage of a built mixture (stage 1, and stage 2 when the recipe has one)."""
    mixture = mixture_service.get_mixture(session, mixture_id, caller)
    if mixture.status != MixtureStatus.SUCCEEDED:
        raise Conflict(f"mixture {mixture_id} is {mixture.status}, not built")
    stages = mixture_service.stage_count(mixture)
    if stage > stages:
        raise NotFound(f"mixture {mixture_id} has {stages} stage(s)")
    media, extension = MEDIA_TYPES[container]
    return StreamingResponse(
        produced_in_threads(in_chunks(mixture_service.stage_stream(mixture.id, stage, container))),
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="{mixture.id}.stage{stage}.{extension}"'
        },
    )
