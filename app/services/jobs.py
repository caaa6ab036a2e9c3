"""Job lifecycle as seen by the API: create, read with progress, list, cancel."""

from __future__ import annotations

import secrets
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, selectinload

from app.config import DEFAULT_BACKEND, get_settings
from app.errors import Conflict, InvalidInput, NotFound, TooManyRequests
from app.llm.base import parse_attempt_errors
from app.models import (
    Instance,
    Instruction,
    Job,
    JobStatus,
    JobSummary,
    LLMCall,
)
from app.schemas import BackendLoadRead, JobRead, Progress
from app.selfinstruct.judges import Outcomes, judge_warnings
from app.selfinstruct.options import GenerationOptions, judge_options
from app.selfinstruct.projection import STEP1
from app.selfinstruct.report import per_accepted
from app.selfinstruct.reproducibility import template_version
from app.selfinstruct.types import SURPLUS_REASONS
from app.services import preview
from app.services.backend_load import current_loads
from app.services.balance import balance_progress, mix_so_far
from app.services.call_totals import PurposeCalls, calls_by_purpose, total
from app.services.keys import ANYONE, Caller
from app.services.seed_sets import get_seed_set, load_seed_tasks


def create_job(
    session: Session,
    *,
    seed_set_id: uuid.UUID,
    num_instructions: int,
    options: GenerationOptions,
    caller: Caller = ANYONE,
    rerun_of: uuid.UUID | None = None,
    preview_target: int | None = None,
    from_preview: uuid.UUID | None = None,
) -> Job:
    """A queued job; with `preview_target`, a preview of a job of that many instructions."""
    get_seed_set(session, seed_set_id, caller)
    if from_preview is not None:
        preview.check_followed(session.get(Job, from_preview), from_preview, caller)
    check_backend(options)
    for name, step in (options.judges.steps() if options.judges else {}).items():
        check_backend(judge_options(options, step), f"options.judges.{name}")
    _check_rate_limits(session, caller)
    tasks = load_seed_tasks(session, seed_set_id)
    if options.classification_only and not any(t.is_classification for t in tasks):
        raise InvalidInput("options.classification_only: the seed set has no classification tasks")
    if options.mode != "paper" and not any(t.instances for t in tasks):
        raise InvalidInput(
            f"options.mode: {options.mode} mode shows seed tasks with their instances, and "
            "no task of this seed set has one"
        )
    job = Job(
        seed_set_id=seed_set_id,
        num_instructions=num_instructions,
        options=options.model_dump(mode="json"),
        rng_seed=options.seed if options.seed is not None else secrets.randbelow(2**31),
        status=JobStatus.QUEUED,
        owner_key_id=caller.key_id,
        template_version=template_version(),
        rerun_of_id=rerun_of,
        preview_target=preview_target,
        from_preview_id=from_preview,
    )
    session.add(job)
    session.flush()
    return job


def rerun_job(session: Session, job_id: uuid.UUID, caller: Caller = ANYONE) -> Job:
    """A new job with the recipe of `job_id`: seed set, target, options and the RNG seed it drew.

    The new job gets the same accepted set when the backend answers each prompt the same way
    (greedy decoding or a seeded server) and the prompt templates have not changed since; its
    status shows both template versions so a difference is visible.
    """
    original = get_job(session, job_id, caller)
    options = GenerationOptions.model_validate(original.options).model_copy(
        update={"seed": original.rng_seed}
    )
    return create_job(
        session,
        seed_set_id=original.seed_set_id,
        num_instructions=original.num_instructions,
        options=options,
        caller=caller,
        rerun_of=original.id,
        preview_target=original.preview_target,
    )


def fail_unqueued(session: Session, job: Job, message: str) -> None:
    job.status = JobStatus.FAILED
    job.error = message
    job.finished_at = datetime.now(UTC)
    session.flush()


