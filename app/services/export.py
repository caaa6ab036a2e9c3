"""Stream a job's examples as JSONL in constant memory (a page of rows per short transaction)."""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select

from app.db import paged_rows, session_scope
from app.models import Instance, Instruction, Job
from app.selfinstruct.formats import ExportFormat, convert
from app.selfinstruct.types import SURPLUS_REASONS

_BATCH = 500


def in_chunks(parts: Iterable[bytes], size: int = 256 * 1024) -> Iterator[bytes]:
    """Join small parts (a line each) into chunks of about `size` bytes. A streaming response
    takes each chunk of a sync iterator in a thread hop of its own: one hop per line made a
    download cost far more CPU than the rows it sends."""
    buffer = bytearray()
    for part in parts:
        buffer += part
        if len(buffer) >= size:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


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
            Instance.answer_score,
            Instance.faithfulness_score,
            Instruction.judge_note,
            Instruction.variant,
            Instruction.core_id,
            Instruction.extra,
        )
        .join(Instruction, Instance.instruction_id == Instruction.id)
        .where(
            Instance.job_id == job_id,
            Instance.accepted.is_(True),
            Instruction.accepted.is_(True),
        )
    )
    order = (Instruction.round, Instruction.slot, Instruction.variant, Instance.position)
    for (
        inst_id,
        inp,
        out,
        instr_id,
        text,
        is_cls,
        *judged,
        variant,
        core,
        extra,
    ) in paged_rows(stmt, order, _BATCH):
        record = {
            "id": str(inst_id),
            "instruction_id": str(instr_id),
            "job_id": str(job_id),
            "instruction": text,
            "input": inp,
            "output": out,
            "is_classification": bool(is_cls),
        }
        if verdicts := _judge_fields(*judged):
            record["judge"] = verdicts
        if extra is not None:  # Unnatural-Instructions mode: which example is which
            record["constraints"] = extra.get("constraints")
            record["variant"] = "reformulation" if variant else "core"
            record["core_id"] = str(core) if core else str(instr_id)
        yield record


def _judge_fields(
    answer_score: int | None, faithfulness_score: int | None, note: str | None
) -> dict[str, Any]:
    """What the LLM judges said, for jobs that ran them (no key at all otherwise)."""
    fields = {
        "answer_score": answer_score,
        "faithfulness_score": faithfulness_score,
        "instruction_note": note,
    }
    return {k: v for k, v in fields.items() if v is not None}


def iter_rejected(job_id: uuid.UUID) -> Iterator[dict[str, Any]]:
    """Rejected instructions (and those past the target, as status `over_target`), then
    rejected instances, each with its reason code."""
    instructions = select(Instruction).where(
        Instruction.job_id == job_id, Instruction.accepted.is_(False)
    )
    instances = (
        select(Instance, Instruction.text)
        .join(Instruction, Instance.instruction_id == Instruction.id)
        .where(Instance.job_id == job_id, Instance.accepted.is_(False))
    )
    by_instruction = (Instruction.round, Instruction.slot, Instruction.variant)
    for (row,) in paged_rows(instructions, by_instruction, _BATCH):
        yield {
            "kind": "instruction",
            "status": "over_target" if row.reason in SURPLUS_REASONS else "rejected",
            "id": str(row.id),
            "job_id": str(job_id),
            "round": row.round,
            "instruction": row.text,
            "reason": row.reason,
            "max_rouge": row.max_rouge,
            "nearest": row.nearest,
            **({"judge": _judge_fields(None, None, row.judge_note)} if row.judge_note else {}),
        }
    for inst, text in paged_rows(instances, (*by_instruction, Instance.position), _BATCH):
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
            **(
                {"judge": judged}
                if (judged := _judge_fields(inst.answer_score, inst.faithfulness_score, None))
                else {}
            ),
        }


def examples_jsonl(job_id: uuid.UUID, *, include_rejected: bool = False) -> Iterator[bytes]:
    for record in iter_examples(job_id):
        yield _line(record)
    if include_rejected:
        for record in iter_rejected(job_id):
            yield _line(record)


# --- training formats ------------------------------------------------------------------------------

Container = Literal["jsonl", "json", "parquet"]

