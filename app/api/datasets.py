"""Upload datasets to mix: task-formatted examples, chat dialogues, plain text."""

from __future__ import annotations

import uuid
from typing import IO, Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile, status
from starlette.concurrency import run_in_threadpool

from app.config import get_settings
from app.db import session_scope
from app.deps import CallerDep, SessionDep
from app.errors import ERROR_RESPONSES, InvalidInput
from app.limits import upload_name, upload_too_large
from app.schemas import DatasetRead
from app.selfinstruct.recipes import DatasetFileError, SourceKind, iter_dataset
from app.selfinstruct.seeds import NO_NUL_PATTERN
from app.services.datasets import create_dataset, dataset_read, get_dataset
from app.services.keys import Caller

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    responses={**ERROR_RESPONSES, 413: {"description": "Upload too large"}},
)
async def upload_dataset(
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="JSONL, one record per line")],
    kind: Annotated[
        Literal["instructions", "chat", "text"],
        Form(
            description="instructions ({instruction, input, output}), chat ({messages} or "
            "ShareGPT {conversations}) or text ({text}, or one plain document per line)."
        ),
    ] = "instructions",
    name: Annotated[str | None, Form(max_length=200, pattern=NO_NUL_PATTERN)] = None,
) -> DatasetRead:
    """Store a dataset to use as a mixture source (`dataset_id` in a recipe)."""
    too_large = upload_too_large(file, get_settings().max_dataset_upload_bytes)
    if too_large is not None:
        raise too_large
    stored_name = upload_name(name, file, kind)
    return await run_in_threadpool(_store, file.file, kind, stored_name, caller)


def _store(stream: IO[bytes], kind: SourceKind, name: str, caller: Caller) -> DatasetRead:
    """Parse and store the spooled upload line by line, in bounded memory, in a worker thread
    with a session of its own: the event loop never waits for the parser or the database."""
    settings = get_settings()
    records = iter_dataset(
        stream,
        kind,
        max_records=settings.max_dataset_records,
        max_line_bytes=settings.max_dataset_line_bytes,
    )
    try:
        with session_scope() as session:
            dataset = create_dataset(session, name=name, kind=kind, records=records, caller=caller)
            return dataset_read(dataset)
    except DatasetFileError as exc:
        errors = [{"line": e.line, "field": "file", "message": e.message} for e in exc.errors]
        raise InvalidInput(f"file: {exc}", errors=errors) from exc


@router.get("/{dataset_id}", response_model=DatasetRead, responses=ERROR_RESPONSES)
def read_dataset(dataset_id: uuid.UUID, session: SessionDep, caller: CallerDep) -> DatasetRead:
    return dataset_read(get_dataset(session, dataset_id, caller))
