"""The response cache on SQLite: a rerun of a finished job asks the backend nothing it answered
before and produces the same examples, unless the job turns the cache off; by default only
requests at temperature 0 are reused; another key's answers are never served; entries are
dropped by age, for the caller's key only."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from app.db import session_scope
from app.llm.base import LLMRequest, LLMResponse
from app.models import Instance, Instruction, Job, ResponseCacheEntry
from app.schemas import Progress
from app.selfinstruct.options import GenerationOptions
from app.selfinstruct.seeds import parse_seed_jsonl
from app.services import response_cache
from app.services.jobs import create_job, job_progress, rerun_job
from app.services.keys import ANYONE, Caller, create_key
from app.services.seed_sets import create_seed_set
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.sqlite_db import (
    forget_settings,
    in_process_api,
    run_to_end,
    use_sqlite,
)

TARGET = 8
Examples = list[tuple[str, str, str]]


@pytest.fixture(autouse=True)
def _forget_settings() -> Iterator[None]:
    yield
    forget_settings()


@contextmanager
def serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, deterministic: bool = False
) -> Iterator[FakeLLMServer]:
    config = FakeLLMConfig(seed=5, truncate_rate=0.0, deterministic=deterministic)
    with FakeLLMServer(config) as fake:
        use_sqlite(tmp_path / "cache.db", monkeypatch, fake.base_url)
        yield fake


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    # Not deterministic: a repeated prompt gets another answer, so only the cache repeats one.
    with serving(tmp_path, monkeypatch) as fake:
        yield fake


def start(seeds: Path, options: GenerationOptions, caller: Caller = ANYONE) -> uuid.UUID:
    """A job of `caller` on its own copy of the seed tasks."""
    tasks = parse_seed_jsonl(
        seeds.read_bytes(), max_bytes=10**7, max_line_bytes=10**6, max_tasks=10**4
    )
    with session_scope() as session:
        seed_set = create_seed_set(session, name="seeds", tasks=tasks, caller=caller).id
        return create_job(
            session, seed_set_id=seed_set, num_instructions=TARGET, options=options, caller=caller
        ).id


def rerun(job_id: uuid.UUID) -> uuid.UUID:
    with session_scope() as session:
        return rerun_job(session, job_id).id


def examples(job_id: uuid.UUID) -> Examples:
    with session_scope() as session:
        rows = session.execute(
            select(Instruction.text, Instance.input, Instance.output)
            .join(Instance, Instance.instruction_id == Instruction.id)
            .where(Instance.job_id == job_id, Instance.accepted.is_(True))
        ).all()
    return sorted((text, input_, output) for text, input_, output in rows)


def progress(job_id: uuid.UUID) -> Progress:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "succeeded", job and job.error
        return job_progress(session, job)


def sent_during(server: FakeLLMServer, job_id: uuid.UUID) -> list[dict[str, object]]:
    before = len(server.requests)
    run_to_end(job_id)
    return server.requests[before:]


def test_a_rerun_sends_nothing_and_repeats_the_examples(
    server: FakeLLMServer, default_seeds: Path
) -> None:
    first = start(default_seeds, GenerationOptions(seed=3, response_cache="all"))
    sent = sent_during(server, first)
    assert sent and progress(first).cache_hits == 0
    second = rerun(first)
    assert sent_during(server, second) == []
    assert examples(second) == examples(first) != []
    counted = progress(second)
    assert counted.cache_hits == counted.llm_requests == len(sent)
    assert counted.llm_attempts == 0 and counted.llm_retries == 0
    assert counted.prompt_tokens == progress(first).prompt_tokens


def test_a_job_with_the_cache_off_sends_every_request(
    server: FakeLLMServer, default_seeds: Path
) -> None:
    first = start(default_seeds, GenerationOptions(seed=3, response_cache="all"))
    sent = sent_during(server, first)
    off = start(default_seeds, GenerationOptions(seed=3, response_cache="off"))
    assert len(sent_during(server, off)) >= len(sent) // 2
    assert progress(off).cache_hits == 0
    with session_scope() as session:  # an opted-out job stores nothing either
        stored = session.scalar(select(ResponseCacheEntry.digest).limit(1))
    assert stored is not None
    again = rerun(off)
    assert sent_during(server, again), "a rerun of an opted-out job asks again"


def test_by_default_only_temperature_0_requests_are_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_seeds: Path
) -> None:
    # A server answering each prompt the same way: the rerun asks the same requests again.
    with serving(tmp_path, monkeypatch, deterministic=True) as server:
        first = start(default_seeds, GenerationOptions(seed=3))
        sent = sent_during(server, first)
        greedy = [body for body in sent if body["temperature"] == 0]
        sampled = [body for body in sent if body["temperature"] != 0]
        assert greedy and sampled
        second = rerun(first)
        resent = sent_during(server, second)
    assert sorted(map(canonical, resent)) == sorted(map(canonical, sampled))
    assert progress(second).cache_hits == len(greedy)
    assert examples(second) == examples(first)


def canonical(body: dict[str, object]) -> str:
    return json.dumps(body, sort_keys=True)


def test_another_keys_identical_request_is_not_served_from_the_cache(
    server: FakeLLMServer, default_seeds: Path
) -> None:
    with session_scope() as session:
        alice, bob = (Caller(create_key(session, name)[0].id) for name in ("alice", "bob"))
    options = GenerationOptions(seed=3, response_cache="all")
    first = start(default_seeds, options, alice)
    sent = sent_during(server, first)
    theirs = start(default_seeds, options, bob)
    assert len(sent_during(server, theirs)) >= len(sent) // 2
    assert progress(theirs).cache_hits == 0
    mine = start(default_seeds, options, alice)
    assert sent_during(server, mine) == []


def entry(owner: uuid.UUID | None, n: int) -> response_cache.Entry:
    return response_cache.Entry(f"{n:064x}", owner, f"answer {n}", "stop", 3, 4)


def backdate(digest: str, days: float) -> None:
    with session_scope() as session:
        session.execute(
            update(ResponseCacheEntry)
            .where(ResponseCacheEntry.digest == digest)
            .values(created_at=datetime.now(UTC) - timedelta(days=days))
        )


def digests() -> set[str]:
    with session_scope() as session:
        return set(session.scalars(select(ResponseCacheEntry.digest)))


def test_entries_are_dropped_by_age_for_the_callers_key_only(
    server: FakeLLMServer,
) -> None:
    with session_scope() as session:
        alice, bob = (create_key(session, name)[0].id for name in ("alice", "bob"))
    old_mine, new_mine, old_theirs = entry(alice, 1), entry(alice, 2), entry(bob, 3)
    response_cache.store_entries([old_mine, new_mine, old_theirs, old_mine])  # a repeat is kept
    for old in (old_mine, old_theirs):
        backdate(old.digest, 10)
    with session_scope() as session:
        assert response_cache.drop_entries(session, Caller(alice), older_than_days=7) == 1
    assert digests() == {new_mine.digest, old_theirs.digest}
    with session_scope() as session:
        assert response_cache.drop_entries(session, Caller(alice)) == 1
    assert digests() == {old_theirs.digest}


def test_the_api_drops_entries_older_than_the_age_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with in_process_api(tmp_path, monkeypatch) as api:
        response_cache.store_entries([entry(None, 1), entry(None, 2)])
        backdate(entry(None, 1).digest, 3)
        answer = api.delete("/v1/response-cache", params={"older_than_days": 2})
        assert answer.status_code == 200 and answer.json() == {"deleted": 1}
        assert digests() == {entry(None, 2).digest}
        assert api.delete("/v1/response-cache").json() == {"deleted": 1}
        assert api.delete("/v1/response-cache", params={"older_than_days": -1}).status_code == 422


def test_answers_the_columns_cannot_hold_as_they_came_are_not_stored() -> None:
    request = LLMRequest(prompt="p", max_tokens=16)

    def answer(text: str, finish: str | None = "stop") -> LLMResponse:
        return LLMResponse(text, finish, 1, 1, 0.0)

    assert response_cache.storable(answer("fine"), request)
    for bad in (
        answer("a\x00b"),
        answer("lone \ud800"),
        answer("x" * 10**6),
        answer("ok", "f" * 40),
    ):
        assert not response_cache.storable(bad, request)


def test_the_key_covers_every_sampling_parameter_and_the_owner() -> None:
    request = LLMRequest(prompt="p", max_tokens=16)
    key = uuid.uuid4()
    digest = response_cache.request_digest(key, "default", "m", "completions", request)
    others = [
        response_cache.request_digest(None, "default", "m", "completions", request),
        response_cache.request_digest(key, "other", "m", "completions", request),
        response_cache.request_digest(key, "default", "m2", "completions", request),
        response_cache.request_digest(key, "default", "m", "chat", request),
        *(
            response_cache.request_digest(key, "default", "m", "completions", changed)
            for changed in (
                replace(request, prompt="q"),
                replace(request, max_tokens=17),
                replace(request, temperature=0.5),
                replace(request, top_p=0.9),
                replace(request, presence_penalty=1.0),
                replace(request, frequency_penalty=1.0),
                replace(request, stop=("\n",)),
            )
        ),
    ]
    assert digest not in others and len(set(others)) == len(others)
    assert digest == response_cache.request_digest(key, "default", "m", "completions", request)
