"""The Batch API client against the tests' server: input file, polling, answers in order."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.db import session_scope
from app.llm.base import LLMPermanentError, LLMRequest, LLMResponse, LLMTransientError
from app.llm.batch_api import OpenAIBatchClient
from app.llm.openai_compat import OpenAICompatClient
from app.models import Job, JobStatus
from app.selfinstruct.options import CLASSIFY_STOP, GenerationOptions
from app.selfinstruct.prompts import build_classification_prompt
from app.services import batches
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.sqlite_db import forget_settings, new_job, stored_seed_set, use_sqlite

TASKS = [f"Sort the numbers {n}, {n + 3} and {n + 1} from smallest to largest." for n in range(6)]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(FakeLLMConfig(seed=2, batch_delay_s=0.3, truncate_rate=0.0)) as running:
        yield running


def requests() -> list[LLMRequest]:
    return [
        LLMRequest(prompt=build_classification_prompt(t), max_tokens=3, stop=CLASSIFY_STOP)
        for t in TASKS
    ]


def client_for(server: FakeLLMServer, endpoint: str = "completions") -> OpenAIBatchClient:
    return OpenAIBatchClient(
        base_url=server.base_url,
        api_key="k",
        model="fake-model",
        endpoint=endpoint,  # type: ignore[arg-type]
    )


def wait_done(client: OpenAIBatchClient, batch_id: str, count: int):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while (state := client.poll(batch_id, count)).running:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return state


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_batch_round_trip_keeps_request_order(server: FakeLLMServer, endpoint: str) -> None:
    client = client_for(server, endpoint)
    batch_id = client.submit(requests(), "classify:abc")
    assert client.poll(batch_id, 6).running  # not answered before its delay
    state = wait_done(client, batch_id, 6)
    assert state.status == "completed"
    answers = state.answers or []
    assert len(answers) == 6 and all(isinstance(a, LLMResponse) for a in answers)
    assert all(a.text.strip() in ("Yes", "No") for a in answers)  # type: ignore[union-attr]
    assert all(a.prompt_tokens > 0 for a in answers)  # type: ignore[union-attr]
    lines = [
        json.loads(x) for x in server.files[server.batches[batch_id]["input_file_id"]].splitlines()
    ]
    assert [x["custom_id"] for x in lines] == [str(n) for n in range(6)]
    url = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    assert {x["url"] for x in lines} == {url} and server.batches[batch_id]["endpoint"] == url
    assert all(x["body"]["model"] == "fake-model" and x["body"]["stop"] for x in lines)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_a_batch_line_carries_the_body_an_online_request_sends(
    server: FakeLLMServer, endpoint: str
) -> None:
    """One request format for both clients: a batched request is answered as the online one."""
    request = requests()[0]
    online = OpenAICompatClient(
        base_url=server.base_url,
        api_key="k",
        model="fake-model",
        endpoint=endpoint,  # type: ignore[arg-type]
    )
    try:
        online.complete(request)
    finally:
        online.close()
    (line,) = client_for(server, endpoint).request_lines([request]).splitlines()
    assert json.loads(line)["body"] == server.requests[-1]


def test_a_batch_answer_without_choices_is_transient_as_online() -> None:
    with FakeLLMServer(FakeLLMConfig(empty_choices_rate=1.0)) as server:
        client = client_for(server)
        answers = wait_done(client, client.submit(requests(), "k"), 6).answers or []
    assert len(answers) == 6
    assert all(isinstance(a, LLMTransientError) and "no choices" in str(a) for a in answers)


def test_failed_requests_come_back_as_errors_in_their_slots(server: FakeLLMServer) -> None:
    client = client_for(server)
    batch_id = client.submit(requests(), "k")
    server.fail_next(2, status=500)  # the first two lines the server answers
    answers = wait_done(client, batch_id, 6).answers or []
    assert [type(a) for a in answers[:2]] == [LLMTransientError, LLMTransientError]
    assert "HTTP 500" in str(answers[0])
    assert all(isinstance(a, LLMResponse) for a in answers[2:])


def test_a_batch_is_found_again_by_its_key(server: FakeLLMServer) -> None:
    client = client_for(server)
    first = client.submit(requests(), "round 1:aaa")
    client.submit(requests()[:2], "round 2:bbb")
    assert client.find("round 1:aaa") == first
    assert client.find("round 3:ccc") is None


def test_a_refused_batch_reports_why() -> None:
    with FakeLLMServer(FakeLLMConfig(batch_refuse=True)) as server:
        client = client_for(server)
        state = client.poll(client.submit(requests(), "k"), 6)
    assert state.status == "failed" and not state.running and state.answers is None
    assert "not available in the Batch API" in (state.error or "")


def test_a_backend_without_the_batch_api_is_a_permanent_error(server: FakeLLMServer) -> None:
    client = OpenAIBatchClient(base_url=server.base_url + "/nothing", api_key="k", model="m")
    with pytest.raises(LLMPermanentError, match="does not offer the Batch API"):
        client.submit(requests(), "k")


@pytest.fixture
def job_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FakeLLMServer, default_seeds: Path
) -> Iterator[uuid.UUID]:
    use_sqlite(tmp_path / "batches.db", monkeypatch, server.base_url)
    yield new_job(stored_seed_set(default_seeds), 10, OPTIONS)
    forget_settings()


OPTIONS = GenerationOptions(batch_api=True, model="fake-model")


def collect_when_done(job_id: uuid.UUID, batch: list[LLMRequest]) -> list[object]:
    deadline = time.monotonic() + 10
    while True:
        try:
            return list(batches.collect(job_id, "classify", batch, OPTIONS))
        except batches.BatchPending:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_a_batch_whose_answers_all_failed_is_submitted_again_not_found_again(
    server: FakeLLMServer, job_on_sqlite: uuid.UUID
) -> None:
    """Finding a step's batch by its key saves paying twice after a crash; it must not also
    hand a retry the same failed batch, over and over."""
    one = requests()[:1]
    server.config.failing_kinds = ("classify",)
    with pytest.raises(LLMTransientError):
        collect_when_done(job_on_sqlite, one)
    server.config.failing_kinds = ()
    answers = collect_when_done(job_on_sqlite, one)
    assert [type(a) for a in answers] == [LLMResponse]
    assert server.counts["batches_created"] == 2


def test_cancel_stops_a_running_batch_and_reports_the_end_of_one_already_over(
    server: FakeLLMServer,
) -> None:
    client = client_for(server)
    running = client.submit(requests(), "round 1:aaa")
    assert client.cancel(running) == "cancelling"
    state = wait_done(client, running, 6)
    assert state.status == "cancelled"
    assert all(isinstance(a, LLMTransientError) for a in state.answers or [None])
    done = client.submit(requests()[:2], "round 2:bbb")
    wait_done(client, done, 2)
    assert client.cancel(done) == "completed"  # HTTP 400 from the server: read its state
    assert client.cancel("batch_that_never_was") == "gone"


def test_the_sweep_cancels_the_running_batches_of_finished_jobs_only(
    server: FakeLLMServer, job_on_sqlite: uuid.UUID
) -> None:
    server.config.batch_delay_s = 3600.0
    with pytest.raises(batches.BatchPending):
        batches.collect(job_on_sqlite, "classify", requests(), OPTIONS)
    assert batches.cancel_abandoned() == 0  # the job still runs: its batch will be read
    with session_scope() as session:
        session.get(Job, job_on_sqlite).status = JobStatus.CANCELLED  # type: ignore[union-attr]
    assert batches.cancel_abandoned() == 1
    (remote,) = server.batches.values()
    assert remote["status"] == "cancelling"
    assert batches.cancel_abandoned() == 0  # recorded: not asked again at the next sweep
    assert server.counts["batches_cancelled"] == 1
