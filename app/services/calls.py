"""What every step keeps of each LLM request it sent: a CallRecord per request, stored as an
`llm_calls` row (budgets, progress and the error budget count them), with the answer cleaned
before the pure core parses it."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from sqlalchemy import update

from app.db import session_scope
from app.llm.base import (
    LLMClient,
    LLMError,
    LLMRequest,
    LLMResponse,
    LLMTransientError,
    attempt_errors_text,
)
from app.models import Job, LLMAnswer, LLMCall
from app.selfinstruct.options import GenerationOptions, JudgeStep
from app.selfinstruct.sanitize import clean_completion, clean_text, completion_char_cap

LLMFactory = Callable[[GenerationOptions], LLMClient]


@dataclass
class CallRecord:
    purpose: str
    round: int | None
    response: LLMResponse | None
    error: str | None = None
    latency_s: float = 0.0
    prompt_sha256: str | None = None
    recorded: bool = False  # taken from the journal, already in llm_calls
    failed_attempts: tuple[str, ...] = ()  # of a failed call (an answer carries its own)

    @property
    def attempt_kinds(self) -> tuple[str, ...]:
        """The kind of each attempt that failed, retried or last."""
        return self.response.failed_attempts if self.response else self.failed_attempts

    @property
    def attempts(self) -> int:
        """HTTP attempts: the failed ones, and the one that answered (none from the cache)."""
        if self.response is not None and self.response.cached:
            return 0
        return max(1, len(self.attempt_kinds) + (self.response is not None))

    def row(self, job_id: uuid.UUID) -> LLMCall:
        """The stored call; what the server sent is bounded to what the columns hold."""
        r = self.response
        return LLMCall(
            job_id=job_id,
            purpose=self.purpose,
            round=self.round,
            ok=r is not None,
            finish_reason=clean_text(r.finish_reason)[:32] if r and r.finish_reason else None,
            prompt_tokens=count_tokens(r.prompt_tokens) if r else 0,
            completion_tokens=count_tokens(r.completion_tokens) if r else 0,
            latency_ms=round((r.latency_s if r else self.latency_s) * 1000),
            error=self.error,
            prompt_sha256=self.prompt_sha256,
            attempts=self.attempts,
            attempt_errors=attempt_errors_text(self.attempt_kinds),
            cached=bool(r and r.cached),
        )


_MAX_COUNT = 2**31 - 1  # an INTEGER column


def count_tokens(tokens: int) -> int:
    """A token count as a server reported it, within the column's range."""
    return min(max(int(tokens), 0), _MAX_COUNT)


def cleaned_answer(answer: LLMResponse, request: LLMRequest) -> LLMResponse:
    """The answer as the pure core's parsers may see it (see app/selfinstruct/sanitize.py)."""
    cap = completion_char_cap(request.max_tokens)
    completion = clean_completion(answer.text, answer.finish_reason, max_chars=cap)
    return replace(answer, text=completion.text, finish_reason=completion.finish_reason)


def error_text(error: Exception) -> str:
    return clean_text(str(error)[:2000])


def prompt_sha256(prompt: str) -> str:
    """The same digest as ever for any valid text; a stray surrogate cannot make it raise."""
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()


def send_calls(
    llm: LLMClient,
    requests: Sequence[LLMRequest],
    purpose: str,
    round_no: int | None,
    concurrency: int,
) -> list[CallRecord]:
    """Send the requests together; transient failures become records, a permanent one raises."""
    return call_records(llm.complete_many(requests, concurrency), requests, purpose, round_no)


def call_records(
    answers: Sequence[LLMResponse | LLMError],
    requests: Sequence[LLMRequest],
    purpose: str,
    round_no: int | None,
) -> list[CallRecord]:
    records = []
    for answer, request in zip(answers, requests, strict=True):
        digest = prompt_sha256(request.prompt)
        if isinstance(answer, LLMResponse):
            cleaned = cleaned_answer(answer, request)
            records.append(CallRecord(purpose, round_no, cleaned, prompt_sha256=digest))
            continue
        if not isinstance(answer, LLMTransientError):
            raise answer
        records.append(
            CallRecord(
                purpose,
                round_no,
                None,
                error_text(answer),
                answer.latency_s,
                digest,
                failed_attempts=answer.failed_attempts,
            )
        )
    return records


def judge_request(prompt: str, step: JudgeStep) -> LLMRequest:
    """Judges answer greedily on one line."""
    return LLMRequest(prompt=prompt, max_tokens=step.max_tokens, temperature=0.0, stop=("\n",))


def record_calls(job_id: uuid.UUID, records: Sequence[CallRecord]) -> None:
    """Store calls that are not stored with a round (it failed, or was dropped)."""
    with session_scope() as session:
        if session.get(Job, job_id) is None:
            return
        session.add_all(r.row(job_id) for r in records if not r.recorded)
        rounds = {r.round for r in records if r.round is not None}
        if rounds:  # their journaled answers, if taken again, are not counted again
            session.execute(
                update(LLMAnswer)
                .where(LLMAnswer.job_id == job_id, LLMAnswer.round.in_(rounds))
                .values(recorded=True)
            )
