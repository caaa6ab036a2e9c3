"""What the pipeline needs from an LLM, independent of any vendor SDK."""

from __future__ import annotations

from collections.abc import Sequence
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

    latency_s: float = 0.0  # time spent on the request, retries included


class LLMTransientError(LLMError):
    """Worth retrying later: rate limits, 5xx, timeouts, refused connections, empty answers."""


class LLMPermanentError(LLMError):
    """Retrying will not help: bad request, unknown model, authentication."""


class LLMClient(Protocol):
    def complete(self, request: LLMRequest) -> LLMResponse: ...

    async def acomplete(self, request: LLMRequest) -> LLMResponse:
        """The same on the process's LLM loop (`app.llm.aio`); raises like `complete`."""
        ...

    def complete_many(
        self, requests: Sequence[LLMRequest], concurrency: int
    ) -> list[LLMResponse | LLMError]:
        """Answers in request order, at most `concurrency` in flight; a failed request's slot
        holds its error instead of raising, so one failure does not lose the others."""
        ...
