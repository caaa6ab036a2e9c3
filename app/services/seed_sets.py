"""Seed sets: store validated seed tasks, read them back as core SeedTask objects."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.models import SeedSet, SeedTaskRow
from app.schemas import SeedSetRead
from app.selfinstruct.seeds import seed_set_hash
from app.selfinstruct.types import SeedInstance, SeedTask
from app.services.keys import ANYONE, Caller


def create_seed_set(
    session: Session, *, name: str, tasks: Sequence[SeedTask], caller: Caller = ANYONE
) -> SeedSet:
    seed_set = SeedSet(
        name=name,
        content_hash=seed_set_hash(tasks),
        task_count=len(tasks),
        owner_key_id=caller.key_id,
    )
    seed_set.tasks = [
        SeedTaskRow(
            position=position,
            task_id=task.id,
            name=task.name,
            instruction=task.instruction,
            instances=[{"input": i.input, "output": i.output} for i in task.instances],
            is_classification=task.is_classification,
            source=dict(task.source) if task.source is not None else None,
        )
        for position, task in enumerate(tasks)
    ]
    session.add(seed_set)
    session.flush()
    return seed_set


def get_seed_set(session: Session, seed_set_id: uuid.UUID, caller: Caller = ANYONE) -> SeedSet:
    """The seed set if the caller owns it; another key's set is indistinguishable from none."""
    seed_set = session.get(SeedSet, seed_set_id)
    if seed_set is None or not caller.owns(seed_set.owner_key_id):
        raise NotFound(f"seed set {seed_set_id} not found")
    return seed_set


# A seed set never changes once stored (there is no route that edits or deletes one), so each
# process keeps the tasks of the sets it has read: a job's round task reads them twice a round.
_SEED_CACHE_SIZE = 32
_seed_cache: OrderedDict[uuid.UUID, tuple[SeedTask, ...]] = OrderedDict()
_seed_cache_lock = threading.Lock()


def load_seed_tasks(session: Session, seed_set_id: uuid.UUID) -> list[SeedTask]:
    with _seed_cache_lock:
        cached = _seed_cache.get(seed_set_id)
        if cached is not None:
            _seed_cache.move_to_end(seed_set_id)
            return list(cached)
    tasks = _read_seed_tasks(session, seed_set_id)
    if tasks:  # an unknown id (or one not committed yet) is not remembered
        with _seed_cache_lock:
            _seed_cache[seed_set_id] = tuple(tasks)
            while len(_seed_cache) > _SEED_CACHE_SIZE:
                _seed_cache.popitem(last=False)
    return tasks


def _read_seed_tasks(session: Session, seed_set_id: uuid.UUID) -> list[SeedTask]:
    rows = session.scalars(
        select(SeedTaskRow)
        .where(SeedTaskRow.seed_set_id == seed_set_id)
        .order_by(SeedTaskRow.position)
    )
    return [
        SeedTask(
            id=row.task_id,
            name=row.name,
            instruction=row.instruction,
            instances=tuple(SeedInstance(i["input"], i["output"]) for i in row.instances),
            is_classification=row.is_classification,
        )
        for row in rows
    ]


def seed_set_read(session: Session, seed_set: SeedSet) -> SeedSetRead:
    classification = session.scalar(
        select(func.count())
        .select_from(SeedTaskRow)
        .where(SeedTaskRow.seed_set_id == seed_set.id, SeedTaskRow.is_classification.is_(True))
    )
    return SeedSetRead(
        id=seed_set.id,
        name=seed_set.name,
        task_count=seed_set.task_count,
        classification_count=classification or 0,
        content_hash=seed_set.content_hash,
        created_at=seed_set.created_at,
    )
