"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp server) over its HTTP API.

Completions go out on aiohttp from one event loop per process (see `aio.py`), not through the
`openai` SDK: measured in `bench/bench_throughput.py`, the SDK spends several times the CPU of
the HTTP exchange itself on each request (parameter transforms, request and response models),
and with 128 requests in flight against a 200 ms server that alone saturates a core. The two
endpoints' wire format is small and stable, so we speak it directly; the SDK is used for the
Batch API (`batch_api.py`), where requests are few and large.

Retries (tenacity): timeouts, refused connections, 408/409/425/429 and 5xx, with exponential
backoff and jitter, honouring Retry-After. What is left after them is sorted into transient
(retry the task later) and permanent (fail the job) errors. Their messages end up in jobs'
`error`, which tenants read, so they name the backend by its configured name: its URL and key
are server configuration and are scrubbed from whatever the server or the network said.

Each attempt of a completion holds a slot of its backend's concurrency gate (`concurrency.py`)
while it is out, and reports its latency, or an overload (429, 503, timeout), when it is back:
the number in flight adapts to what the server sustains, across every worker process.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import json
import logging
import random
import re
import socket
import time
import weakref
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from app.config import DEFAULT_BACKEND, Settings
from app.llm.adaptive import Outcome
from app.llm.aio import background_loop, run_sync
from app.llm.base import (
    LLMClient,
    LLMError,
    LLMPermanentError,
    LLMRequest,
    LLMResponse,
    LLMTransientError,
    complete_each,
)
from app.llm.concurrency import ConcurrencyGate, gate_for
from app.llm.rate_limit import Limits, RateLimiter, estimate_tokens, limiter_for
from app.logs import current_job_id
from app.selfinstruct.options import GenerationOptions

log = logging.getLogger(__name__)

Endpoint = Literal["completions", "chat"]

# Servers may echo (part of) the key in an error body, e.g. OpenAI's "Incorrect API key: sk-ab***".
_KEY_LIKE = re.compile(r"\b(?:sk|pk|key)-[\w*.-]+")
_URL_LIKE = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)
_RETRY_STATUSES = frozenset({408, 409, 425, 429})
_MAX_RETRY_AFTER_S = 60.0
_MAX_BACKOFF_S = 8.0
_OVERLOAD_STATUSES = frozenset({429, 503})  # with timeouts: the server has too much to do


class HTTPStatusError(Exception):
    """A non-2xx answer, with what the retry policy and the error message need."""

    def __init__(self, status: int, detail: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status in _RETRY_STATUSES or self.status >= 500


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, HTTPStatusError):
        return exc.retryable
    return isinstance(exc, TimeoutError | aiohttp.ClientError)


def attempt_error_kind(exc: BaseException) -> str:
    """One of ATTEMPT_ERROR_KINDS for a failed attempt (or for the error it was translated to)."""
    if isinstance(exc, LLMError) and exc.__cause__ is not None:
        return attempt_error_kind(exc.__cause__)
    if isinstance(exc, HTTPStatusError):
        if exc.status == 429:
            return "http_429"
        return "http_5xx" if exc.status >= 500 else "http_4xx"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientError):
        return "connection"
    if isinstance(exc, ValueError):
        return "invalid_answer"
    return "other"


def _wait(state: RetryCallState) -> float:
    """Retry-After when the server gives one, else exponential backoff with jitter; the first
    attempt was made before tenacity took over, hence the +1."""
    exc = state.outcome.exception() if state.outcome else None
    return _wait_after(exc, state.attempt_number + 1)


def _wait_after(exc: BaseException | None, attempt: int) -> float:
    if isinstance(exc, HTTPStatusError) and exc.retry_after is not None:
        return exc.retry_after
    return random.uniform(0, min(_MAX_BACKOFF_S, 0.5 * 2**attempt))  # full jitter


