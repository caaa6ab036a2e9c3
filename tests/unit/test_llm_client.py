"""The OpenAI-compatible client against the tests' HTTP server: shapes, retries, error mapping."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import SecretStr

from app.config import Settings
from app.llm.base import LLMPermanentError, LLMRequest, LLMResponse, LLMTransientError
from app.llm.openai_compat import OpenAICompatClient, _retry_after, build_llm_client
from app.selfinstruct.options import INSTRUCTION_STOP, GenerationOptions
from app.selfinstruct.parsing import parse_instruction_completion
from app.selfinstruct.prompts import build_instruction_prompt
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer

PROMPT = build_instruction_prompt([f"Explain idea number {i} to a friend." for i in range(8)])
API_KEY = "sk-test-secret-123"


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    config = FakeLLMConfig(seed=1, truncate_rate=0.0, require_api_key=API_KEY)
    with FakeLLMServer(config) as running:
        yield running


def client_for(server: FakeLLMServer, **overrides: Any) -> OpenAICompatClient:
    options: dict[str, Any] = {"api_key": API_KEY, "model": None, "max_retries": 2, "timeout_s": 5}
    options.update(overrides)
    return OpenAICompatClient(base_url=server.base_url, **options)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_round_trip_sends_sampling_params_and_reads_usage(
    server: FakeLLMServer, endpoint: str
) -> None:
    llm = client_for(server, endpoint=endpoint)
    request = LLMRequest(
        prompt=PROMPT,
        max_tokens=512,
        temperature=0.7,
        top_p=0.5,
        presence_penalty=2.0,
        stop=INSTRUCTION_STOP,
    )
    response = llm.complete(request)

    assert len(parse_instruction_completion(response.text, first_number=9)) >= 3
    assert response.finish_reason == "stop"
    assert response.prompt_tokens == len(PROMPT.split())
    assert response.completion_tokens == len(response.text.split())
    assert response.latency_s > 0
    body = server.requests[-1]
    assert body["model"] == "fake-model"
    assert body["stop"] == list(INSTRUCTION_STOP)
    assert (body["temperature"], body["top_p"], body["presence_penalty"]) == (0.7, 0.5, 2.0)
    assert body["max_tokens"] == 512 and body["n"] == 1
    if endpoint == "chat":
        assert body["messages"] == [{"role": "user", "content": PROMPT}]
    else:
        assert body["prompt"] == PROMPT


def test_model_is_resolved_once_from_the_server(server: FakeLLMServer) -> None:
    llm = client_for(server)
    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(llm.complete, [LLMRequest(prompt=PROMPT, max_tokens=64)] * 8))
    assert all(r.text for r in responses)
    assert llm.model == "fake-model"
    assert {body["model"] for body in server.requests} == {"fake-model"}


def test_explicit_model_is_sent_as_given(server: FakeLLMServer) -> None:
    client_for(server, model="llama-3-8b").complete(LLMRequest(prompt="hi", max_tokens=4))
    assert server.requests[-1]["model"] == "llama-3-8b"


def test_server_listing_no_models_is_permanent(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = client_for(server)
    monkeypatch.setattr(server.config, "model", "")
    with pytest.raises(LLMPermanentError, match="lists no models"):
        llm.complete(LLMRequest(prompt="hi", max_tokens=4))


def test_stop_sequences_are_honoured(server: FakeLLMServer) -> None:
    response = client_for(server).complete(LLMRequest(prompt=PROMPT, max_tokens=512, stop=("\n",)))
    assert "\n" not in response.text and response.text.strip()


def test_max_tokens_gives_length_finish(server: FakeLLMServer) -> None:
    response = client_for(server).complete(LLMRequest(prompt=PROMPT, max_tokens=3))
    assert response.finish_reason == "length"
    assert len(response.text.split()) == 3


def test_missing_usage_counts_as_zero_tokens() -> None:
    with FakeLLMServer(FakeLLMConfig(omit_usage=True, truncate_rate=0.0)) as server:
        response = client_for(server).complete(LLMRequest(prompt=PROMPT, max_tokens=64))
    assert response.text
    assert (response.prompt_tokens, response.completion_tokens) == (0, 0)


@pytest.mark.parametrize(("status", "failures"), [(503, 2), (500, 1), (429, 1)])
def test_transient_failures_are_retried(server: FakeLLMServer, status: int, failures: int) -> None:
    server.fail_next(failures, status=status)
    response = client_for(server, model="m").complete(LLMRequest(prompt=PROMPT, max_tokens=64))
    assert response.text
    assert len(server.requests) == failures + 1


def test_each_failed_attempt_is_counted_by_kind(
    server: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A retried failure leaves no error behind, so the answer carries what it took."""
    server.fail_next(1, status=429)
    server.fail_next(1, status=503)
    request = LLMRequest(prompt=PROMPT, max_tokens=64)
    with caplog.at_level("INFO", logger="app.llm.openai_compat"):
        answer = client_for(server, model="m", backend="vllm").complete(request)
    assert answer.text and answer.failed_attempts == ("http_429", "http_5xx")
    retried = [r.getMessage() for r in caplog.records]
    assert retried == [
        "backend 'vllm': http_429 (attempt 1 of 3), retrying",
        "backend 'vllm': http_5xx (attempt 2 of 3), retrying",
    ]
    server.fail_next(3, status=500)
    with pytest.raises(LLMTransientError) as raised:
        client_for(server, model="m").complete(request)
    assert raised.value.failed_attempts == ("http_5xx",) * 3  # the last one included
    server.fail_next(1, status=400)
    with pytest.raises(LLMPermanentError) as refused:
        client_for(server, model="m").complete(request)
    assert refused.value.failed_attempts == ("http_4xx",)


