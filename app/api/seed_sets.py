"""Upload and read seed sets."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status

from app.config import get_settings
from app.deps import CallerDep, SessionDep
from app.errors import ERROR_RESPONSES, InvalidInput, PayloadTooLarge
from app.schemas import SeedSetRead
from app.selfinstruct.seed_formats import SeedFormat, to_seed_jsonl
from app.selfinstruct.seeds import SeedFileError, parse_seed_jsonl
from app.services.seed_sets import create_seed_set, get_seed_set, seed_set_read

router = APIRouter(prefix="/v1/seed-sets", tags=["seed sets"])


def seed_errors(exc: SeedFileError) -> list[dict[str, object]]:
    return [{"line": e.line, "field": e.field, "message": e.message} for e in exc.errors]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SeedSetRead,
    responses={**ERROR_RESPONSES, 413: {"description": "Upload too large"}},
)
async def upload_seed_set(
    session: SessionDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="JSONL, one seed task per line")],
    name: Annotated[str | None, Form(max_length=200)] = None,
    format: Annotated[
        SeedFormat,
        Form(description="self_instruct (JSONL), natural_instructions, alpaca, or lines."),
    ] = SeedFormat.SELF_INSTRUCT,
) -> SeedSetRead:
    """Upload seed tasks: JSONL in the Self-Instruct seed format (the paper's file loads as is),
    a Natural Instructions task file, Alpaca JSON, or one instruction per line."""
    settings = get_settings()
    data = await file.read(settings.max_seed_upload_bytes + 1)
    if len(data) > settings.max_seed_upload_bytes:
        raise PayloadTooLarge(f"file: larger than {settings.max_seed_upload_bytes} bytes")
    try:
        tasks = parse_seed_jsonl(
            to_seed_jsonl(data, format),
            max_bytes=settings.max_seed_upload_bytes,
            max_line_bytes=settings.max_seed_line_bytes,
            max_tasks=settings.max_seed_tasks,
        )
    except SeedFileError as exc:
        raise InvalidInput(f"file: {exc}", errors=seed_errors(exc)) from exc
    seed_set = create_seed_set(
        session, name=name or file.filename or "seed tasks", tasks=tasks, caller=caller
    )
    return seed_set_read(session, seed_set)


@router.get("/{seed_set_id}", response_model=SeedSetRead, responses=ERROR_RESPONSES)
def read_seed_set(seed_set_id: uuid.UUID, session: SessionDep, caller: CallerDep) -> SeedSetRead:
    return seed_set_read(session, get_seed_set(session, seed_set_id, caller))
