"""HTTP request and response models (never ORM classes)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.projection import LiveCost, Projection
from app.selfinstruct.recipes import Recipe
from app.selfinstruct.seeds import SeedTaskModel
from app.selfinstruct.untrusted import JsonNumbers

JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class SeedSetRead(BaseModel):
    id: uuid.UUID
    name: str
    task_count: int
    classification_count: int
    content_hash: str
    created_at: datetime


def _contains(**properties: object) -> dict[str, object]:
    """Schema: the seed_tasks list has an item with these properties."""
    return {
        "properties": {
            "seed_tasks": {"contains": {"required": list(properties), "properties": properties}}
        }
    }


def _options(**properties: object) -> dict[str, object]:
    return {"properties": {"options": {"properties": properties}}}


# The validators' rules in the JSON schema: exactly one seed source (given and not null), and
# inline seed tasks that suit the options (`create_job` checks an uploaded set the same way, but
# its content is not part of the request).
_ONE_SEED_SOURCE = {
    "oneOf": [
        {
            "required": ["seed_set_id"],
            "properties": {"seed_set_id": {"type": "string"}, "seed_tasks": {"type": "null"}},
        },
        {
            "required": ["seed_tasks"],
            "properties": {
                "seed_tasks": {"type": "array", "minItems": 1},
                "seed_set_id": {"type": "null"},
            },
            "allOf": [
                {
                    "anyOf": [
                        _options(classification_only={"const": False}),
                        _contains(is_classification={"const": True}),
                    ]
                },
                {
                    "anyOf": [
                        _options(mode={"const": "paper"}),
                        _contains(instances={"type": "array", "minItems": 1}),
                    ]
                },
            ],
        },
    ]
}


MAX_INSTRUCTIONS = 1_000_000  # the most accepted instructions one job may aim for


class JobRecipe(JsonNumbers):
    """A job's recipe: an uploaded seed set or inline seed tasks (exactly one of them), a
    target and options. Both a job and a preview start from one."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_ONE_SEED_SOURCE)

    seed_set_id: uuid.UUID | None = Field(None, description="A seed set from POST /v1/seed-sets.")
    seed_tasks: list[SeedTaskModel] | None = Field(
        None,
        description="Inline seed tasks in the Self-Instruct seed format (ids unique).",
        max_length=10_000,
    )
    num_instructions: int = Field(
        ...,
        ge=1,
        le=MAX_INSTRUCTIONS,
        description="Target number of accepted machine instructions.",
    )
    options: GenerationOptions = Field(default_factory=GenerationOptions)

    @model_validator(mode="after")
    def _one_seed_source(self) -> JobRecipe:
        if (self.seed_set_id is None) == (self.seed_tasks is None):
            raise ValueError("give exactly one of seed_set_id or seed_tasks")
        return self


class JobCreate(JobRecipe):
    """Start a Self-Instruct job."""

    from_preview: uuid.UUID | None = Field(
        None,
        description="The preview (POST /v1/jobs/preview) this job follows: its report then "
        "shows the preview's projection beside what the job used.",
    )


class JobExtend(JsonNumbers):
    """Grow a succeeded job to a higher target, keeping everything it has."""

    model_config = ConfigDict(extra="forbid")

    num_instructions: int = Field(
        ...,
        ge=1,
        le=MAX_INSTRUCTIONS,
        description="The new total target of accepted instructions: more than the job has.",
    )


PREVIEW_INSTRUCTIONS_MAX = 200


class JobPreviewCreate(JobRecipe):
    """A job request to preview: the recipe runs for `preview_instructions` instructions, and
    its status projects the cost of `num_instructions`."""

    preview_instructions: int = Field(
        20,
        ge=1,
        le=PREVIEW_INSTRUCTIONS_MAX,
        description="Accepted instructions the preview generates (at most num_instructions).",
    )


class ShareProgress(BaseModel):
    target: float | None = Field(None, description="The job's target share (null: none set).")
    actual: float | None = Field(None, description="The share so far among decided tasks.")
    known: int = Field(description="Accepted tasks decided so far (the share's denominator).")


class BalanceProgress(BaseModel):
    classification_share: ShareProgress
    input_share: ShareProgress
    max_per_verb: int | None = None
    rejected_at_verb_cap: int = 0