def test_connection_failures_and_timeouts_are_kinds_of_their_own() -> None:
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    llm = OpenAICompatClient(base_url=base_url, api_key=API_KEY, model="m", max_retries=1)
    with pytest.raises(LLMTransientError) as refused:
        llm.complete(LLMRequest(prompt="hi", max_tokens=4))
    assert refused.value.failed_attempts == ("connection", "connection")
    with FakeLLMServer(FakeLLMConfig(latency_s=0.6)) as server:
        slow = client_for(server, model="m", max_retries=0, timeout_s=0.1)
        with pytest.raises(LLMTransientError) as timed_out:
            slow.complete(LLMRequest(prompt="hi", max_tokens=4))
    assert timed_out.value.failed_attempts == ("timeout",)


def test_retries_exhausted_is_transient_and_names_backend_and_status(
    server: FakeLLMServer,
) -> None:
    server.fail_next(3, status=502)
    with pytest.raises(LLMTransientError) as raised:
        client_for(server, max_retries=0, backend="vllm").complete(
            LLMRequest(prompt=PROMPT, max_tokens=64)
        )
    message = str(raised.value)
    assert message.startswith("backend 'vllm': HTTP 502")
    assert server.base_url not in message and "127.0.0.1" not in message


def test_rate_limit_after_retries_is_transient(server: FakeLLMServer) -> None:
    server.fail_next(5, status=429)
    with pytest.raises(LLMTransientError, match="HTTP 429"):
        client_for(server, max_retries=1).complete(LLMRequest(prompt=PROMPT, max_tokens=64))


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_are_permanent(server: FakeLLMServer, status: int) -> None:
    server.fail_next(1, status=status)
    with pytest.raises(LLMPermanentError, match=f"HTTP {status}"):
        client_for(server).complete(LLMRequest(prompt=PROMPT, max_tokens=64))
    assert len(server.requests) == 1  # not retried


def test_bad_key_is_permanent_and_not_leaked(server: FakeLLMServer) -> None:
    wrong_key = "sk-wrong-key-456"
    with pytest.raises(LLMPermanentError) as raised:
        client_for(server, api_key=wrong_key, model="m").complete(
            LLMRequest(prompt=PROMPT, max_tokens=8)
        )
    message = str(raised.value)
    assert "401" in message and "backend 'default'" in message and "Incorrect API key" in message
    assert server.base_url not in message
    assert wrong_key not in message and API_KEY not in message
    assert wrong_key[:5] not in message  # not even the masked copy the server echoes


def test_bad_key_while_resolving_the_model_is_permanent(server: FakeLLMServer) -> None:
    with pytest.raises(LLMPermanentError, match="401"):
        client_for(server, api_key="nope").complete(LLMRequest(prompt=PROMPT, max_tokens=8))