def check_backend(options: GenerationOptions, field: str = "options") -> None:
    """The job's backend must be configured on this server, and its model allowed there."""
    settings = get_settings()
    if settings.embedded and settings.openai_base_url is None and options.backend is None:
        return  # the embedded local model starts with the stack
    backend = settings.backend(options.backend)
    if backend is None:
        names = ", ".join(settings.backend_names()) or "none"
        raise InvalidInput(
            f"{field}.backend: no backend named {options.backend or 'default'!r} "
            f"(configured: {names})"
        )
    if backend.models and options.model is not None and options.model not in backend.models:
        raise InvalidInput(
            f"{field}.model: {options.model!r} is not allowed on backend "
            f"{options.backend or 'default'!r} (allowed: {', '.join(backend.models)})"
        )


def _check_rate_limits(session: Session, caller: Caller) -> None:
    """Per key: how many jobs may be active at once, and how many may start per minute."""
    check_active_jobs(session, caller)
    settings = get_settings()
    since = datetime.now(UTC) - timedelta(minutes=1)
    recent = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(caller.scope(Job.owner_key_id), Job.created_at >= since)
    )
    if (recent or 0) >= settings.max_jobs_per_minute_per_key:
        raise TooManyRequests(
            f"more than {settings.max_jobs_per_minute_per_key} jobs started in the last minute "
            "for this key; try again shortly",
            retry_after_s=60,
        )


def check_active_jobs(session: Session, caller: Caller) -> None:
    """A job that starts running (new or extended) must fit the key's limit of active jobs."""
    settings = get_settings()
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(
            caller.scope(Job.owner_key_id),
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
        )
    )
    if (active or 0) >= settings.max_active_jobs_per_key:
        raise TooManyRequests(
            f"{active} jobs are queued or running for this key (limit "
            f"{settings.max_active_jobs_per_key}); wait for one to finish or cancel one",
            retry_after_s=30,
        )


def get_job(session: Session, job_id: uuid.UUID, caller: Caller = ANYONE) -> Job:
    job = session.get(Job, job_id)
    if job is None or not caller.owns(job.owner_key_id):
        raise NotFound(f"job {job_id} not found")
    return job


