"""The response cache: a job's request identical to one answered before for the same API key
(backend, model, endpoint, prompt and every sampling parameter) is answered from the database
instead of the backend. A rerun of a finished job, a resumed job or a larger run of a preview's
recipe then pays once for each answer.

Every LLM client a job's steps get comes from `for_job`, which wraps the process's client for
the job's key; the policy is the job's `response_cache` option (by default only requests at
temperature 0, whose answers a backend repeats anyway). No seed is part of the key: the
backends are not sent one. Lookups and stores are coalesced per event loop, one indexed read
or one INSERT per burst of answers. The cache is an optimisation: a failed read is a miss, a
failed store is logged, and neither fails the request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.config import DEFAULT_BACKEND
from app.db import session_scope
from app.llm.aio import run_sync
from app.llm.base import LLMClient, LLMError, LLMRequest, LLMResponse, complete_each
from app.llm.openai_compat import Endpoint, request_body
from app.models import Job, ResponseCacheEntry
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.sanitize import completion_char_cap
from app.services.coalesce import CoalescingReader, CoalescingWriter
from app.services.keys import Caller

log = logging.getLogger(__name__)

Factory = Callable[[GenerationOptions], LLMClient]
_READ_CHUNK = 500  # digests per IN (...) list
_MAX_COUNT = 2**31 - 1  # an INTEGER column


@dataclass(frozen=True, slots=True)
class Entry:
    digest: str
    owner_key_id: uuid.UUID | None
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


def cacheable(policy: str, request: LLMRequest) -> bool:
    return policy == "all" or (policy == "temperature_0" and request.temperature == 0)


def request_digest(
    owner_key_id: uuid.UUID | None,
    backend: str,
    model: str,
    endpoint: Endpoint,
    request: LLMRequest,
) -> str:
    """The key of a request: its owner and everything sent (the body carries every sampling
    parameter, so one added to the body is part of the key without a change here)."""
    canonical = {
        "owner": str(owner_key_id) if owner_key_id else None,
        "backend": backend,
        "endpoint": endpoint,
        "body": request_body(request, model, endpoint),
    }
    text = json.dumps(canonical, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def storable(response: LLMResponse, request: LLMRequest) -> bool:
    """Whether the columns hold the answer as it came: one with NULs or lone surrogates, or
    longer than any parser reads, is not kept (an identical request is sent again)."""
    text, finish = response.text, response.finish_reason or ""
    if "\x00" in text + finish or len(finish) > 32:
        return False
    if len(text) > completion_char_cap(request.max_tokens):
        return False
    try:
        (text + finish).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class CachingClient:
    """An LLM client answering from the cache of one key before asking `inner`."""

    def __init__(
        self, inner: LLMClient, options: GenerationOptions, owner_key_id: uuid.UUID | None
    ) -> None:
        self.inner = inner
        self.policy = options.response_cache
        self.owner_key_id = owner_key_id
        self.backend = options.backend or DEFAULT_BACKEND
        self.endpoint: Endpoint = options.endpoint
        self._model = options.model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def complete(self, request: LLMRequest) -> LLMResponse:
        return run_sync(self.acomplete(request))

    def complete_many(
        self, requests: Sequence[LLMRequest], concurrency: int
    ) -> list[LLMResponse | LLMError]:
        return run_sync(self._acomplete_many(requests, concurrency))

    async def _acomplete_many(
        self, requests: Sequence[LLMRequest], concurrency: int
    ) -> list[LLMResponse | LLMError]:
        return await complete_each(self.acomplete, requests, concurrency)

    async def acomplete(self, request: LLMRequest) -> LLMResponse:
        if not cacheable(self.policy, request):
            return await self.inner.acomplete(request)
        model = await self._resolved_model()
        if model is None:  # the listing failed: the request itself says why
            return await self.inner.acomplete(request)
        digest = request_digest(self.owner_key_id, self.backend, model, self.endpoint, request)
        hit = await _lookup(digest)
        if hit is not None:
            return LLMResponse(
                text=hit.text,
                finish_reason=hit.finish_reason,
                prompt_tokens=hit.prompt_tokens,
                completion_tokens=hit.completion_tokens,
                latency_s=0.0,
                cached=True,
            )
        response = await self.inner.acomplete(request)
        if storable(response, request):
            await _store(entry(digest, self.owner_key_id, response))
        return response

    async def _resolved_model(self) -> str | None:
        """The model the request goes to: named, or the one the backend serves."""
        if self._model is None:
            resolve = getattr(self.inner, "resolve_model", None)
            try:
                self._model = await resolve() if resolve else str(getattr(self.inner, "model", ""))
            except LLMError:
                return None
        return self._model


def entry(digest: str, owner_key_id: uuid.UUID | None, response: LLMResponse) -> Entry:
    return Entry(
        digest,
        owner_key_id,
        response.text,
        response.finish_reason,
        min(max(int(response.prompt_tokens), 0), _MAX_COUNT),
        min(max(int(response.completion_tokens), 0), _MAX_COUNT),
    )


class JobClients:
    """A job's LLM factory: the clients of `factory`, answering from the cache of the job's key
    (read once, on first use) unless the job's options turn the cache off."""

    def __init__(self, job_id: uuid.UUID, factory: Factory) -> None:
        self.job_id = job_id
        self.factory = factory
        self._owner: tuple[uuid.UUID | None] | None = None
        self._lock = threading.Lock()

    def __call__(self, options: GenerationOptions) -> LLMClient:
        client = self.factory(options)
        if options.response_cache == "off":
            return client
        return CachingClient(client, options, self._owner_key_id())

    def _owner_key_id(self) -> uuid.UUID | None:
        with self._lock:
            if self._owner is None:
                with session_scope() as session:
                    owner = session.scalar(select(Job.owner_key_id).where(Job.id == self.job_id))
                self._owner = (owner,)
            return self._owner[0]


