"""LLM errors become job errors that tenants read: they name the backend by its configured name,
never its URL, host or key (those are server configuration)."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from pydantic import SecretStr

from app.config import Settings
from app.llm.base import LLMPermanentError, LLMRequest, LLMTransientError
from app.llm.batch_api import OpenAIBatchClient
from app.llm.openai_compat import (
    HTTPStatusError,
    build_llm_client,
    connection_failure,
    scrub,
    translate_error,
)
from app.selfinstruct.options import GenerationOptions
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer

BASE_URL = "http://10.0.0.5:8000/v1"
KEY = "sk-live-abcdef123456"


def test_server_words_lose_the_address_and_the_key() -> None:
    said = f"upstream {BASE_URL}/completions (10.0.0.5:8000) refused key {KEY}; see https://x.io/a"
    assert scrub(said, BASE_URL, KEY) == (
        "upstream [backend]/completions ([backend]) refused key [redacted]; see [url]"
    )
    assert scrub("the llm-judge model is missing", "http://llm/v1", KEY) == (
        "the llm-judge model is missing"  # a host name is only replaced as a whole word
    )


def test_http_errors_name_the_backend() -> None:
    failure = HTTPStatusError(404, f"no route {BASE_URL}/completions", None)
    error = translate_error(failure, "vllm", KEY, BASE_URL)
    assert isinstance(error, LLMPermanentError)
    assert str(error) == "backend 'vllm': HTTP 404: no route [backend]/completions"
    timeout = translate_error(TimeoutError(), "vllm", KEY, BASE_URL)
    assert isinstance(timeout, LLMTransientError)
    assert str(timeout) == "backend 'vllm': request timed out"


def test_connection_failures_say_what_failed_without_host_or_port() -> None:
    refused = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("10.0.0.5", 8000, False, True, None, None, None),
        ConnectionRefusedError(111, "Connect call failed ('10.0.0.5', 8000)"),
    )
    assert "10.0.0.5" in str(refused)  # what aiohttp itself would have said
    assert connection_failure(refused) == "connection refused"
    unresolved = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("llm.internal", 80, False, True, None, None, None),
        socket.gaierror(-2, "Name or service not known"),
    )
    assert connection_failure(unresolved) == "cannot resolve the host name"
    assert connection_failure(aiohttp.ServerDisconnectedError()) == (
        "the server closed the connection"
    )


def test_a_job_clients_errors_use_its_backend_name() -> None:
    with FakeLLMServer(FakeLLMConfig(seed=3)) as server:
        server.fail_next(1, status=400)
        settings = Settings(
            backends={"judge-box": {"base_url": server.base_url, "api_key": SecretStr(KEY)}}
        )
        options = GenerationOptions(backend="judge-box", model="m")
        client = build_llm_client(settings, options)
        with pytest.raises(LLMPermanentError) as raised:
            client.complete(LLMRequest(prompt="Hi", max_tokens=4))
    message = str(raised.value)
    assert message.startswith("backend 'judge-box': HTTP 400")
    assert server.base_url not in message and "127.0.0.1" not in message


def test_batch_api_errors_use_the_backend_name() -> None:
    with FakeLLMServer(FakeLLMConfig(seed=4)) as server:
        client = OpenAIBatchClient(
            base_url=server.base_url + "/nothing", api_key="k", model="m", backend="batchy"
        )
        with pytest.raises(LLMPermanentError) as raised:
            client.submit([LLMRequest(prompt="Hi", max_tokens=4)], "key")
    assert str(raised.value).startswith("backend 'batchy' does not offer the Batch API")
    assert server.base_url not in str(raised.value)
