"""One Settings object read from the environment; conventional names where they exist."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "selfinstruct"


DEFAULT_BACKEND = "default"


class BackendConfig(BaseModel):
    """An LLM server jobs may use, by name. Jobs choose a name, never a URL."""

    base_url: str
    api_key: SecretStr = SecretStr("not-needed")
    models: list[str] = Field(
        default_factory=list, description="Models jobs may ask for; empty: any (server default)."
    )
    default_model: str | None = None
    prompt_price_per_mtok: float | None = Field(
        None, ge=0, description="Price of a million prompt tokens, for cost in job reports."
    )
    completion_price_per_mtok: float | None = Field(
        None, ge=0, description="Price of a million completion tokens."
    )
    requests_per_minute: float | None = Field(
        None, gt=0, description="Requests per minute to this backend, shared by all workers."
    )
    tokens_per_minute: float | None = Field(
        None, gt=0, description="Tokens (prompt + max_tokens, settled to usage) per minute."
    )
    max_concurrency: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="Most requests in flight to this backend, shared by all workers; the limit "
        "adapts below it (none: at most 1024).",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SELFINSTRUCT_", extra="ignore")

    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "SELFINSTRUCT_DATABASE_URL")
    )
    celery_broker_url: str | None = Field(
        None, validation_alias=AliasChoices("CELERY_BROKER_URL", "SELFINSTRUCT_CELERY_BROKER_URL")
    )
    openai_base_url: str | None = Field(
        None, validation_alias=AliasChoices("OPENAI_BASE_URL", "SELFINSTRUCT_OPENAI_BASE_URL")
    )
    openai_api_key: SecretStr = Field(
        SecretStr("not-needed"),
        validation_alias=AliasChoices("OPENAI_API_KEY", "SELFINSTRUCT_OPENAI_API_KEY"),
    )
    model: str | None = Field(None, description="Default model (SELFINSTRUCT_MODEL).")
    prompt_price_per_mtok: float | None = Field(
        None, ge=0, description="The default backend's price per million prompt tokens."
    )
    completion_price_per_mtok: float | None = Field(
        None, ge=0, description="The default backend's price per million completion tokens."
    )
    llm_requests_per_minute: float | None = Field(
        None, gt=0, description="The default backend's request limit, shared by all workers."
    )
    llm_tokens_per_minute: float | None = Field(
        None, gt=0, description="The default backend's token limit, shared by all workers."
    )
    llm_max_concurrency: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="The default backend's cap on requests in flight, shared by all workers "
        "(none: the adaptive limit stays at most 1024).",
    )
    llm_initial_concurrency: int = Field(
        16,
        ge=1,
        le=65536,
        description="Requests in flight each backend starts with before its limit adapts.",
    )
    backends: dict[str, BackendConfig] = Field(
        default_factory=dict,
        description='More LLM servers by name, as JSON: {"name": {"base_url", "api_key", "models"}}.',
    )
    data_dir: Path = Field(default_factory=_default_data_dir)

    auth: Literal["auto", "required", "off"] = Field(
        "auto",
        description="API keys: auto = required unless embedded; off is refused off loopback.",
    )
    max_active_jobs_per_key: int = Field(20, description="Queued or running jobs per API key.")
    max_jobs_per_minute_per_key: int = Field(60, description="Job creations per key per minute.")

    host: str = "127.0.0.1"
    port: int = 8000
    api_url: str | None = Field(None, description="Where the CLI client finds the API.")
    api_key: SecretStr | None = Field(None, description="The CLI client's API key.")

    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text or as JSON objects (one per line), with job ids."
    )
    llm_timeout_s: float = 120.0
    llm_max_retries: int = 4
    task_max_retries: int = Field(
        8, description="Times a pipeline task is retried while the LLM backend is unavailable."
    )
    task_retry_backoff_s: float = Field(
        2.0, description="First retry delay; it doubles per retry, capped at 60 s, plus jitter."
    )
    llm_unreachable_timeout_s: float = Field(
        900.0, description="A job fails when every LLM request has failed for this long."
    )
    job_lease_s: float = Field(
        30.0,
        gt=0,
        description="A claim on a round or instance batch not renewed for this long belongs to a "
        "dead task, and a job with no heartbeat this long has lost its messages: the sweeper "
        "sends their work again.",
    )
    heartbeat_interval_s: float = Field(
        5.0,
        gt=0,
        description="How often a worker process renews the claims of the tasks it runs "
        "(at most a third of job_lease_s).",
    )
    sweep_interval_s: float = Field(
        5.0, gt=0, description="How often workers look for stalled work."
    )
    llm_concurrency: int = Field(
        256,
        ge=1,
        le=1024,
        description="The most LLM requests one task keeps in flight: a cap, since each "
        "backend's adaptive limit (shared by every worker) decides how many go out.",
    )
    batch_poll_interval_s: float = Field(
        60.0, gt=0, description="How often a job using the Batch API checks its batch."
    )
    instructions_per_instance_task: int = Field(
        64,
        ge=1,
        le=1024,
        description="Accepted instructions an instance-generation task starts with: it takes "
        "more of its job's pending instructions as its own finish, for up to 30 s, and grows "
        "past this many while the backend has free slots (up to llm_concurrency). Each "
        "instruction sends two requests or more, one at a time.",
    )
    db_pool_size: int = Field(
        10, ge=1, le=200, description="Pooled database connections per process."
    )
    db_max_overflow: int = Field(
        10, ge=0, le=200, description="Connections a process may open beyond its pool."
    )
    api_db_wait_s: float = Field(
        10.0,
        gt=0,
        description="How long an API request may wait for a database slot before a 503.",
    )
    api_db_slots: int = Field(
        4,
        ge=1,
        le=200,
        description="API requests using the database at once (never more than its pool allows).",
    )
    api_stream_threads: int = Field(
        2, ge=1, le=64, description="Threads making download chunks at once, per API process."
    )
    api_requests_per_pass: int = Field(
        12,
        ge=1,
        le=10_000,
        description="GET requests the API's event loop starts per pass; more wait their turn "
        "in arrival order. Bounds how long /healthz (which never waits) takes under load.",
    )
    api_max_queued: int = Field(
        10_000, ge=1, description="GET requests that may wait their turn before fast 503s."
    )
    api_queue_wait_s: float = Field(
        20.0, gt=0, description="How long a GET request may wait its turn before a 503."
    )
    api_max_waiting: int = Field(
        2000, ge=1, description="Requests that may wait for a database slot before 503s."
    )
    max_seed_upload_bytes: int = 10 * 1024 * 1024
    max_seed_line_bytes: int = 256 * 1024
    max_seed_tasks: int = 10_000
    max_dataset_upload_bytes: int = Field(
        200 * 1024 * 1024, description="Largest dataset upload for mixtures."
    )
    max_dataset_records: int = Field(1_000_000, description="Most records in one dataset.")
    max_dataset_line_bytes: int = Field(
        8 * 1024 * 1024, description="Longest line (one record) of a dataset upload."
    )
    max_json_body_bytes: int = Field(
        16 * 1024 * 1024, description="Largest request body other than a file upload."
    )

    @model_validator(mode="after")
    def _heartbeat_well_under_lease(self) -> Settings:
        """Several missed heartbeats in a row, not one slow beat, must be what ends a claim."""
        if self.heartbeat_interval_s * 3 > self.job_lease_s:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s}) must be at most a third of "
                f"job_lease_s ({self.job_lease_s})"
            )
        return self

    @property
    def embedded(self) -> bool:
        """No external database or broker configured: run on SQLite and a server-less broker."""
        return self.database_url is None and self.celery_broker_url is None

    def backend(self, name: str | None) -> BackendConfig | None:
        """A configured backend; "default" is OPENAI_BASE_URL with OPENAI_API_KEY."""
        name = name or DEFAULT_BACKEND
        if name in self.backends:
            return self.backends[name]
        if name == DEFAULT_BACKEND and self.openai_base_url:
            return BackendConfig(
                base_url=self.openai_base_url,
                api_key=self.openai_api_key,
                default_model=self.model,
                prompt_price_per_mtok=self.prompt_price_per_mtok,
                completion_price_per_mtok=self.completion_price_per_mtok,
                requests_per_minute=self.llm_requests_per_minute,
                tokens_per_minute=self.llm_tokens_per_minute,
                max_concurrency=self.llm_max_concurrency,
            )
        return None

    def backend_names(self) -> list[str]:
        names = [DEFAULT_BACKEND] if self.openai_base_url else []
        return names + sorted(n for n in self.backends if n != DEFAULT_BACKEND)

    @property
    def keys_required(self) -> bool:
        return self.auth == "required" or (self.auth == "auto" and not self.embedded)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'selfinstruct.sqlite3'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.celery_broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.sqlite3'}"

    @property
    def resolved_api_url(self) -> str:
        return self.api_url or f"http://{self.host}:{self.port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
