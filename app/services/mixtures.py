"""Mixtures: check a recipe against what the caller owns, build it in a worker, stream stages.

Building is idempotent: a redelivered task replaces whatever an interrupted run stored, in one
transaction, so a killed worker never leaves half a mixture behind.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from app.db import paged_rows, session_scope
from app.errors import InvalidInput, NotFound
from app.llm.base import LLMClient, LLMError, LLMRequest
from app.models import Job, Mixture, MixtureRecord, MixtureStatus
from app.schemas import MixtureRead
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.parsing import parse_inversion_completion
from app.selfinstruct.prompts import build_inversion_prompt
from app.selfinstruct.recipes import Recipe, RecipeError, SourceKind, build_mixture
from app.services import response_cache
from app.services.datasets import get_dataset, iter_dataset_records
from app.services.export import Container, iter_examples, records_stream
from app.services.jobs import check_backend, get_job
from app.services.keys import ANYONE, Caller

_BATCH = 1000


class LLMInverseWriter:
    """Asks the LLM for the instruction of the reverse task; a failed or unparseable answer
    (None), or one that fails the instruction filters, falls back to a template (the core
    decides), so an LLM outage never fails a mixture."""

    def __init__(self, client: LLMClient, options: GenerationOptions) -> None:
        self.client = client
        self.temperature = options.temperature
        self.usage = {"requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
                      "cache_hits": 0}  # fmt: skip
        self._lock = threading.Lock()

    def __call__(self, example: Mapping[str, Any]) -> str | None:
        request = LLMRequest(
            prompt=build_inversion_prompt(str(example["instruction"])),
            max_tokens=64,
            temperature=self.temperature,
            stop=("\n",),
        )
        with self._lock:
            self.usage["requests"] += 1
        try:
            response = self.client.complete(request)
        except LLMError:
            with self._lock:
                self.usage["errors"] += 1
            return None
        with self._lock:
            self.usage["cache_hits"] += int(response.cached)
            self.usage["prompt_tokens"] += response.prompt_tokens
            self.usage["completion_tokens"] += response.completion_tokens
        return parse_inversion_completion(response.text)


def resolve_sources(
    session: Session, recipe: Recipe, caller: Caller = ANYONE
) -> dict[str, SourceKind]:
    """Each source's kind; every job and dataset must exist and belong to the caller."""
    kinds: dict[str, SourceKind] = {}
    for n, source in enumerate(recipe.sources):
        where = f"recipe.sources[{n}]"
        if source.path is not None:
            raise InvalidInput(f"{where}.path: the API reads jobs and datasets, not files")
        if source.job_id is not None:
            try:
                get_job(session, source.job_id, caller)
            except NotFound as exc:
                raise InvalidInput(f"{where}.job_id: {exc.detail}") from exc
            kinds[source.name] = "instructions"
            continue
        assert source.dataset_id is not None
        try:
            dataset = get_dataset(session, source.dataset_id, caller)
        except NotFound as exc:
            raise InvalidInput(f"{where}.dataset_id: {exc.detail}") from exc
        if source.kind is not None and source.kind != dataset.kind:
            raise InvalidInput(
                f"{where}.kind: {source.kind!r}, but the dataset holds {dataset.kind!r} records"
            )
        kinds[source.name] = dataset.kind  # type: ignore[assignment]
    return kinds


def create_mixture(session: Session, recipe: Recipe, caller: Caller = ANYONE) -> Mixture:
    resolve_sources(session, recipe, caller)
    if recipe.invert_writer == "llm":
        check_backend(recipe.llm, "recipe.llm")
    mixture = Mixture(
        recipe=recipe.model_dump(mode="json"),
        status=MixtureStatus.QUEUED,
        owner_key_id=caller.key_id,
    )
    session.add(mixture)
    session.flush()
    return mixture


def get_mixture(session: Session, mixture_id: uuid.UUID, caller: Caller = ANYONE) -> Mixture:
    mixture = session.get(Mixture, mixture_id)
    if mixture is None or not caller.owns(mixture.owner_key_id):
        raise NotFound(f"mixture {mixture_id} not found")
    return mixture


