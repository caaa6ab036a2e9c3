"""Jobs: create, poll, list, cancel, rerun, extend, download."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.admission import produced_in_threads
from app.api import job_reads
from app.api.seed_sets import seed_errors
from app.deps import CallerDep, CredentialsDep, SessionDep
from app.errors import ERROR_RESPONSES, InvalidInput, ServiceUnavailable
from app.models import Job
from app.schemas import (
    ItemPage,
    JobCreate,
    JobExtend,
    JobPage,
    JobPreviewCreate,
    JobRead,
    JobRecipe,
)
from app.selfinstruct.formats import ExportFormat
from app.selfinstruct.report import QualityReport
from app.selfinstruct.seeds import NO_NUL_PATTERN, SeedFileError, validate_seed_tasks
from app.services import extend as extend_service
from app.services import jobs as job_service
from app.services import report as report_service
from app.services.browse import browse
from app.services.dataset_card import dataset_zip
from app.services.export import Container, examples_jsonl, export_stream, in_chunks
from app.services.keys import Caller
from app.services.queue import enqueue_round
from app.services.seed_sets import create_seed_set

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# What every route that queues a new job (create, preview, rerun) declares.
_STARTS_A_JOB: dict[str, Any] = {
    "status_code": status.HTTP_202_ACCEPTED,
    "response_model": JobRead,
    "responses": {
        **ERROR_RESPONSES,
        429: {"description": "Too many active or recent jobs for this key"},
        503: {"description": "Task broker unavailable"},
    },
}


@router.post("", **_STARTS_A_JOB)
def create_job(
    body: JobCreate, session: SessionDep, caller: CallerDep, response: Response
) -> JobRead:
    """Start a Self-Instruct job; poll the `Location` for its progress."""
    job = job_service.create_job(
        session,
        seed_set_id=_seed_set_id(session, body, caller),
        num_instructions=body.num_instructions,
        options=body.options,
        caller=caller,
        from_preview=body.from_preview,
    )
    return _start(session, job, response)


@router.post("/preview", **_STARTS_A_JOB)
def preview_job(
    body: JobPreviewCreate, session: SessionDep, caller: CallerDep, response: Response
) -> JobRead:
    """Run the job's recipe for `preview_instructions` instructions, as a job of its own; once
    it has succeeded its status has a `projection` of requests, tokens, cost and wall time for
    `num_instructions`. Name it in the full job's `from_preview`."""
    job = job_service.create_job(
        session,
        seed_set_id=_seed_set_id(session, body, caller),
        num_instructions=min(body.preview_instructions, body.num_instructions),
        options=body.options,
        caller=caller,
        preview_target=body.num_instructions,
    )
    return _start(session, job, response)


