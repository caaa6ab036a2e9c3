"""What the pipeline needs from an LLM, independent of any vendor SDK."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
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


# Why an HTTP attempt failed, as counted in the LLM-call records, progress and /metrics.
ATTEMPT_ERROR_KINDS = (
    "http_429",
    "http_5xx",
    "http_4xx",
    "timeout",
    "connection",
    "invalid_answer",
    "other",
)


def attempt_errors_text(kinds: Iterable[str]) -> str | None:
    """Failed attempts as stored: counts per kind, sorted ("http_429=2,http_5xx=1")."""
    counts = Counter(kinds)
    return ",".join(f"{kind}={n}" for kind, n in sorted(counts.items())) or None


def parse_attempt_errors(text: str | None) -> Counter[str]:
    """The counts per kind of a stored `attempt_errors` (empty for None)."""
    counts: Counter[str] = Counter()
    for part in (text or "").split(","):
        kind, _, n = part.partition("=")
        if kind and n.isdigit():
            counts[kind] += int(n)
    return counts


@dataclass(frozen=True, slots=True)
class LLMResponse:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    # The kinds of the attempts that failed (and were retried) before this answer came.
    failed_attempts: tuple[str, ...] = ()
    # Answered from the response cache: nothing was sent to the backend.
    cached: bool = False


class LLMError(Exception):
    """A request failed after the client's own retries."""

    latency_s: float = 0.0  # time spent on the request, retries included
    failed_attempts: tuple[str, ...] = ()  # the kind of each attempt, the last one included


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


async def complete_each(
    acomplete: Callable[[LLMRequest], Awaitable[LLMResponse]],
    requests: Sequence[LLMRequest],
    concurrency: int,
) -> list[LLMResponse | LLMError]:
    """Every request, at most `concurrency` at a time, in order; a failure in its place."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(request: LLMRequest) -> LLMResponse | LLMError:
        async with gate:
            try:
                return await acomplete(request)
            except LLMError as exc:
                return exc

    return list(await asyncio.gather(*(one(r) for r in requests)))