def test_empty_choices_are_transient() -> None:
    with (
        FakeLLMServer(FakeLLMConfig(empty_choices_rate=1.0)) as server,
        pytest.raises(LLMTransientError, match="no choices"),
    ):
        client_for(server).complete(LLMRequest(prompt=PROMPT, max_tokens=64))


def test_refused_connection_is_transient_and_quick() -> None:
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    llm = OpenAICompatClient(
        base_url=base_url, api_key=API_KEY, model="m", max_retries=0, timeout_s=2
    )
    started = time.perf_counter()
    with pytest.raises(LLMTransientError) as raised:
        llm.complete(LLMRequest(prompt="hi", max_tokens=4))
    assert time.perf_counter() - started < 2
    assert str(raised.value) == "backend 'default': connection refused"


def test_timeout_is_transient() -> None:
    with FakeLLMServer(FakeLLMConfig(latency_s=0.6)) as server:
        llm = client_for(server, model="m", max_retries=0, timeout_s=0.1)
        with pytest.raises(LLMTransientError, match="timed out"):
            llm.complete(LLMRequest(prompt="hi", max_tokens=4))


def test_build_llm_client_needs_a_backend() -> None:
    settings = Settings(openai_base_url=None)
    with pytest.raises(LLMPermanentError, match="set OPENAI_BASE_URL"):
        build_llm_client(settings, GenerationOptions())


def test_build_llm_client_prefers_the_jobs_model(server: FakeLLMServer) -> None:
    settings = Settings(
        openai_base_url=server.base_url,
        openai_api_key=SecretStr(API_KEY),
        model="server-default",
        llm_max_retries=0,
    )
    options = GenerationOptions(model="job-model", endpoint="chat")
    llm = build_llm_client(settings, options)
    llm.complete(LLMRequest(prompt="hi", max_tokens=4))
    assert server.requests[-1]["model"] == "job-model" and "messages" in server.requests[-1]
    build_llm_client(settings, GenerationOptions()).complete(LLMRequest(prompt="hi", max_tokens=4))
    assert server.requests[-1]["model"] == "server-default"


def test_complete_many_keeps_order_and_bounds_requests_in_flight() -> None:
    with FakeLLMServer(FakeLLMConfig(latency_s=0.05, truncate_rate=0.0)) as server:
        llm = client_for(server, model="m")
        prompts = [f"Task: say the number {n}.\nIs it classification?" for n in range(24)]
        answers = llm.complete_many([LLMRequest(prompt=p, max_tokens=3) for p in prompts], 6)
    assert all(not isinstance(a, Exception) for a in answers)
    assert [b["prompt"] for b in server.requests] != [] and len(answers) == 24
    assert server.max_in_flight == 6


def test_complete_many_puts_each_failure_in_its_own_slot(server: FakeLLMServer) -> None:
    server.fail_next(1, status=400)
    llm = client_for(server, model="m", max_retries=0)
    requests = [LLMRequest(prompt=f"{PROMPT} {n}", max_tokens=16) for n in range(3)]
    answers = llm.complete_many(requests, 1)
    assert isinstance(answers[0], LLMPermanentError) and "HTTP 400" in str(answers[0])
    assert answers[0].latency_s > 0
    assert all(isinstance(a, LLMResponse) for a in answers[1:])
    assert [b["prompt"] for b in server.requests] == [r.prompt for r in requests]


def test_retry_after_is_honoured(server: FakeLLMServer) -> None:
    server.fail_next(1, status=429)  # the fake server says Retry-After: 0
    started = time.perf_counter()
    client_for(server, model="m").complete(LLMRequest(prompt=PROMPT, max_tokens=8))
    assert time.perf_counter() - started < 0.4  # no exponential backoff on top


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("2", 2.0), ("0.5", 0.5), ("-3", 0.0), ("600", None), ("soon", None), (None, None)],
)
def test_retry_after_header_parsing(header: str | None, seconds: float | None) -> None:
    assert _retry_after(header) == seconds


def test_a_client_works_from_many_threads_and_after_close(server: FakeLLMServer) -> None:
    llm = client_for(server, model="m")
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(llm.complete, [LLMRequest(prompt=PROMPT, max_tokens=8)] * 16))
    assert len(answers) == 16
    llm.close()
    assert llm.complete(LLMRequest(prompt=PROMPT, max_tokens=8)).text
