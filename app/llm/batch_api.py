"""The OpenAI Batch API through the `openai` SDK: upload a JSONL of requests, create a batch,
poll it, read the answers back. Half the price of online requests, up to 24 hours of latency.

Requests are few and large here, so the SDK's cost per call does not matter (unlike the online
client in `openai_compat.py`).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import openai

from app.config import DEFAULT_BACKEND
from app.llm.base import LLMError, LLMPermanentError, LLMRequest, LLMResponse, LLMTransientError
from app.llm.openai_compat import (
    Endpoint,
    HTTPStatusError,
    backend_label,
    completion_response,
    error_message,
    request_body,
    scrub,
    translate_error,
)

# Batch states: https://platform.openai.com/docs/api-reference/batch/object
RUNNING_STATES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
FINISHED_STATES = frozenset({"completed", "expired", "cancelled"})


@dataclass(frozen=True)
class BatchState:
    status: str
    answers: list[LLMResponse | LLMError] | None = None  # set once finished, in request order
    error: str | None = None  # why the batch as a whole failed

    @property
    def running(self) -> bool:
        return self.status in RUNNING_STATES


class OpenAIBatchClient:
    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        endpoint: Endpoint = "completions",
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.backend = backend
        self.label = backend_label(backend)
        self.endpoint = endpoint
        self.model = model
        self._api_key = api_key
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or "not-needed",
            timeout=timeout_s,
            max_retries=max_retries,
        )

    @property
    def url(self) -> str:
        return "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"

    def request_lines(self, requests: list[LLMRequest]) -> bytes:
        """The batch input file: one request per line, its position as custom_id."""
        lines = []
        for n, request in enumerate(requests):
            body = request_body(request, self.model, self.endpoint)
            line = {"custom_id": str(n), "method": "POST", "url": self.url, "body": body}
            lines.append(json.dumps(line, ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode()

    def submit(self, requests: list[LLMRequest], key: str) -> str:
        """Upload the requests and start a batch; returns its id. `key` goes into the batch's
        metadata so a submission whose id was never stored can be found again (`find`)."""
        try:
            uploaded = self._client.files.create(
                file=("requests.jsonl", self.request_lines(requests)), purpose="batch"
            )
            batch = self._client.batches.create(
                input_file_id=uploaded.id,
                endpoint=self.url,  # type: ignore[arg-type]
                completion_window="24h",
                metadata={"selfinstruct_key": key},
            )
        except openai.NotFoundError as exc:
            raise LLMPermanentError(
                f"{self.label} does not offer the Batch API (HTTP 404 on /files or /batches); "
                "turn batch_api off for this backend"
            ) from exc
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        return batch.id

    def find(self, key: str, spent: Collection[str] = ()) -> str | None:
        """A batch submitted earlier with this key, newest first, if the server still lists it;
        `spent`: ids of batches whose answers were all errors, which a retry must not reuse."""
        try:
            for batch in self._client.batches.list(limit=100):
                if (batch.metadata or {}).get("selfinstruct_key") == key and batch.id not in spent:
                    return batch.id
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        return None

    def poll(self, batch_id: str, request_count: int) -> BatchState:
        try:
            batch = self._client.batches.retrieve(batch_id)
            if batch.status in RUNNING_STATES:
                return BatchState(batch.status)
            if batch.status not in FINISHED_STATES:  # failed: the input was refused as a whole
                errors = getattr(batch.errors, "data", None) or []
                reasons = "; ".join(
                    scrub(str(getattr(e, "message", e)), self.base_url, self._api_key)
                    for e in errors[:3]
                )
                return BatchState(batch.status, error=reasons or f"batch {batch.status}")
            answers: list[LLMResponse | LLMError] = [
                LLMTransientError(f"batch {batch_id} ended ({batch.status}) without this request")
            ] * request_count
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    self._read_answers(self._client.files.content(file_id).text, answers)
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        return BatchState(batch.status, answers=answers)

    def cancel(self, batch_id: str) -> str:
        """Ask the server to stop a batch nobody will read; returns the state it is in now
        (`cancelling`, or the end it had already reached, or `gone` if the server forgot it)."""
        try:
            return self._client.batches.cancel(batch_id).status
        except openai.NotFoundError:
            return "gone"
        except (openai.BadRequestError, openai.ConflictError):  # it ended before the cancel came
            return self._status(batch_id)
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc

    def _status(self, batch_id: str) -> str:
        try:
            return self._client.batches.retrieve(batch_id).status
        except openai.NotFoundError:
            return "gone"
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc

    def _read_answers(self, text: str, answers: list[LLMResponse | LLMError]) -> None:
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                position = int(item["custom_id"])
            except (ValueError, KeyError, TypeError):
                continue  # not one of ours: nothing to attach it to
            if 0 <= position < len(answers):
                answers[position] = self._answer(item)

    def _answer(self, item: dict[str, Any]) -> LLMResponse | LLMError:
        response = item.get("response") or {}
        status = int(response.get("status_code") or 0)
        body = response.get("body") or {}
        if item.get("error") or status >= 400 or not isinstance(body, dict):
            error = item.get("error") or (body.get("error") if isinstance(body, dict) else None)
            message = error.get("message") if isinstance(error, dict) else str(error or "")
            failure = HTTPStatusError(status or 500, str(message or "")[:300], None)
            return translate_error(failure, self.backend, self._api_key, self.base_url)
        try:
            return completion_response(body, self.endpoint, self.backend)
        except LLMTransientError as exc:
            return exc

    def _translate(self, exc: openai.OpenAIError) -> LLMTransientError | LLMPermanentError:
        if isinstance(exc, openai.APIStatusError):
            detail = (
                error_message(exc.body) if isinstance(exc.body, dict) else str(exc.message)[:300]
            )
            failure = HTTPStatusError(exc.status_code, detail, None)
            return translate_error(failure, self.backend, self._api_key, self.base_url)
        if isinstance(exc, openai.APITimeoutError):
            return LLMTransientError(f"{self.label}: request timed out")
        if isinstance(exc, openai.APIConnectionError):
            return LLMTransientError(f"{self.label}: cannot connect")
        return LLMTransientError(f"{self.label}: {type(exc).__name__}")