class _Connection:
    """A client's HTTP session and the loop it belongs to."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def close_soon(self) -> None:
        session, loop, self.session = self.session, self.loop, None
        if session is not None and loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(session.close(), loop)


class OpenAICompatClient:
    """Safe to share between threads: every request runs on the process's LLM loop."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str | None,
        endpoint: Endpoint = "completions",
        timeout_s: float = 120.0,
        max_retries: int = 4,
        limiter: RateLimiter | None = None,
        backend: str = DEFAULT_BACKEND,
        gate: ConcurrencyGate | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.backend = backend
        self.limiter = limiter
        self.gate = gate
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._model = model
        self._model_task: asyncio.Future[str] | None = None
        self._api_key = api_key
        self._http_state = _Connection()
        # A client dropped without close() (e.g. by a test) still closes its connections.
        weakref.finalize(self, self._http_state.close_soon)
        _open_clients.add(self)

    # --- public, synchronous ---------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The configured model, or the first one the server lists (llama.cpp and vLLM serve one)."""
        return self._model or run_sync(self.resolve_model())

    def complete(self, request: LLMRequest) -> LLMResponse:
        return run_sync(self.acomplete(request))

    def complete_many(
        self, requests: Sequence[LLMRequest], concurrency: int
    ) -> list[LLMResponse | LLMError]:
        return run_sync(self.acomplete_many(requests, concurrency))

    def close(self, timeout_s: float = 5.0) -> None:
        state = self._http_state
        session, loop, state.session = state.session, state.loop, None
        if session is not None and loop is background_loop():
            asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout_s)

    # --- async -----------------------------------------------------------------------------------

    async def acomplete_many(
        self, requests: Sequence[LLMRequest], concurrency: int
    ) -> list[LLMResponse | LLMError]:
        return await complete_each(self.acomplete, requests, concurrency)

    async def acomplete(self, request: LLMRequest) -> LLMResponse:
        """The answer, or an LLMError; either way with the kinds of the attempts that failed."""
        started = time.perf_counter()
        failed: list[str] = []
        try:
            body = request_body(request, await self.resolve_model(), self.endpoint)
            path = "/chat/completions" if self.endpoint == "chat" else "/completions"
            cost = estimate_tokens(request.prompt, request.max_tokens) if self.limiter else None
            reply = await self._with_retries("POST", path, body, cost, failed)
            try:
                response = completion_response(
                    reply,
                    self.endpoint,
                    self.backend,
                    latency_s=time.perf_counter() - started,
                    failed_attempts=tuple(failed),
                )
            except LLMError:
                failed.append("invalid_answer")
                raise
        except LLMError as exc:
            exc.latency_s = time.perf_counter() - started
            exc.failed_attempts = tuple(failed) or (attempt_error_kind(exc),)
            raise
        if self.limiter is not None and cost is not None and reply.get("usage"):
            await self.limiter.settle(cost, response.prompt_tokens + response.completion_tokens)
        return response

    async def resolve_model(self) -> str:
        """Concurrent first requests share one listing; a failed listing is tried again later."""
        if self._model is not None:
            return self._model
        if (
            self._model_task is None
            or self._model_task.get_loop() is not asyncio.get_running_loop()
        ):
            self._model_task = asyncio.ensure_future(self._first_served_model())
        task = self._model_task
        try:
            self._model = await asyncio.shield(task)
        except LLMError:
            if self._model_task is task:
                self._model_task = None
            raise
        return self._model

    async def _first_served_model(self) -> str:
        listing = await self._with_retries("GET", "/models", None)
        models = listing.get("data") or []
        if not models or not isinstance(models[0], dict) or not models[0].get("id"):
            raise LLMPermanentError(
                f"{backend_label(self.backend)} lists no models; set SELFINSTRUCT_MODEL or the "
                "job's model option"
            )
        return str(models[0]["id"])

    async def _with_retries(
        self,
        method: str,
        path: str,
        body: Any,
        cost: int | None = None,
        failed: list[str] | None = None,
    ) -> dict[str, Any]:
        """Send with retries; with a rate limiter, each attempt first takes `cost` tokens.
        `failed` gets the kind of each attempt that fails, retried or not."""
        payload = None if body is None else json.dumps(body).encode()
        failed = [] if failed is None else failed

        async def attempt_once(number: int) -> dict[str, Any]:
            try:
                return await self._send(method, path, payload, cost)
            except Exception as exc:
                failed.append(attempt_error_kind(exc))
                if _retryable(exc) and number <= self.max_retries:
                    log.info(
                        "%s: %s (attempt %d of %d), retrying",
                        backend_label(self.backend),
                        failed[-1],
                        number,
                        self.max_retries + 1,
                    )
                raise

        try:
            try:  # the common case, without building a retry controller per request
                return await attempt_once(1)
            except Exception as exc:
                if not _retryable(exc) or self.max_retries < 1:
                    raise
                first_wait = _wait_after(exc, 1)
            await asyncio.sleep(first_wait)
            retrying = AsyncRetrying(
                stop=stop_after_attempt(self.max_retries),
                retry=retry_if_exception(_retryable),
                wait=_wait,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    return await attempt_once(attempt.retry_state.attempt_number + 1)
        except (TimeoutError, HTTPStatusError, aiohttp.ClientError, ValueError) as exc:
            raise self._translate(exc) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _send(
        self, method: str, path: str, payload: bytes | None, cost: int | None = None
    ) -> dict[str, Any]:
        """One attempt. A completion (POST) holds a slot of the backend's concurrency gate
        while it is out and reports how it went; the model listing does not."""
        if cost is not None and self.limiter is not None:
            await self.limiter.acquire(cost)
        if self.gate is None or method != "POST":
            raw = await self._exchange(method, path, payload)
        else:
            slot = await self.gate.acquire(current_job_id.get())
            started = time.perf_counter()
            outcome: Outcome = "error"
            try:
                raw = await self._exchange(method, path, payload)
                outcome = "ok"
            except HTTPStatusError as exc:
                outcome = "overload" if exc.status in _OVERLOAD_STATUSES else "error"
                raise
            except TimeoutError:
                outcome = "overload"
                raise
            finally:
                await self.gate.release(slot, time.perf_counter() - started, outcome)
        reply = json.loads(raw)
        if not isinstance(reply, dict):
            raise ValueError("the answer is not a JSON object")
        return reply

    async def _exchange(self, method: str, path: str, payload: bytes | None) -> bytes:
        """The HTTP exchange: the answer's body, or HTTPStatusError for a non-2xx status."""
        session = await self._http()
        async with session.request(method, self.base_url + path, data=payload) as response:
            raw = await response.read()
            if response.status >= 400:
                raise HTTPStatusError(
                    response.status,
                    _short_detail(raw),
                    _retry_after(response.headers.get("retry-after")),
                )
        return raw

    async def _http(self) -> aiohttp.ClientSession:
        state, loop = self._http_state, asyncio.get_running_loop()
        if state.session is None or state.loop is not loop or state.session.closed:
            headers = {
                "Authorization": f"Bearer {self._api_key or 'not-needed'}",
                "Content-Type": "application/json",
            }
            state.session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                # Concurrency is bounded by the callers' semaphores, not by the pool.
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            )
            state.loop = loop
        return state.session

    def _translate(self, exc: BaseException) -> LLMTransientError | LLMPermanentError:
        return translate_error(exc, self.backend, self._api_key, self.base_url)


