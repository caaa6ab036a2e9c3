"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp server) through the `openai` SDK.

The SDK does the bounded retries with backoff (honouring Retry-After on 429); what is left after
them is sorted into transient (retry the task later) and permanent (fail the job) errors.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Literal

import openai

from app.config import Settings
from app.llm.base import (
    LLMClient,
    LLMPermanentError,
    LLMRequest,
    LLMResponse,
    LLMTransientError,
)
from app.selfinstruct.options import GenerationOptions

Endpoint = Literal["completions", "chat"]

# Servers may echo (part of) the key in an error body, e.g. OpenAI's "Incorrect API key: sk-ab***".
_KEY_LIKE = re.compile(r"\b(?:sk|pk|key)-[\w*.-]+")


class OpenAICompatClient:
    """Thread-safe: one instance is shared by a pool of request threads."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str | None,
        endpoint: Endpoint = "completions",
        timeout_s: float = 120.0,
        max_retries: int = 4,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.endpoint = endpoint
        self._model = model
        self._model_lock = threading.Lock()
        self._api_key = api_key
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or "not-needed",
            timeout=timeout_s,
            max_retries=max_retries,
        )

    @property
    def model(self) -> str:
        """The configured model, or the first one the server lists (llama.cpp and vLLM serve one)."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    self._model = self._first_served_model()
        return self._model

    def _first_served_model(self) -> str:
        try:
            models = self._client.models.list()
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        first = next(iter(models), None)
        if first is None:
            raise LLMPermanentError(
                f"{self.base_url} lists no models; set SELFINSTRUCT_MODEL or the job's model option"
            )
        return first.id

    def complete(self, request: LLMRequest) -> LLMResponse:
        started = time.perf_counter()
        sampling: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "presence_penalty": request.presence_penalty,
            "frequency_penalty": request.frequency_penalty,
            "stop": list(request.stop) or None,
            "n": 1,
        }
        try:
            if self.endpoint == "chat":
                reply = self._client.chat.completions.create(
                    messages=[{"role": "user", "content": request.prompt}], **sampling
                )
            else:
                reply = self._client.completions.create(prompt=request.prompt, **sampling)
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        text, finish_reason = self._first_choice(reply)
        usage = getattr(reply, "usage", None)
        return LLMResponse(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            latency_s=time.perf_counter() - started,
        )

    def _translate(self, exc: openai.OpenAIError) -> LLMTransientError | LLMPermanentError:
        return _translate_error(exc, self.base_url, self._api_key)

    def _first_choice(self, reply: Any) -> tuple[str, str | None]:
        choices = getattr(reply, "choices", None) or []
        if not choices:
            raise LLMTransientError(f"{self.base_url} answered with no choices")
        choice = choices[0]
        if self.endpoint == "chat":
            message = getattr(choice, "message", None)
            text = getattr(message, "content", None)
        else:
            text = getattr(choice, "text", None)
        if not isinstance(text, str):
            raise LLMTransientError(f"{self.base_url} answered without text")
        return text, getattr(choice, "finish_reason", None)


def _translate_error(
    exc: openai.OpenAIError, base_url: str, api_key: str
) -> LLMTransientError | LLMPermanentError:
    """Map what the SDK raised after its retries to retry-later or give-up; the server's own
    words are scrubbed of anything that looks like the key."""
    if isinstance(exc, openai.APITimeoutError):
        return LLMTransientError(f"{base_url}: request timed out")
    if isinstance(exc, openai.APIConnectionError):
        cause = _redact(str(exc.__cause__ or exc), api_key)
        return LLMTransientError(f"{base_url}: cannot connect ({cause})")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = _redact(_short_detail(exc), api_key)
        message = f"{base_url}: HTTP {status}{': ' + detail if detail else ''}"
        if status in (408, 409, 425, 429) or status >= 500:
            return LLMTransientError(message)
        return LLMPermanentError(message)
    return LLMTransientError(f"{base_url}: {type(exc).__name__}")


def _short_detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
        return str(message)[:300] if message else ""
    return str(exc.message)[:300]


def _redact(message: str, api_key: str) -> str:
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
    )
