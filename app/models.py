"""Database schema (SQLAlchemy 2 ORM). Portable types only, so SQLite and PostgreSQL share it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    false,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None and value.tzinfo else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATUSES


# The statuses a job never leaves; also what SQL filters on finished jobs select.
FINISHED_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class InstancesState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class ApiKey(Base):
    """A bearer token for the API. Only its SHA-256 is stored; the token is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class SeedSet(Base):
    __tablename__ = "seed_sets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    content_hash: Mapped[str] = mapped_column(String(64))
    task_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    tasks: Mapped[list[SeedTaskRow]] = relationship(
        back_populates="seed_set", order_by="SeedTaskRow.position", cascade="all, delete-orphan"
    )


class SeedTaskRow(Base):
    __tablename__ = "seed_tasks"
    __table_args__ = (UniqueConstraint("seed_set_id", "task_id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    seed_set_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("seed_sets.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    instruction: Mapped[str] = mapped_column(Text)
    instances: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    is_classification: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    seed_set: Mapped[SeedSet] = relationship(back_populates="tasks")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    seed_set_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("seed_sets.id"), index=True)
    seed_set: Mapped[SeedSet] = relationship()  # loaded on access (FOR UPDATE rules out a join)
    owner_key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    num_instructions: Mapped[int] = mapped_column(Integer)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    rng_seed: Mapped[int] = mapped_column(Integer)
    rounds_completed: Mapped[int] = mapped_column(Integer, default=0)
    rounds_without_progress: Mapped[int] = mapped_column(Integer, default=0)
    dedupe_s: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # Reproducibility: the prompt templates' version when the job was created, and the job
    # whose recipe this one repeats (POST /v1/jobs/{id}/rerun).
    template_version: Mapped[str | None] = mapped_column(String(32))
    rerun_of_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    # A preview (POST /v1/jobs/preview) runs the recipe for a few instructions and projects the
    # cost of this full target; a job started after one names it (the report compares them).
    preview_target: Mapped[int | None] = mapped_column(Integer)
    from_preview_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    instructions_complete: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    stopped_reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # A step of the job touched it last at this time; the sweeper re-sends work for jobs whose
    # heartbeat is older than the lease (a killed worker, a lost broker message).
    heartbeat_at: Mapped[datetime | None] = mapped_column(index=True)
    # Since when every LLM request of the job has failed; cleared by the next success.
    llm_unavailable_since: Mapped[datetime | None] = mapped_column()
    # The task working on the job's next round (or its scheduled retry) holds this claim; its
    # worker process extends it while the task runs (app/services/leases.py).
    round_claim_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    round_claimed_until: Mapped[datetime | None] = mapped_column()
    round_claimed_by: Mapped[str | None] = mapped_column(String(200))  # host:pid


class JobSummary(Base):
    """A job's progress counters as last computed, so that status reads cost an indexed read
    instead of aggregating the job's rows: recomputed at most about once a second per job
    (across every API process) while it runs, and once more after it has finished."""

    __tablename__ = "job_summaries"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    progress: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The job's LLM calls per purpose (app/services/call_totals.py), for the live projection.
    calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    computed_at: Mapped[datetime] = mapped_column()


class Instruction(Base):
    """A generated instruction, accepted or rejected; (job, round, slot) makes a round idempotent.

    Unnatural-Instructions mode adds reformulations of a core (variant 1, 2, ...) in the core's
    round and slot, linked by core_id; jobs' targets, progress and dedupe count cores (variant 0).
    """

    __tablename__ = "instructions"
    __table_args__ = (
        UniqueConstraint("job_id", "round", "slot", "variant"),
        Index("ix_instructions_job_accepted", "job_id", "accepted"),
        # Candidates whose highest ROUGE-L is still to be stored (the worker died between the
        # round's commit and its score write): few rows, found without a scan of the job.
        Index(
            "ix_instructions_unscored",
            "job_id",
            postgresql_where=sql_text("pool_items IS NOT NULL AND max_rouge IS NULL"),
            sqlite_where=sql_text("pool_items IS NOT NULL AND max_rouge IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer)
    slot: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    accepted: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(String(64))
    max_rouge: Mapped[float | None] = mapped_column(Float)
    nearest: Mapped[str | None] = mapped_column(Text)
    # The size of the ROUGE-L pool (seeds first, then accepted instructions in pool order) the
    # candidate was compared with: its score is searched in that prefix, after the commit.
    pool_items: Mapped[int | None] = mapped_column(Integer)
    judge_note: Mapped[str | None] = mapped_column(Text)  # the instruction judge's reason
    variant: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    core_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("instructions.id", ondelete="CASCADE"), index=True
    )
    # Unnatural mode: the core's input and constraints, {"input": ..., "constraints": ...}.
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    is_classification: Mapped[bool | None] = mapped_column(Boolean)
    instances_state: Mapped[str | None] = mapped_column(String(16))
    # The instance task generating this instruction's instances holds this claim while it runs.
    claim_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    claimed_until: Mapped[datetime | None] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (
        UniqueConstraint("instruction_id", "position"),
        Index("ix_instances_job_accepted", "job_id", "accepted"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    instruction_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("instructions.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    input: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text)
    accepted: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(String(64))
    # The LLM judges' grades (1-3), when the job ran them.
    answer_score: Mapped[int | None] = mapped_column(Integer)
    faithfulness_score: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LLMCall(Base):
    __tablename__ = "llm_calls"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(32))
    round: Mapped[int | None] = mapped_column(Integer)
    ok: Mapped[bool] = mapped_column(Boolean)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # HTTP attempts the call took (retries are the rest), and why those that failed did:
    # "http_429=2,http_5xx=1" (kinds of app.llm.base.ATTEMPT_ERROR_KINDS, sorted; NULL for none).
    # A string rather than JSON, so that counts group in SQL on every database.
    attempts: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    attempt_errors: Mapped[str | None] = mapped_column(String(200))
    # SHA-256 of the exact prompt text: with the job's template version, seed and options it
    # identifies every call without storing megabytes of repeated prompt text.
    prompt_sha256: Mapped[str | None] = mapped_column(String(64))
    # Answered from the response cache (app/services/response_cache.py): no attempt was sent.
    cached: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ResponseCacheEntry(Base):
    """A backend's answer to a request, kept so that an identical request of any job of the
    same key is answered from here (app/services/response_cache.py)."""

    __tablename__ = "llm_response_cache"

    # SHA-256 of the owner and the request as sent (backend, model, endpoint, body).
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    text: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class LLMAnswer(Base):
    """A step-1 answer kept until its round is stored: rounds are stored in order, so a round
    answered while an earlier one is still out waits, and a worker killed meanwhile would lose
    it. The task that sends the round again takes these answers instead of asking again (when
    the prompt is the same, as a round's prompts are whenever it is planned)."""

    __tablename__ = "llm_answers"
    __table_args__ = (UniqueConstraint("job_id", "round", "position"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)  # the request's place in its round
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # as llm_calls
    attempt_errors: Mapped[str | None] = mapped_column(String(200))
    # Already in llm_calls (its round was dropped unstored): taken again, it is not counted again.
    recorded: Mapped[bool] = mapped_column(Boolean, default=False)
    cached: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )  # as llm_calls
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LLMBatch(Base):
    """One Batch API submission of a job's step: found again by its key after a restart, its
    answers kept once the batch is done so a repeated step does not download them again."""

    __tablename__ = "llm_batches"
    __table_args__ = (UniqueConstraint("job_id", "key"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(100))
    request_count: Mapped[int] = mapped_column(Integer)
    remote_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32), default="submitting")
    answers: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()


class Dataset(Base):
    """An uploaded mixture source: task-formatted examples, chat dialogues or plain text."""

    __tablename__ = "datasets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    record_count: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetRecord(Base):
    __tablename__ = "dataset_records"
    __table_args__ = (UniqueConstraint("dataset_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)


class MixtureStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Mixture(Base):
    """A training mixture built by a worker from a recipe; its records are kept per stage."""

    __tablename__ = "mixtures"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=MixtureStatus.QUEUED)
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON)
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column()


class MixtureRecord(Base):
    __tablename__ = "mixture_records"
    __table_args__ = (UniqueConstraint("mixture_id", "stage", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mixture_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("mixtures.id", ondelete="CASCADE"))
    stage: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(100))
    inverted: Mapped[bool] = mapped_column(Boolean, default=False)
    plain_text: Mapped[bool] = mapped_column(Boolean, default=False)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
