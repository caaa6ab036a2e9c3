"""Upload and read seed sets."""

from __future__ import annotations

import uuid
from typing import IO, Annotated

from fastapi import APIRouter, File, Form, UploadFile, status
from starlette.concurrency import run_in_threadpool

from app.config import get_settings
from app.db import session_scope
from app.deps import CallerDep, SessionDep
from app.errors import ERROR_RESPONSES, InvalidInput
from app.limits import upload_name, upload_too_large
from app.schemas import SeedSetRead
from app.selfinstruct.seed_formats import FORMAT_NAMES, SeedFormat, guess_format, to_seed_jsonl
from app.selfinstruct.seeds import NO_NUL_PATTERN, SeedFileError, parse_seed_jsonl
from app.selfinstruct.types import SeedTask
from app.services.keys import Caller
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
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="JSONL, one seed task per line")],
    name: Annotated[str | None, Form(max_length=200, pattern=NO_NUL_PATTERN)] = None,
    format: Annotated[
        SeedFormat,
        Form(description="self_instruct (JSONL), natural_instructions, alpaca, or lines."),
    ] = SeedFormat.SELF_INSTRUCT,
) -> SeedSetRead:
    """Upload seed tasks: JSONL in the Self-Instruct seed format (the paper's file loads as is),
    a Natural Instructions task file, Alpaca JSON, or one instruction per line."""
    too_large = upload_too_large(file, get_settings().max_seed_upload_bytes)
    if too_large is not None:
        raise too_large
    stored_name = upload_name(name, file, "seed tasks")
    return await run_in_threadpool(_store, file.file, format, stored_name, caller)


def _store(stream: IO[bytes], fmt: SeedFormat, name: str, caller: Caller) -> SeedSetRead:
    """Parse and store in a worker thread with a session of its own (not on the event loop)."""
    tasks = _parse(stream, fmt)
    with session_scope() as session:
        seed_set = create_seed_set(session, name=name, tasks=tasks, caller=caller)
        return seed_set_read(session, seed_set)


def _parse(stream: IO[bytes], fmt: SeedFormat) -> list[SeedTask]:
    """JSONL is read line by line; the other formats are one JSON document (or need a whole
    conversion first), within the upload limit already checked."""
    settings = get_settings()
    try:
        source = stream if fmt == SeedFormat.SELF_INSTRUCT else to_seed_jsonl(stream.read(), fmt)
        return parse_seed_jsonl(
            source,
            max_bytes=settings.max_seed_upload_bytes,
            max_line_bytes=settings.max_seed_line_bytes,
            max_tasks=settings.max_seed_tasks,
        )
    except SeedFileError as exc:
        hint = _format_hint(stream) if fmt == SeedFormat.SELF_INSTRUCT else ""
        raise InvalidInput(f"file: {hint}{exc}", errors=seed_errors(exc)) from exc


def _format_hint(stream: IO[bytes]) -> str:
    """A file in another supported format fails the default parse on every line; say which
    format it looks like instead of leaving the user with a page of JSON errors."""
    stream.seek(0)
    guessed = guess_format(stream.read())
    if guessed is None:
        return ""
    return (
        f"this looks like {FORMAT_NAMES[guessed]}, not Self-Instruct JSONL: "
        f"upload it again with format={guessed.value}. "
    )


@router.get("/{seed_set_id}", response_model=SeedSetRead, responses=ERROR_RESPONSES)
def read_seed_set(seed_set_id: uuid.UUID, session: SessionDep, caller: CallerDep) -> SeedSetRead:
    return seed_set_read(session, get_seed_set(session, seed_set_id, caller))