# Sessions are closed at exit, so aiohttp does not warn about unclosed connectors.
_open_clients: weakref.WeakSet[OpenAICompatClient] = weakref.WeakSet()


def close_all_clients() -> None:
    for client in list(_open_clients):
        with contextlib.suppress(Exception):  # closing at exit is best effort
            client.close(timeout_s=1.0)


atexit.register(close_all_clients)


def backend_label(backend: str) -> str:
    """How errors name a backend: by its configured name, never by its URL."""
    return f"backend {backend!r}"


def request_body(request: LLMRequest, model: str, endpoint: Endpoint) -> dict[str, Any]:
    """A completion's JSON body; the Batch API's input file carries the same one per line."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "n": 1,
    }
    if request.stop:
        body["stop"] = list(request.stop)
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = request.prompt
    return body


def completion_response(
    reply: dict[str, Any],
    endpoint: Endpoint,
    backend: str,
    *,
    latency_s: float = 0.0,
    failed_attempts: tuple[str, ...] = (),
) -> LLMResponse:
    """A completion's answer, online or from a Batch API output line; LLMTransientError for one
    without a choice or text, which a retry may well get."""
    choices = reply.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        raise LLMTransientError(f"{backend_label(backend)} answered with no choices")
    choice = choices[0]
    if endpoint == "chat":
        text = (choice.get("message") or {}).get("content")
    else:
        text = choice.get("text")
    if not isinstance(text, str):
        raise LLMTransientError(f"{backend_label(backend)} answered without text")
    usage = reply.get("usage") or {}
    return LLMResponse(
        text=text,
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        latency_s=latency_s,
        failed_attempts=failed_attempts,
    )


def translate_error(
    exc: BaseException, backend: str, api_key: str, base_url: str = ""
) -> LLMTransientError | LLMPermanentError:
    """Map what is left after the retries to retry-later or give-up. The message names the
    backend; the server's own words are scrubbed of its address and of anything like the key."""
    label = backend_label(backend)
    if isinstance(exc, TimeoutError):
        return LLMTransientError(f"{label}: request timed out")
    if isinstance(exc, aiohttp.ClientConnectionError):
        return LLMTransientError(f"{label}: {connection_failure(exc)}")
    if isinstance(exc, HTTPStatusError):
        detail = scrub(exc.detail, base_url, api_key)
        message = f"{label}: HTTP {exc.status}{': ' + detail if detail else ''}"
        return LLMTransientError(message) if exc.retryable else LLMPermanentError(message)
    if isinstance(exc, ValueError):
        return LLMTransientError(f"{label}: the answer is not valid JSON")
    return LLMTransientError(f"{label}: {type(exc).__name__}")