_PARQUET_SCHEMAS: dict[ExportFormat, pa.Schema] = {
    ExportFormat.RAW: pa.schema(
        [
            ("id", pa.string()),
            ("instruction_id", pa.string()),
            ("job_id", pa.string()),
            ("instruction", pa.string()),
            ("input", pa.string()),
            ("output", pa.string()),
            ("is_classification", pa.bool_()),
        ]
    ),
    ExportFormat.ALPACA: pa.schema(
        [("instruction", pa.string()), ("input", pa.string()), ("output", pa.string())]
    ),
    ExportFormat.OPENAI_CHAT: pa.schema(
        [("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))]
    ),
    ExportFormat.SHAREGPT: pa.schema(
        [("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())])))]
    ),
    ExportFormat.PROMPT_COMPLETION: pa.schema(
        [("prompt", pa.string()), ("completion", pa.string())]
    ),
}
# The columns an Unnatural-Instructions job's records add, in the formats that keep them.
_UNNATURAL_COLUMNS: dict[ExportFormat, tuple[str, ...]] = {
    ExportFormat.RAW: ("constraints", "variant", "core_id"),
    ExportFormat.ALPACA: ("variant", "core_id"),
    ExportFormat.SHAREGPT: ("variant", "core_id"),
}


def parquet_schema(fmt: ExportFormat, *, unnatural: bool) -> pa.Schema:
    """The format's columns, plus those of Unnatural-Instructions records for such a job (a
    fixed schema would drop them, as Parquet keeps only the columns it is given)."""
    schema = _PARQUET_SCHEMAS[fmt]
    for name in _UNNATURAL_COLUMNS.get(fmt, ()) if unnatural else ():
        schema = schema.append(pa.field(name, pa.string()))
    return schema


def _is_unnatural(job_id: uuid.UUID) -> bool:
    with session_scope() as session:
        job = session.get(Job, job_id)
        return job is not None and (job.options or {}).get("mode") == "unnatural"


def iter_records(
    job_id: uuid.UUID, fmt: ExportFormat, *, system_prompt: str | None = None
) -> Iterator[dict[str, Any]]:
    """The job's examples in a training format; prompt/completion pairs that render the same
    text are written once, as the paper does before fine-tuning."""
    seen: set[bytes] = set()
    for example in iter_examples(job_id):
        record = convert(example, fmt, system_prompt=system_prompt)
        if fmt == ExportFormat.PROMPT_COMPLETION:
            key = hashlib.blake2b(
                json.dumps(record, sort_keys=True).encode(), digest_size=16
            ).digest()
            if key in seen:
                continue
            seen.add(key)
        yield record


def export_stream(
    job_id: uuid.UUID,
    fmt: ExportFormat,
    container: Container,
    *,
    system_prompt: str | None = None,
) -> Iterator[bytes]:
    yield from encode_records(
        job_id, fmt, container, iter_records(job_id, fmt, system_prompt=system_prompt)
    )


def encode_records(
    job_id: uuid.UUID, fmt: ExportFormat, container: Container, records: Iterator[dict[str, Any]]
) -> Iterator[bytes]:
    """The bytes of `records` (the job's, in `fmt`) in `container`."""
    if container == "parquet":
        schema = parquet_schema(fmt, unnatural=_is_unnatural(job_id))
        yield from _parquet(records, schema)  # known schema: one pass
    else:
        yield from records_stream(lambda: records, container)


def _json_array(records: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    yield b"["
    for n, record in enumerate(records):
        yield (",\n" if n else "\n").encode() + json.dumps(record, ensure_ascii=False).encode()
    yield b"\n]\n"


def _parquet(records: Iterator[dict[str, Any]], schema: pa.Schema) -> Iterator[bytes]:
    """Parquet needs its footer last, so row groups go to a spooled file (in memory while small),
    then the file is streamed out in chunks."""
    with tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024) as sink:
        with pq.ParquetWriter(sink, schema) as writer:
            for batch in _batches(records):
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        sink.seek(0)
        while chunk := sink.read(1024 * 1024):
            yield chunk


def records_stream(
    records: Callable[[], Iterator[dict[str, Any]]], container: Container
) -> Iterator[bytes]:
    """Records of any shape (a mixture can hold tasks, dialogues and plain text side by side).
    For Parquet, a first pass unifies the schema of every batch, so no column is lost."""
    if container == "jsonl":
        yield from (_line(r) for r in records())
    elif container == "json":
        yield from _json_array(records())
    else:
        schemas = [pa.Table.from_pylist(batch).schema for batch in _batches(records())]
        schema = pa.unify_schemas(schemas) if schemas else pa.schema([])
        yield from _parquet(records(), schema)


def _batches(records: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for record in records:
        batch.append(record)
        if len(batch) >= _BATCH * 4:
            yield batch
            batch = []
    if batch:
        yield batch
