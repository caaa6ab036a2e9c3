"""What the pipeline needs from an LLM, independent of any vendor SDK."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LLMRequest:
    prompt: str
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LLMResponse:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


class LLMError(Exception):
    """A request failed after the client's own retries."""


class LLMTransientError(LLMError):
    """Worth retrying later: rate limits, 5xx, timeouts, refused connections, empty answers."""


class LLMPermanentError(LLMError):
    """Retrying will not help: bad request, unknown model, authentication."""


class LLMClient(Protocol):
    def complete(self, request: LLMRequest) -> LLMResponse: ...
