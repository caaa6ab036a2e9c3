"""The OpenAI-compatible client against the tests' HTTP server: shapes, retries, error mapping."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from app.apiserver import free_port
from app.llm.base import LLMPermanentError, LLMRequest, LLMTransientError
from app.llm.openai_compat import OpenAICompatClient
from app.selfinstruct.options import INSTRUCTION_STOP
from app.selfinstruct.parsing import parse_instruction_completion
from app.selfinstruct.prompts import build_instruction_prompt
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer, instruction_answer

PROMPT = build_instruction_prompt([f"Explain idea number {i} to a friend." for i in range(8)])


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(FakeLLMConfig(seed=1, truncate_rate=0.0, require_api_key="sk-secret")) as s:
        yield s


def client(server: FakeLLMServer, **kwargs: object) -> OpenAICompatClient:
    options: dict = {"api_key": "sk-secret", "model": None, "max_retries": 2, "timeout_s": 5}
    options.update(kwargs)
    return OpenAICompatClient(base_url=server.base_url, **options)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_completion_round_trip(server: FakeLLMServer, endpoint: str) -> None:
    llm = client(server, endpoint=endpoint)
    response = llm.complete(LLMRequest(prompt=PROMPT, max_tokens=512, stop=INSTRUCTION_STOP))
    assert llm.model == "fake-model"
    assert parse_instruction_completion(response.text, first_number=9)
    assert response.finish_reason == "stop"
    assert response.prompt_tokens > 50 and response.completion_tokens > 0
    body = server.requests[-1]
    assert body["model"] == "fake-model" and body["stop"] == list(INSTRUCTION_STOP)
    assert ("messages" in body) == (endpoint == "chat")


def test_max_tokens_gives_length_finish(server: FakeLLMServer) -> None:
    response = client(server).complete(LLMRequest(prompt=PROMPT, max_tokens=3))
    assert response.finish_reason == "length" and len(response.text.split()) <= 3


def test_transient_failures_are_retried(server: FakeLLMServer) -> None:
    server.fail_next(2, status=503)
    assert client(server).complete(LLMRequest(prompt=PROMPT, max_tokens=64)).text
    server.fail_next(1, status=429)
    assert client(server).complete(LLMRequest(prompt=PROMPT, max_tokens=64)).text


def test_retries_exhausted_is_transient(server: FakeLLMServer) -> None:
    server.fail_next(3, status=502)
    with pytest.raises(LLMTransientError, match="HTTP 502"):
        client(server, max_retries=0).complete(LLMRequest(prompt=PROMPT, max_tokens=64))


def test_bad_key_is_permanent_and_not_leaked(server: FakeLLMServer) -> None:
    with pytest.raises(LLMPermanentError) as raised:
        client(server, api_key="sk-wrong-key").complete(LLMRequest(prompt=PROMPT, max_tokens=8))
    assert "401" in str(raised.value) and "sk-wrong-key" not in str(raised.value)


def test_refused_connection_is_transient() -> None:
    llm = OpenAICompatClient(
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        api_key="x",
        model="m",
        max_retries=0,
        timeout_s=2,
    )
    with pytest.raises(LLMTransientError, match="cannot connect"):
        llm.complete(LLMRequest(prompt="hi", max_tokens=4))


def test_fake_answers_are_varied_and_deterministic() -> None:
    items = set()
    for attempt in range(30):
        items.update(
            parse_instruction_completion(
                instruction_answer(PROMPT, random.Random(attempt)), first_number=9
            )
        )
    assert len(items) > 100
    assert instruction_answer(PROMPT, random.Random(4)) == instruction_answer(
        PROMPT, random.Random(4)
    )