class Progress(BaseModel):
    rounds_completed: int
    instructions_accepted: int
    instructions_rejected: dict[str, int] = Field(
        description="Rejected candidates per reason (candidates past the target are not here)."
    )
    instructions_over_target: int = Field(
        0,
        description="Candidates that passed every filter after the target was reached: "
        "surplus, not rejections.",
    )
    instructions_with_instances: int = Field(
        description="Accepted instructions with at least one stored instance (accepted or "
        "rejected); those given up after a budget stop or failed requests have none."
    )
    instances_accepted: int
    instances_rejected: dict[str, int]
    llm_requests: int = Field(description="LLM requests recorded, each counted once.")
    llm_errors: int = Field(description="Requests that failed after all their retries.")
    llm_attempts: int = Field(
        0, description="HTTP attempts the requests took: one each, plus every retry."
    )
    llm_retries: int = Field(0, description="Attempts that were retries of a failed one.")
    cache_hits: int = Field(
        0,
        description="Requests answered from the response cache (options.response_cache) "
        "instead of the backend: in llm_requests and the token counts, but never sent, so no "
        "attempt of theirs is in llm_attempts.",
    )
    llm_failed_attempts: dict[str, int] = Field(
        default_factory=dict,
        description="Failed attempts (retried or last) by kind: http_429, http_5xx, "
        "http_4xx, timeout, connection, invalid_answer, other.",
    )
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = Field(0, description="Of prompt_tokens, in cache hits (free).")
    cached_completion_tokens: int = Field(0, description="Of completion_tokens, in cache hits.")
    step1_requests: int = Field(0, description="Of llm_requests, step-1 (instruction) requests.")
    step1_prompt_tokens: int = 0
    step1_completion_tokens: int = 0
    tokens_per_accepted_instruction: float | None = Field(
        None,
        description="Prompt + completion tokens spent per accepted instruction so far (Unnatural "
        "mode: per core; reformulations are not counted).",
    )
    tokens_per_accepted_example: float | None = Field(
        None,
        description="Prompt + completion tokens spent per accepted example (a record of the "
        "export) so far; as the report's `usage.tokens_per_accepted_example`.",
    )
    reformulations_accepted: int = Field(
        0, description="Unnatural mode: rephrased instructions kept, each its own example."
    )
    reformulations_rejected: dict[str, int] = Field(default_factory=dict)
    balance: BalanceProgress | None = Field(
        None, description="Targets against actual shares, for jobs with options.balance."
    )
    dedupe_seconds: float = Field(
        0.0, description="Time spent on the ROUGE-L near-duplicate filter (step 1) so far."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What the numbers alone do not say, e.g. a judge that rejected nearly "
        "everything it judged.",
    )


class BackendLoadRead(BaseModel):
    """What a job's LLM backend is doing now, across every job and worker that uses it."""

    backend: str = Field(description="The backend's configured name.")
    in_flight: int = Field(description="Requests in flight to it now.")
    concurrency_limit: int = Field(
        description="Requests it may have in flight: adapts to the latency and refusals it sees."
    )
    waiting: int = Field(description="Requests waiting for one of its slots.")


class JobRead(BaseModel):
    id: uuid.UUID
    status: JobStatusName
    seed_set_id: uuid.UUID
    num_instructions: int
    options: GenerationOptions
    changed_options: dict[str, Any] = Field(
        default_factory=dict,
        description="The options that differ from their defaults (nested the same way): what "
        "sets this job apart from a default one, at a glance.",
    )
    rng_seed: int = Field(description="The RNG seed the job drew (options.seed when given).")
    seed_set_hash: str = Field(description="Content hash of the seed set: its exact version.")
    template_version: str | None = Field(
        None, description="Fingerprint of the prompt templates the job was created with."
    )
    rerun_of: uuid.UUID | None = Field(None, description="The job this one repeats, if a rerun.")
    kind: Literal["job", "preview"] = Field("job", description="A preview projects a full job.")
    preview_target: int | None = Field(
        None, description="A preview's full target, the one `projection` is for."
    )
    from_preview: uuid.UUID | None = Field(None, description="The preview this job follows.")
    progress: Progress
    cost: LiveCost = Field(
        description="Tokens and cost so far, and (while the job runs) the projected total."
    )
    projection: Projection | None = Field(
        None, description="A finished preview's projection for its full target."
    )
    backend_load: BackendLoadRead | None = Field(
        None, description="The load of the job's LLM backend, while the job runs."
    )
    error: str | None = None
    stopped_reason: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobPage(BaseModel):
    items: list[JobRead]
    total: int
    limit: int
    offset: int


class ItemRead(BaseModel):
    """One row of `GET /v1/jobs/{id}/items`; a field is there only in the views that have it."""

    id: str = Field(description="The instance's id (the instruction's in rejected_instructions).")
    instruction: str
    input: str | None = Field(None, description="Instance views only.")
    output: str | None = Field(None, description="Instance views only.")
    reason: str | None = Field(None, description="Why it was rejected (null: accepted).")
    is_classification: bool | None = Field(None, description="Instance views only.")
    max_rouge: float | None = Field(None, description="rejected_instructions only.")
    nearest: str | None = Field(None, description="rejected_instructions only.")
    instruction_id: str | None = Field(None, description="Instance views only.")
    variant: int | None = Field(
        None,
        description="Instance views only: 0 for a generated instruction (an Unnatural core), "
        "n > 0 for the core's n-th rephrasing.",
    )
    core_id: str | None = Field(
        None, description="Instance views only: the core's instruction id, for a rephrasing."
    )
    answer_score: int | None = Field(None, description="The answer judge's grade (1-3), if run.")
    faithfulness_score: int | None = Field(
        None, description="The faithfulness judge's grade (1-3), if run."
    )


class ItemPage(BaseModel):
    items: list[ItemRead]
    total: int


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: bool
    broker: bool


class DatasetRead(BaseModel):
    id: uuid.UUID
    name: str
    kind: Literal["instructions", "chat", "text"]
    record_count: int
    content_hash: str
    created_at: datetime


MixtureStatusName = Literal["queued", "running", "succeeded", "failed"]


class MixtureRead(BaseModel):
    id: uuid.UUID
    status: MixtureStatusName
    recipe: Recipe
    manifest: dict[str, Any] | None = Field(
        None, description="Counts per source, stage and task, the seed and the recipe."
    )
    stages: int = Field(0, description="Stages to download: /v1/mixtures/{id}/stages/{n}.")
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None


class MixturePage(BaseModel):
    items: list[MixtureRead]
    total: int
    limit: int
    offset: int
