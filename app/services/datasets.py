"""Uploaded datasets: mixture sources of task-formatted examples, dialogues or plain text."""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.models import Dataset, DatasetRecord
from app.schemas import DatasetRead
from app.selfinstruct.recipes import SourceKind
from app.services.keys import ANYONE, Caller

_INSERT_BATCH = 1000


def create_dataset(
    session: Session,
    *,
    name: str,
    kind: SourceKind,
    records: Iterable[dict[str, Any]],
    caller: Caller = ANYONE,
) -> Dataset:
    """Store records as they come (an iterator need never be held whole), hashing as it goes.
    An exception from `records` propagates: the caller's transaction then drops them all."""
    dataset = Dataset(
        name=name, kind=kind, record_count=0, content_hash="", owner_key_id=caller.key_id
    )
    session.add(dataset)
    session.flush()
    digest = hashlib.sha256()
    count = 0
    for chunk in _chunks(records, _INSERT_BATCH):
        for record in chunk:
            digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode() + b"\n")
        # Core inserts in batches: an ORM object per record would cost seconds at 100K records.
        session.execute(
            insert(DatasetRecord),
            [
                {"dataset_id": dataset.id, "position": count + offset, "record": record}
                for offset, record in enumerate(chunk)
            ],
        )
        count += len(chunk)
    dataset.record_count = count
    dataset.content_hash = digest.hexdigest()
    session.flush()
    return dataset


def _chunks(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def get_dataset(session: Session, dataset_id: uuid.UUID, caller: Caller = ANYONE) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or not caller.owns(dataset.owner_key_id):
        raise NotFound(f"dataset {dataset_id} not found")
    return dataset


def iter_dataset_records(session: Session, dataset_id: uuid.UUID) -> Iterator[dict[str, Any]]:
    stmt = (
        select(DatasetRecord.record)
        .where(DatasetRecord.dataset_id == dataset_id)
        .order_by(DatasetRecord.position)
        .execution_options(yield_per=_INSERT_BATCH)
    )
    yield from session.scalars(stmt)


def dataset_read(dataset: Dataset) -> DatasetRead:
    return DatasetRead(
        id=dataset.id,
        name=dataset.name,
        kind=dataset.kind,  # type: ignore[arg-type]
        record_count=dataset.record_count,
        content_hash=dataset.content_hash,
        created_at=dataset.created_at,
    )
