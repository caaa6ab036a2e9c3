"""Pages of a job's examples for people to browse: accepted examples, rejected instructions and
rejected instances, searchable by text and filterable by rejection reason."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from app.models import Instance, Instruction

View = Literal["accepted", "rejected_instructions", "rejected_instances"]


def browse(
    session: Session,
    job_id: uuid.UUID,
    view: View,
    *,
    query: str | None = None,
    reason: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    stmt = _statement(job_id, view)
    if query:
        needle = f"%{query.lower()}%"
        columns = [Instruction.text] if view == "rejected_instructions" else [
            Instruction.text, Instance.input, Instance.output
        ]  # fmt: skip
        stmt = stmt.where(or_(*(func.lower(c).like(needle) for c in columns)))
    if reason and view != "accepted":
        model = Instruction if view == "rejected_instructions" else Instance
        stmt = stmt.where(model.reason == reason)
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    rows = session.execute(stmt.limit(limit).offset(offset)).mappings().all()
    return {"total": int(total or 0), "items": [_item(dict(r)) for r in rows]}


def _statement(job_id: uuid.UUID, view: View) -> Select[Any]:
    if view == "rejected_instructions":
        return (
            select(
                Instruction.id,
                Instruction.text.label("instruction"),
                Instruction.reason,
                Instruction.max_rouge,
                Instruction.nearest,
            )
            .where(Instruction.job_id == job_id, Instruction.accepted.is_(False))
            .order_by(Instruction.round, Instruction.slot)
        )
    accepted = view == "accepted"
    stmt = (
        select(
            Instance.id,
            Instruction.text.label("instruction"),
            Instance.input,
            Instance.output,
            Instance.reason,
            Instruction.is_classification,
            Instruction.id.label("instruction_id"),
            Instruction.variant,
            Instruction.core_id,
            Instance.answer_score,
            Instance.faithfulness_score,
        )
        .join(Instruction, Instance.instruction_id == Instruction.id)
        .where(Instance.job_id == job_id, Instance.accepted.is_(accepted))
        .order_by(Instruction.round, Instruction.slot, Instance.position)
    )
    return stmt.where(Instruction.accepted.is_(True)) if accepted else stmt


def _item(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("id", "instruction_id", "core_id"):
        if row.get(key) is not None:
            row[key] = str(row[key])
    return row
