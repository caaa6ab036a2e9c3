"""Previews and live cost: a job's progress turned into the pure projection's sample."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from app.config import DEFAULT_BACKEND, get_settings
from app.errors import InvalidInput, NotFound
from app.models import Job, JobStatus
from app.schemas import Progress
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.projection import (
    LiveCost,
    Projection,
    Sample,
    TokenSpread,
    Usage,
    billed_cost,
    project,
)
from app.services.backend_load import current_loads
from app.services.call_totals import PurposeCalls, total
from app.services.keys import Caller


def prices(options: GenerationOptions) -> tuple[float, float] | None:
    """The job's backend's prices per million prompt and completion tokens, if configured."""
    backend = get_settings().backend(options.backend)
    if backend is None or backend.prompt_price_per_mtok is None:
        return None
    return backend.prompt_price_per_mtok, backend.completion_price_per_mtok or 0.0


def check_followed(followed: Job | None, preview_id: uuid.UUID, caller: Caller) -> None:
    """A job may follow only a preview of its own key."""
    if followed is None or not caller.owns(followed.owner_key_id):
        raise NotFound(f"from_preview: no preview {preview_id}")
    if followed.preview_target is None:
        raise InvalidInput(f"from_preview: job {preview_id} is not a preview")


def wall_seconds(job: Job) -> float | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return max((job.finished_at - job.started_at).total_seconds(), 0.0)


def sample_of(progress: Progress, *, finished: bool, wall_s: float | None = None) -> Sample:
    """The job's counts as a sample: step-1 usage apart from the rest. While the job runs, the
    other requests are spread over the instructions whose instances are in."""
    accepted = progress.instructions_accepted + progress.instructions_over_target
    return Sample(
        step1=Usage(
            progress.step1_requests,
            progress.step1_prompt_tokens,
            progress.step1_completion_tokens,
        ),
        other=Usage(
            progress.llm_requests - progress.step1_requests,
            progress.prompt_tokens - progress.step1_prompt_tokens,
            progress.completion_tokens - progress.step1_completion_tokens,
        ),
        candidates=accepted + sum(progress.instructions_rejected.values()),
        accepted=accepted,
        settled=progress.instructions_accepted
        if finished
        else progress.instructions_with_instances,
        rejected=dict(progress.instructions_rejected),
        wall_seconds=wall_s,
    )


def with_calls(sample: Sample, calls: Sequence[PurposeCalls], options: GenerationOptions) -> Sample:
    """The sample with what the job's calls per purpose add: each purpose's spread of tokens
    per request, the mean latency of the requests the backend answered, and the backend's
    concurrency limit and no-load latency as its workers measure them now."""
    spreads = {
        c.purpose: TokenSpread(
            c.requests,
            _sd(c.requests, c.prompt_tokens, c.prompt_squares),
            _sd(c.requests, c.completion_tokens, c.completion_squares),
        )
        for c in calls
    }
    every = total(calls)
    load = None if options.batch_api else current_loads().get(options.backend or DEFAULT_BACKEND)
    return replace(
        sample,
        spreads=spreads,
        latency_s=every.answered_latency_ms / every.answered / 1000 if every.answered else None,
        concurrency=load.limit if load is not None else None,
        baseline_s=load.baseline_s if load is not None and load.baseline_s else None,
    )


def _sd(n: int, total: float, squares: float) -> float:
    """The sample standard deviation from a count, a sum and a sum of squares."""
    if n <= 1:
        return 0.0
    return math.sqrt(max(squares - total * total / n, 0.0) / (n - 1))


def preview_projection(
    job: Job, progress: Progress, calls: Sequence[PurposeCalls], options: GenerationOptions
) -> Projection | None:
    """A preview's projection for its full target, once it has succeeded."""
    if job.preview_target is None or job.status != JobStatus.SUCCEEDED:
        return None
    sample = sample_of(progress, finished=True, wall_s=wall_seconds(job))
    sample = with_calls(sample, calls, options)
    return project(sample, job.preview_target, prices=prices(options))


def live_cost(
    job: Job, progress: Progress, calls: Sequence[PurposeCalls], options: GenerationOptions
) -> LiveCost:
    """Tokens and cost so far; while the job runs, its projected total (from its own yield)."""
    price = prices(options)
    projected = None
    if job.status == JobStatus.RUNNING:
        running_s = None
        if job.started_at is not None:
            running_s = (datetime.now(UTC) - job.started_at).total_seconds()
        sample = sample_of(progress, finished=False, wall_s=running_s)
        sample = with_calls(sample, calls, options)
        projected = project(sample, job.num_instructions, prices=price)
    return LiveCost(
        prompt_tokens=progress.prompt_tokens,
        completion_tokens=progress.completion_tokens,
        cache_hits=progress.cache_hits,
        cost=billed_cost(
            progress.prompt_tokens,
            progress.completion_tokens,
            (progress.cached_prompt_tokens, progress.cached_completion_tokens),
            price,
        ),
        projected=projected,
    )