@router.api_route("/preview", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def preview_is_post_only() -> None:
    """Without this, GET /v1/jobs/preview would reach GET /v1/jobs/{job_id} and be a 422 about
    a malformed job id rather than a 405 naming the method."""
    raise HTTPException(status.HTTP_405_METHOD_NOT_ALLOWED, "Method Not Allowed")


def _seed_set_id(session: Session, body: JobRecipe, caller: Caller) -> uuid.UUID:
    """The request's seed set: the one it names, or its inline tasks stored as a new one."""
    if body.seed_tasks is None:
        assert body.seed_set_id is not None
        return body.seed_set_id
    try:
        tasks = validate_seed_tasks(body.seed_tasks)
    except SeedFileError as exc:
        raise InvalidInput(f"seed_tasks: {exc}", errors=seed_errors(exc)) from exc
    return create_seed_set(session, name="inline", tasks=tasks, caller=caller).id


@router.post("/{job_id}/rerun", **_STARTS_A_JOB)
def rerun_job(
    job_id: uuid.UUID, session: SessionDep, caller: CallerDep, response: Response
) -> JobRead:
    """Start a new job with this job's recipe (seed set, target, options, RNG seed)."""
    job = job_service.rerun_job(session, job_id, caller)
    return _start(session, job, response)


def _start(session: Session, job: Job, response: Response) -> JobRead:
    session.commit()  # the worker must find the job before it gets the message
    try:
        enqueue_round(job.id, 1, owner=job.owner_key_id)
    except Exception as exc:
        log.warning("could not enqueue %s: %s", job.id, exc)
        # The exception text names the broker's address: server configuration, not for tenants.
        job_service.fail_unqueued(
            session, job, f"could not reach the task broker ({type(exc).__name__})"
        )
        session.commit()
        raise ServiceUnavailable("the task broker is unavailable; the job was not started") from exc
    job_reads.forget_job(job.id, job.owner_key_id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_service.job_read(session, job)


@router.post(
    "/{job_id}/extend",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses={
        **ERROR_RESPONSES,
        409: {"description": "The job has not succeeded, or is already running again"},
        429: {"description": "Too many active jobs for this key"},
        503: {"description": "Task broker unavailable"},
    },
)
def extend_job(
    job_id: uuid.UUID, body: JobExtend, session: SessionDep, caller: CallerDep, response: Response
) -> JobRead:
    """Grow a succeeded job to `num_instructions` accepted instructions in total: it runs on
    with its pool, ROUGE-L index, options and RNG stream; nothing it has is generated again."""
    extension = extend_service.extend_job(
        session, job_id, num_instructions=body.num_instructions, caller=caller
    )
    job = extension.job
    session.commit()  # the worker must find the job running before it gets the message
    try:
        enqueue_round(job.id, extension.first_round, owner=job.owner_key_id)
    except Exception as exc:
        log.warning("could not enqueue the extension of %s: %s", job.id, exc)
        extend_service.undo_extension(session, extension)
        session.commit()
        raise ServiceUnavailable(
            "the task broker is unavailable; the job was not extended"
        ) from exc
    job_reads.forget_job(job.id, job.owner_key_id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_service.job_read(session, job)


@router.get("", response_model=JobPage)
async def list_jobs(
    credentials: CredentialsDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Response:
    """Jobs, newest first (each as `GET /v1/jobs/{id}` shows it)."""
    return await job_reads.job_page(credentials, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobRead, responses=ERROR_RESPONSES)
async def read_job(job_id: uuid.UUID, credentials: CredentialsDep) -> Response:
    """Status and progress; counters are at most a second old while the job runs."""
    return await job_reads.job_status(job_id, credentials)


@router.get("/{job_id}/report", response_model=QualityReport, responses=ERROR_RESPONSES)
def read_report(
    job_id: uuid.UUID,
    session: SessionDep,
    caller: CallerDep,
    sample: Annotated[
        int,
        Query(ge=10, le=100_000, description="Accepted instructions measured for ROUGE and verbs."),
    ] = 2000,
) -> QualityReport:
    """The paper's analysis of this job so far: rejections by reason with examples, ROUGE-L to
    the nearest seed and earlier instruction, root verbs and their objects, lengths, usage."""
    job = job_service.get_job(session, job_id, caller)
    return report_service.job_report(session, job, sample_size=sample)


@router.get(
    "/{job_id}/items",
    response_model=ItemPage,
    response_model_exclude_unset=True,  # each view's rows keep only the fields it has
    responses=ERROR_RESPONSES,
)
def browse_items(
    job_id: uuid.UUID,
    session: SessionDep,
    caller: CallerDep,
    view: Literal["accepted", "rejected_instructions", "rejected_instances"] = "accepted",
    q: Annotated[
        str | None, Query(max_length=200, pattern=NO_NUL_PATTERN, description="Text to search for.")
    ] = None,
    reason: Annotated[str | None, Query(max_length=64, pattern=NO_NUL_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, object]:
    """A page of accepted examples or of rejections (with their reason), for browsing."""
    job = job_service.get_job(session, job_id, caller)
    return browse(session, job.id, view, query=q, reason=reason, limit=limit, offset=offset)


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    responses={**ERROR_RESPONSES, 409: {"description": "Already finished"}},
)
def cancel_job(job_id: uuid.UUID, session: SessionDep, caller: CallerDep) -> JobRead:
    """Stop a job; what it has generated so far stays downloadable."""
    job = job_service.cancel_job(session, job_id, caller)
    job_reads.forget_job(job.id, job.owner_key_id)
    return job_service.job_read(session, job)


@router.get(
    "/{job_id}/examples.jsonl",
    response_class=StreamingResponse,
    responses={
        **ERROR_RESPONSES,
        200: {"content": {"application/x-ndjson": {}}, "description": "One example per line"},
    },
)
def download_examples(
    job_id: uuid.UUID,
    session: SessionDep,
    caller: CallerDep,
    include: Annotated[Literal["accepted", "rejected"], Query()] = "accepted",
) -> StreamingResponse:
    """Accepted examples (also while the job runs); `include=rejected` appends the rejected
    instructions and instances with their reason codes."""
    job = job_service.get_job(session, job_id, caller)
    return StreamingResponse(
        produced_in_threads(
            in_chunks(examples_jsonl(job.id, include_rejected=include == "rejected"))
        ),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{job.id}.jsonl"'},
    )


MEDIA_TYPES = {
    "jsonl": ("application/x-ndjson", "jsonl"),
    "json": ("application/json", "json"),
    "parquet": ("application/vnd.apache.parquet", "parquet"),
}


@router.get(
    "/{job_id}/export",
    response_class=StreamingResponse,
    responses={
        **ERROR_RESPONSES,
        200: {
            "content": {media: {} for media, _ in MEDIA_TYPES.values()},
            "description": "The job's examples in a training format",
        },
    },
)
def export_examples(
    job_id: uuid.UUID,
    session: SessionDep,
    caller: CallerDep,
    format: Annotated[ExportFormat, Query(description="Record layout.")] = ExportFormat.ALPACA,
    container: Annotated[Container, Query(description="File type.")] = "jsonl",
    system_prompt: Annotated[
        str | None, Query(max_length=4000, description="System message for chat formats.")
    ] = None,
) -> StreamingResponse:
    """Accepted examples as Alpaca, OpenAI chat fine-tuning, ShareGPT, prompt/completion pairs
    (varied templates, deduplicated) or the raw record; as JSONL, a JSON array, or Parquet."""
    job = job_service.get_job(session, job_id, caller)
    media, extension = MEDIA_TYPES[container]
    return StreamingResponse(
        produced_in_threads(
            in_chunks(export_stream(job.id, format, container, system_prompt=system_prompt))
        ),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{job.id}.{format}.{extension}"'},
    )


@router.get(
    "/{job_id}/dataset.zip",
    response_class=StreamingResponse,
    responses={
        **ERROR_RESPONSES,
        200: {
            "content": {"application/zip": {}},
            "description": "README.md (a Hugging Face dataset card) and data/train.<container>",
        },
    },
)
def download_dataset(
    job_id: uuid.UUID,
    session: SessionDep,
    caller: CallerDep,
    format: Annotated[ExportFormat, Query(description="Record layout.")] = ExportFormat.RAW,
    container: Annotated[Container, Query(description="Data file type.")] = "jsonl",
    system_prompt: Annotated[
        str | None, Query(max_length=4000, description="System message for chat formats.")
    ] = None,
) -> StreamingResponse:
    """The job as a dataset folder, zipped: its accepted examples (also while it runs, as the
    other downloads) and a dataset card the Hugging Face Hub reads (license, size, recipe,
    counts, the report's main figures). Unzipped, it loads with `datasets.load_dataset(dir)`."""
    job = job_service.get_job(session, job_id, caller)
    return StreamingResponse(
        produced_in_threads(
            in_chunks(dataset_zip(job.id, format, container, system_prompt=system_prompt))
        ),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{job.id}.dataset.zip"'},
    )