def list_jobs(
    session: Session, *, limit: int, offset: int, caller: Caller = ANYONE
) -> tuple[list[Job], int]:
    mine = caller.scope(Job.owner_key_id)
    total = session.scalar(select(func.count()).select_from(Job).where(mine)) or 0
    jobs = session.scalars(
        select(Job)
        .where(mine)
        .options(selectinload(Job.seed_set))
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    # Into the identity map in one query, so job_read finds each job's summary without another.
    session.scalars(select(JobSummary).where(JobSummary.job_id.in_([j.id for j in jobs]))).all()
    return list(jobs), total


def cancel_job(session: Session, job_id: uuid.UUID, caller: Caller = ANYONE) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or not caller.owns(job.owner_key_id):
        raise NotFound(f"job {job_id} not found")
    if JobStatus(job.status).finished:
        if job.status == JobStatus.CANCELLED:
            return job
        raise Conflict(f"job {job_id} has already finished ({job.status})")
    job.status = JobStatus.CANCELLED
    job.finished_at = datetime.now(UTC)
    job.stopped_reason = "cancelled"
    session.flush()
    return job


# While a job runs, its summary is recomputed at most this often (cluster-wide); a poller sees
# counters at most this old. After the job ends, tasks that were in flight may still land rows
# for up to about an LLM timeout, so the summary is kept fresh that long, then frozen.
SUMMARY_MAX_AGE_S = 1.0
SUMMARY_SETTLE_S = 150.0


def job_progress(session: Session, job: Job, options: GenerationOptions | None = None) -> Progress:
    return job_usage(session, job, options)[0]


def job_usage(
    session: Session, job: Job, options: GenerationOptions | None = None
) -> tuple[Progress, list[PurposeCalls]]:
    """The job's counters and its LLM calls per purpose, from its summary row when fresh;
    otherwise one request recomputes it (the others keep serving the previous one meanwhile
    rather than queue behind the scan)."""
    now = datetime.now(UTC)
    summary = session.get(JobSummary, job.id)
    if summary is None or not _summary_fresh(summary, job, now):
        summary = _refresh_summary(session, job, options, summary, now)
    progress = Progress.model_validate(summary.progress)
    # Kept on the job row by the pipeline: always current, and free to read.
    progress.rounds_completed = job.rounds_completed
    progress.dedupe_seconds = round(job.dedupe_s or 0.0, 3)
    if summary.calls is None:  # a summary stored before it kept the calls
        return progress, calls_by_purpose(session, job.id)
    return progress, [PurposeCalls(**c) for c in summary.calls]


def _summary_fresh(summary: JobSummary, job: Job, now: datetime) -> bool:
    if job.finished_at is not None:
        if summary.computed_at < job.finished_at:
            return False  # counted before the end: the last rows may be missing
        if summary.computed_at >= job.finished_at + timedelta(seconds=SUMMARY_SETTLE_S):
            return True
    return summary.computed_at >= now - timedelta(seconds=SUMMARY_MAX_AGE_S)


def _refresh_summary(
    session: Session,
    job: Job,
    options: GenerationOptions | None,
    summary: JobSummary | None,
    now: datetime,
) -> JobSummary:
    if summary is not None:
        # SKIP LOCKED: whoever holds the row is recomputing it; serve what is there meanwhile.
        locked = session.scalar(
            select(JobSummary)
            .where(JobSummary.job_id == job.id)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
        if locked is None:
            return summary
    calls = calls_by_purpose(session, job.id)
    progress = count_progress(session, job, options, calls).model_dump(mode="json")
    stored_calls = [asdict(c) for c in calls]
    values = {"progress": progress, "calls": stored_calls, "computed_at": now}
    upsert = _dialect_insert(session)(JobSummary).values(job_id=job.id, **values)
    session.execute(upsert.on_conflict_do_update(index_elements=[JobSummary.job_id], set_=values))
    stored = session.get(JobSummary, job.id, populate_existing=True)
    assert stored is not None
    return stored


def _dialect_insert(session: Session):  # type: ignore[no-untyped-def]
    """INSERT with ON CONFLICT for the session's database (both dialects have one)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql_insert
    return sqlite_insert


def count_progress(
    session: Session,
    job: Job,
    options: GenerationOptions | None = None,
    calls: list[PurposeCalls] | None = None,
) -> Progress:
    """Counters aggregated from the stored rows: exact, and as costly as the job is large."""
    counted = session.execute(
        select(Instruction.variant, Instruction.accepted, Instruction.reason, func.count())
        .where(Instruction.job_id == job.id)
        .group_by(Instruction.variant, Instruction.accepted, Instruction.reason)
    ).all()
    instr = _summed((ok, reason, n) for variant, ok, reason, n in counted if not variant)
    reformulated = _summed((ok, reason, n) for variant, ok, reason, n in counted if variant)
    inst = session.execute(
        select(Instance.accepted, Instance.reason, func.count())
        .where(Instance.job_id == job.id)
        .group_by(Instance.accepted, Instance.reason)
    ).all()
    # Instructions with a stored instance: one given up (a budget stop, failed requests) is
    # settled too, but has none.
    with_instances = session.scalar(
        select(func.count(func.distinct(Instance.instruction_id)))
        .join(Instruction, Instance.instruction_id == Instruction.id)
        .where(
            Instance.job_id == job.id,
            Instruction.accepted.is_(True),
            Instruction.variant == 0,
        )
    )
    calls = calls_by_purpose(session, job.id) if calls is None else calls
    every, step1 = total(calls), total(calls, STEP1)
    failed_attempts: Counter[str] = Counter()
    for text, n in session.execute(
        select(LLMCall.attempt_errors, func.count())
        .where(LLMCall.job_id == job.id, LLMCall.attempt_errors.is_not(None))
        .group_by(LLMCall.attempt_errors)
    ):
        for kind, count in parse_attempt_errors(text).items():
            failed_attempts[kind] += count * n
    accepted = sum(n for ok, _, n in instr if ok)
    tokens = every.prompt_tokens + every.completion_tokens
    rejected = {str(r): n for ok, r, n in instr if not ok and r not in SURPLUS_REASONS}
    over_target = sum(n for ok, r, n in instr if not ok and r in SURPLUS_REASONS)
    instances_accepted = sum(n for ok, _, n in inst if ok)
    instances_rejected = {str(r): n for ok, r, n in inst if not ok}
    options = options or GenerationOptions.model_validate(job.options)
    targets = options.balance
    balance = (
        None
        if targets is None
        else balance_progress(targets, mix_so_far(session, job.id), rejected)
    )
    return Progress(
        rounds_completed=job.rounds_completed,
        instructions_accepted=accepted,
        instructions_rejected=rejected,
        instructions_over_target=over_target,
        reformulations_accepted=sum(n for ok, _, n in reformulated if ok),
        reformulations_rejected={str(r): n for ok, r, n in reformulated if not ok},
        balance=balance,
        instructions_with_instances=with_instances or 0,
        instances_accepted=instances_accepted,
        instances_rejected=instances_rejected,
        llm_requests=every.requests,
        llm_errors=every.errors,
        llm_attempts=every.attempts,
        llm_retries=every.attempts - (every.requests - every.cache_hits),
        cache_hits=every.cache_hits,
        llm_failed_attempts=dict(sorted(failed_attempts.items())),
        prompt_tokens=every.prompt_tokens,
        completion_tokens=every.completion_tokens,
        cached_prompt_tokens=every.cached_prompt_tokens,
        cached_completion_tokens=every.cached_completion_tokens,
        step1_requests=step1.requests,
        step1_prompt_tokens=step1.prompt_tokens,
        step1_completion_tokens=step1.completion_tokens,
        tokens_per_accepted_instruction=per_accepted(tokens, accepted),
        tokens_per_accepted_example=per_accepted(tokens, instances_accepted),
        dedupe_seconds=round(job.dedupe_s or 0.0, 3),
        warnings=judge_warnings(
            options.judges.steps() if options.judges else (),
            Outcomes(accepted + over_target, rejected),
            Outcomes(instances_accepted, instances_rejected),
            finished=JobStatus(job.status).finished,
        ),
    )


def _summed(rows: Iterable[tuple[bool, str | None, int]]) -> list[tuple[bool, str | None, int]]:
    """Counts per (accepted, reason), summed over the variants they were grouped by."""
    totals: Counter[tuple[bool, str | None]] = Counter()
    for ok, reason, n in rows:
        totals[ok, reason] += n
    return [(ok, reason, n) for (ok, reason), n in totals.items()]


def _backend_load(job: Job, options: GenerationOptions) -> BackendLoadRead | None:
    if job.status != JobStatus.RUNNING or options.batch_api:
        return None
    name = options.backend or DEFAULT_BACKEND
    load = current_loads().get(name)
    if load is None:
        return None
    return BackendLoadRead(
        backend=name,
        in_flight=load.in_flight,
        concurrency_limit=load.limit,
        waiting=load.waiting,
    )


def job_read(session: Session, job: Job) -> JobRead:
    options = GenerationOptions.model_validate(job.options)
    progress, calls = job_usage(session, job, options)
    return JobRead(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]
        seed_set_id=job.seed_set_id,
        num_instructions=job.num_instructions,
        options=options,
        changed_options=options.model_dump(mode="json", exclude_defaults=True),
        rng_seed=job.rng_seed,
        seed_set_hash=job.seed_set.content_hash,
        template_version=job.template_version,
        rerun_of=job.rerun_of_id,
        kind="preview" if job.preview_target is not None else "job",
        preview_target=job.preview_target,
        from_preview=job.from_preview_id,
        progress=progress,
        cost=preview.live_cost(job, progress, calls, options),
        projection=preview.preview_projection(job, progress, calls, options),
        backend_load=_backend_load(job, options),
        error=job.error,
        stopped_reason=job.stopped_reason,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
