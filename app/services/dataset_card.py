"""A job as a Hugging Face dataset folder (README.md card + data/train.*), streamed as a zip.

The data file is written first, so the card counts the rows the file really holds (a running
job keeps adding some); then the card is built from the job, its seed set, progress and report.
The zip goes out as it is written (no seeking: zipfile then writes data descriptors), in
constant memory whatever the job's size.
"""

from __future__ import annotations

import uuid
import zipfile
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.data import DEFAULT_SEED_LICENSE, load_default_seed_tasks
from app.db import session_scope
from app.errors import NotFound
from app.models import Job, JobStatus, SeedTaskRow
from app.selfinstruct.dataset_card import (
    CardData,
    DataFile,
    card_languages,
    choose_license,
    render_card,
    seed_source_licenses,
)
from app.selfinstruct.formats import ExportFormat
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.seeds import seed_set_hash
from app.services.export import Container, encode_records, iter_records
from app.services.jobs import job_progress
from app.services.report import job_report

CARD_NAME = "README.md"
SPLIT = "train"


def data_path(container: Container) -> str:
    return f"data/{SPLIT}.{container}"


def card_data(
    session: Session, job: Job, *, data_files: list[DataFile], fmt: ExportFormat
) -> CardData:
    """Everything the card says about `job`; names its backend and model, never their URLs."""
    options = GenerationOptions.model_validate(job.options)
    progress = job_progress(session, job, options)
    sources = list(
        session.scalars(
            select(SeedTaskRow.source).where(SeedTaskRow.seed_set_id == job.seed_set_id)
        )
    )
    bundled = job.seed_set.content_hash == seed_set_hash(load_default_seed_tasks())
    backend_name = options.backend or "default"
    backend = get_settings().backend(options.backend)
    return CardData(
        job_id=str(job.id),
        pretty_name=f"Self-Instruct: {job.seed_set.name} (job {str(job.id)[:8]})",
        status=job.status,
        stopped_reason=job.stopped_reason,
        finished=JobStatus(job.status).finished,
        data_files=data_files,
        record_format=fmt.value,
        license=choose_license(
            seed_source_licenses(sources),
            bundled_seeds=bundled,
            bundled_license=DEFAULT_SEED_LICENSE,
        ),
        languages=card_languages(sources),
        mode=options.mode,
        backend=backend_name,
        model=options.model or (backend.default_model if backend else None),
        rng_seed=job.rng_seed,
        template_version=job.template_version,
        num_instructions=job.num_instructions,
        seed_set_name=job.seed_set.name,
        seed_tasks=job.seed_set.task_count,
        seed_set_hash=job.seed_set.content_hash,
        changed_options=options.model_dump(mode="json", exclude_defaults=True),
        llm_requests=progress.llm_requests,
        llm_errors=progress.llm_errors,
        prompt_tokens=progress.prompt_tokens,
        completion_tokens=progress.completion_tokens,
        instructions_accepted=progress.instructions_accepted,
        instructions_rejected=progress.instructions_rejected,
        instructions_over_target=progress.instructions_over_target,
        instances_accepted=progress.instances_accepted,
        instances_rejected=progress.instances_rejected,
        report=job_report(session, job).model_dump(mode="json"),
    )


class _Pipe:
    """A write-only, unseekable file for zipfile: what it is given is taken out as it comes."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def _counted(records: Iterator[dict[str, Any]], counter: list[int]) -> Iterator[dict[str, Any]]:
    for record in records:
        counter[0] += 1
        yield record


def dataset_zip(
    job_id: uuid.UUID,
    fmt: ExportFormat = ExportFormat.RAW,
    container: Container = "jsonl",
    *,
    system_prompt: str | None = None,
) -> Iterator[bytes]:
    """The dataset folder as a zip: `data/train.<container>` with the job's examples in `fmt`,
    and README.md, the card `datasets.load_dataset(folder)` reads to find the split."""
    pipe = _Pipe()
    rows = [0]
    path = data_path(container)
    # Parquet is compressed already; JSON text shrinks about fivefold.
    compression = zipfile.ZIP_STORED if container == "parquet" else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(pipe, mode="w", compression=compression) as archive:  # type: ignore[arg-type]
        records = _counted(iter_records(job_id, fmt, system_prompt=system_prompt), rows)
        # force_zip64: the file's size is not known before it is written, and may pass 4 GiB.
        with archive.open(path, mode="w", force_zip64=True) as member:
            for chunk in encode_records(job_id, fmt, container, records):
                member.write(chunk)
                if data := pipe.take():
                    yield data
        with session_scope() as session:
            job = session.get(Job, job_id)
            if job is None:  # the route found it; no route deletes a job
                raise NotFound(f"job {job_id} not found")
            card = card_data(session, job, data_files=[DataFile(SPLIT, path, rows[0])], fmt=fmt)
        archive.writestr(CARD_NAME, render_card(card), compress_type=zipfile.ZIP_DEFLATED)
    yield pipe.take()