def connection_failure(exc: aiohttp.ClientConnectionError) -> str:
    """What went wrong, without the host and port that aiohttp's messages carry."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if isinstance(cause, socket.gaierror):
        return "cannot resolve the host name"
    code = getattr(cause, "errno", None)
    if code == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(code, int) and code > 0:
        return f"cannot connect ({errno.errorcode.get(code, code)})"
    return f"cannot connect ({type(exc).__name__})"


def scrub(message: str, base_url: str, api_key: str) -> str:
    """A server's words without the key, the backend's address or any other URL."""
    message = redact(message, api_key)
    parts = urlsplit(base_url)
    for address in (base_url.rstrip("/"), parts.netloc, parts.hostname):
        if address:  # whole words only: a host called "llm" leaves "llm-judge" alone
            pattern = rf"(?<![\w.-]){re.escape(address)}(?![\w-])"
            message = re.sub(pattern, "[backend]", message)
    return _URL_LIKE.sub("[url]", message)


def _short_detail(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:300].decode("utf-8", "replace").strip()
    return error_message(body)


def error_message(body: Any) -> str:
    """The message of an error body, `{"error": {"message": ...}}` or looser, cut short."""
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message") if isinstance(error, dict) else error
    return str(message)[:300] if message else ""


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date); none above a minute."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    if seconds > _MAX_RETRY_AFTER_S:
        return None
    return max(0.0, seconds)


def redact(message: str, api_key: str) -> str:
    if len(api_key) >= 4:
        message = message.replace(api_key, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", message)


def build_llm_client(settings: Settings, options: GenerationOptions) -> LLMClient:
    """The client a job uses: its backend (by name, from the server's configuration), model and
    endpoint."""
    backend = settings.backend(options.backend)
    if backend is None:
        if options.backend:
            raise LLMPermanentError(f"no LLM backend named {options.backend!r} is configured")
        raise LLMPermanentError("no LLM backend configured: set OPENAI_BASE_URL")
    return OpenAICompatClient(
        base_url=backend.base_url,
        api_key=backend.api_key.get_secret_value(),
        model=options.model or backend.default_model,
        endpoint=options.endpoint,
        timeout_s=settings.llm_timeout_s,
        max_retries=settings.llm_max_retries,
        backend=options.backend or DEFAULT_BACKEND,
        limiter=limiter_for(
            options.backend or DEFAULT_BACKEND,
            Limits(backend.requests_per_minute, backend.tokens_per_minute),
            shared_redis_url(settings),
        ),
        gate=gate_for(
            options.backend or DEFAULT_BACKEND,
            backend.max_concurrency,
            shared_redis_url(settings),
            initial=settings.llm_initial_concurrency,
        ),
    )


def shared_redis_url(settings: Settings) -> str | None:
    """Rate-limit buckets and concurrency slots go to the Redis broker when there is one, else
    stay in the process."""
    url = settings.celery_broker_url
    return url if url and url.startswith(("redis://", "rediss://", "unix://")) else None