def list_mixtures(
    session: Session, *, limit: int, offset: int, caller: Caller = ANYONE
) -> tuple[list[Mixture], int]:
    """The caller's mixtures, newest first, one page of them, and how many there are."""
    mine = caller.scope(Mixture.owner_key_id)
    total = session.scalar(select(func.count()).select_from(Mixture).where(mine)) or 0
    mixtures = session.scalars(
        select(Mixture)
        .where(mine)
        .order_by(Mixture.created_at.desc(), Mixture.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(mixtures), total


def _load(session: Session, recipe: Recipe) -> dict[str, list[dict[str, Any]]]:
    loaded: dict[str, list[dict[str, Any]]] = {}
    for source in recipe.sources:
        if source.job_id is not None:
            loaded[source.name] = list(iter_examples(source.job_id))
        elif source.dataset_id is not None:
            loaded[source.name] = list(iter_dataset_records(session, source.dataset_id))
    return loaded


def _cached(
    client: LLMClient, options: GenerationOptions, owner_key_id: uuid.UUID | None
) -> LLMClient:
    """The client answering from the response cache of the mixture's key, as a job's does: a
    rebuilt mixture pays once for each inversion."""
    if options.response_cache == "off":
        return client
    return response_cache.CachingClient(client, options, owner_key_id)  # type: ignore[return-value]


def build(mixture_id: uuid.UUID, llm_for: Callable[[GenerationOptions], LLMClient]) -> None:
    """Build the mixture and store its records; a recipe that does not fit its sources fails
    the mixture with the reason."""
    with session_scope() as session:
        mixture = session.get(Mixture, mixture_id)
        if mixture is None or mixture.status == MixtureStatus.SUCCEEDED:
            return
        mixture.status = MixtureStatus.RUNNING
        recipe = Recipe.model_validate(mixture.recipe)
        owner_key_id = mixture.owner_key_id
        owner = Caller(key_id=owner_key_id) if owner_key_id else ANYONE
        try:
            kinds = resolve_sources(session, recipe, owner)
        except InvalidInput as exc:
            _finish(mixture, error=exc.detail)
            return
        loaded = _load(session, recipe)
    writer = (
        LLMInverseWriter(_cached(llm_for(recipe.llm), recipe.llm, owner_key_id), recipe.llm)
        if recipe.invert_writer == "llm"
        else None
    )
    try:
        result = build_mixture(recipe, loaded, kinds, write_inverse=writer)
    except RecipeError as exc:
        with session_scope() as session:
            _finish(session.get_one(Mixture, mixture_id), error=str(exc))
        return
    result.manifest["jobs"] = _job_states(recipe)
    if writer is not None:
        result.manifest["llm_usage"] = writer.usage
    with session_scope() as session:
        session.execute(delete(MixtureRecord).where(MixtureRecord.mixture_id == mixture_id))
        for stage_no, stage in enumerate(result.stages, start=1):
            rows = [
                {
                    "mixture_id": mixture_id,
                    "stage": stage_no,
                    "position": position,
                    "source": entry.source,
                    "inverted": entry.inverted,
                    "plain_text": entry.plain_text,
                    "record": entry.record,
                }
                for position, entry in enumerate(stage)
            ]
            for start in range(0, len(rows), _BATCH):
                session.execute(insert(MixtureRecord), rows[start : start + _BATCH])
        mixture = session.get_one(Mixture, mixture_id)
        mixture.manifest = result.manifest
        _finish(mixture)


def _job_states(recipe: Recipe) -> dict[str, str]:
    """Which state each source job was in when its examples were taken."""
    with session_scope() as session:
        return {
            s.name: session.get_one(Job, s.job_id).status
            for s in recipe.sources
            if s.job_id is not None
        }


def _finish(mixture: Mixture, *, error: str | None = None) -> None:
    mixture.status = MixtureStatus.FAILED if error else MixtureStatus.SUCCEEDED
    mixture.error = error
    mixture.finished_at = datetime.now(UTC)


def fail(mixture_id: uuid.UUID, message: str) -> None:
    with session_scope() as session:
        mixture = session.get(Mixture, mixture_id)
        if mixture is not None and mixture.status != MixtureStatus.SUCCEEDED:
            _finish(mixture, error=message)


def stage_count(mixture: Mixture) -> int:
    """Stages are listed in the manifest, which is written with the records."""
    return len(mixture.manifest["stages"]) if mixture.manifest else 0


def mixture_read(mixture: Mixture) -> MixtureRead:
    return MixtureRead(
        id=mixture.id,
        status=mixture.status,  # type: ignore[arg-type]
        recipe=Recipe.model_validate(mixture.recipe),
        manifest=mixture.manifest,
        stages=stage_count(mixture),
        error=mixture.error,
        created_at=mixture.created_at,
        finished_at=mixture.finished_at,
    )


def iter_stage(mixture_id: uuid.UUID, stage: int) -> Iterator[dict[str, Any]]:
    stmt = select(MixtureRecord.record).where(
        MixtureRecord.mixture_id == mixture_id, MixtureRecord.stage == stage
    )
    for (record,) in paged_rows(stmt, (MixtureRecord.position,), _BATCH):
        yield record


def stage_stream(mixture_id: uuid.UUID, stage: int, container: Container) -> Iterator[bytes]:
    return records_stream(lambda: iter_stage(mixture_id, stage), container)
