"""One LLM client per process and backend configuration, shared by the task's threads."""

from __future__ import annotations

from functools import lru_cache

from app.config import get_settings
from app.llm.base import LLMClient
from app.llm.openai_compat import build_llm_client
from app.selfinstruct.options import GenerationOptions


@lru_cache(maxsize=32)
def _client(backend: str | None, model: str | None, endpoint: str) -> LLMClient:
    options = GenerationOptions(backend=backend, model=model, endpoint=endpoint)  # type: ignore[arg-type]
    return build_llm_client(get_settings(), options)


def llm_for(options: GenerationOptions) -> LLMClient:
    return _client(options.backend, options.model, options.endpoint)


def reset_llm_clients() -> None:
    _client.cache_clear()