def for_job(job_id: uuid.UUID, factory: Factory) -> Factory:
    """`factory` for the job's steps; the same when it already is one."""
    return factory if isinstance(factory, JobClients) else JobClients(job_id, factory)


# --- storage -------------------------------------------------------------------------------------

_readers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CoalescingReader[str, Entry]] = (
    weakref.WeakKeyDictionary()
)
_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CoalescingWriter[Entry]] = (
    weakref.WeakKeyDictionary()
)


async def _lookup(digest: str) -> Entry | None:
    loop = asyncio.get_running_loop()
    reader = _readers.get(loop)
    if reader is None:
        reader = _readers[loop] = CoalescingReader(read_entries)
    try:
        return await reader.get(digest)
    except Exception:
        log.warning("response cache not read", exc_info=True)
        return None


async def _store(entry: Entry) -> None:
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = CoalescingWriter(store_entries)
    try:
        await writer.put(entry)
    except Exception:
        log.warning("answers not stored in the response cache", exc_info=True)


def read_entries(digests: list[str]) -> dict[str, Entry]:
    found: dict[str, Entry] = {}
    with session_scope() as session:
        for start in range(0, len(digests), _READ_CHUNK):
            chunk = digests[start : start + _READ_CHUNK]
            for row in session.scalars(
                select(ResponseCacheEntry).where(ResponseCacheEntry.digest.in_(chunk))
            ):
                found[row.digest] = Entry(
                    row.digest,
                    row.owner_key_id,
                    row.text,
                    row.finish_reason,
                    row.prompt_tokens,
                    row.completion_tokens,
                )
    return found


def store_entries(entries: list[Entry]) -> None:
    """Insert the entries; one already there (the same request answered twice) is kept."""
    rows = {e.digest: e for e in entries}
    values = [
        {
            "digest": e.digest,
            "owner_key_id": e.owner_key_id,
            "text": e.text,
            "finish_reason": e.finish_reason,
            "prompt_tokens": e.prompt_tokens,
            "completion_tokens": e.completion_tokens,
            "created_at": datetime.now(UTC),
        }
        for e in rows.values()
    ]
    with session_scope() as session:
        insert = _insert(session)(ResponseCacheEntry).values(values)
        session.execute(insert.on_conflict_do_nothing(index_elements=["digest"]))


def _insert(session: Session):  # type: ignore[no-untyped-def]
    if session.get_bind().dialect.name == "postgresql":
        return postgresql_insert
    return sqlite_insert


def drop_entries(session: Session, caller: Caller, older_than_days: float | None = None) -> int:
    """Delete the caller's entries (those stored more than `older_than_days` ago, when given);
    returns how many."""
    query = delete(ResponseCacheEntry).where(caller.scope(ResponseCacheEntry.owner_key_id))
    if older_than_days is not None:
        cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
        query = query.where(ResponseCacheEntry.created_at < cutoff)
    return int(session.execute(query).rowcount or 0)  # type: ignore[attr-defined]
