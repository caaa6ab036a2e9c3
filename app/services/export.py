"""Stream a job's examples as JSONL in constant memory (server-side cursor, rows in batches)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select

from app.db import session_scope
from app.models import Instance, Instruction

_BATCH = 500


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode()


def iter_examples(job_id: uuid.UUID) -> Iterator[dict[str, Any]]:
    """Accepted instances of accepted instructions, in generation order."""
    stmt = (
        select(
            Instance.id,
            Instance.input,
            Instance.output,
            Instruction.id,
            Instruction.text,
            Instruction.is_classification,
        )
        .join(Instruction, Instance.instruction_id == Instruction.id)
        .where(
            Instance.job_id == job_id,
            Instance.accepted.is_(True),
            Instruction.accepted.is_(True),
        )
        .order_by(Instruction.round, Instruction.slot, Instance.position)
        .execution_options(yield_per=_BATCH)
    )
    with session_scope() as session:
        for inst_id, inp, out, instr_id, text, is_cls in session.execute(stmt):
            yield {
                "id": str(inst_id),
                "instruction_id": str(instr_id),
                "job_id": str(job_id),
                "instruction": text,
                "input": inp,
                "output": out,
                "is_classification": bool(is_cls),
            }


def iter_rejected(job_id: uuid.UUID) -> Iterator[dict[str, Any]]:
    """Rejected instructions, then rejected instances, each with its reason code."""
    instructions = (
        select(Instruction)
        .where(Instruction.job_id == job_id, Instruction.accepted.is_(False))
        .order_by(Instruction.round, Instruction.slot)
        .execution_options(yield_per=_BATCH)
    )
    instances = (
        select(Instance, Instruction.text)
        .join(Instruction, Instance.instruction_id == Instruction.id)
        .where(Instance.job_id == job_id, Instance.accepted.is_(False))
        .order_by(Instruction.round, Instruction.slot, Instance.position)
        .execution_options(yield_per=_BATCH)
    )
    with session_scope() as session:
        for row in session.scalars(instructions):
            yield {
                "kind": "instruction",
                "status": "rejected",
                "id": str(row.id),
                "job_id": str(job_id),
                "round": row.round,
                "instruction": row.text,
                "reason": row.reason,
                "max_rouge": row.max_rouge,
                "nearest": row.nearest,
            }
        for inst, text in session.execute(instances):
            yield {
                "kind": "instance",
                "status": "rejected",
                "id": str(inst.id),
                "instruction_id": str(inst.instruction_id),
                "job_id": str(job_id),
                "instruction": text,
                "input": inst.input,
                "output": inst.output,
                "reason": inst.reason,
            }


def examples_jsonl(job_id: uuid.UUID, *, include_rejected: bool = False) -> Iterator[bytes]:
    for record in iter_examples(job_id):
        yield _line(record)
    if include_rejected:
        for record in iter_rejected(job_id):
            yield _line(record)
