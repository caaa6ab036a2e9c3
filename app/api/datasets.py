"""Upload datasets to mix: task-formatted examples, chat dialogues, plain text."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile, status

from app.config import get_settings
from app.deps import CallerDep, SessionDep
from app.errors import ERROR_RESPONSES, InvalidInput, PayloadTooLarge
from app.schemas import DatasetRead
from app.selfinstruct.recipes import DatasetFileError, parse_dataset
from app.services.datasets import create_dataset, dataset_read, get_dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    responses={**ERROR_RESPONSES, 413: {"description": "Upload too large"}},
)
async def upload_dataset(
    session: SessionDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="JSONL, one record per line")],
    kind: Annotated[
        Literal["instructions", "chat", "text"],
        Form(
            description="instructions ({instruction, input, output}), chat ({messages} or "
            "ShareGPT {conversations}) or text ({text}, or one plain document per line)."
        ),
    ] = "instructions",
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> DatasetRead:
    """Store a dataset to use as a mixture source (`dataset_id` in a recipe)."""
    settings = get_settings()
    data = await file.read(settings.max_dataset_upload_bytes + 1)
    if len(data) > settings.max_dataset_upload_bytes:
        raise PayloadTooLarge(f"file: larger than {settings.max_dataset_upload_bytes} bytes")
    try:
        records = parse_dataset(data, kind, max_records=settings.max_dataset_records)
    except DatasetFileError as exc:
        errors = [{"line": e.line, "field": "file", "message": e.message} for e in exc.errors]
        raise InvalidInput(f"file: {exc}", errors=errors) from exc
    dataset = create_dataset(
        session, name=name or file.filename or kind, kind=kind, records=records, caller=caller
    )
    return dataset_read(dataset)


@router.get("/{dataset_id}", response_model=DatasetRead, responses=ERROR_RESPONSES)
def read_dataset(dataset_id: uuid.UUID, session: SessionDep, caller: CallerDep) -> DatasetRead:
    return dataset_read(get_dataset(session, dataset_id, caller))
