"""One LLM client per process and backend configuration, shared by the task's threads."""

from __future__ import annotations

import threading

from app.config import DEFAULT_BACKEND, get_settings
from app.llm.base import LLMClient, LLMPermanentError
from app.llm.batch_api import OpenAIBatchClient
from app.llm.openai_compat import build_llm_client
from app.selfinstruct.options import GenerationOptions

_clients: dict[tuple[str | None, str | None, str], LLMClient] = {}
_lock = threading.Lock()


def llm_for(options: GenerationOptions) -> LLMClient:
    key = (options.backend, options.model, options.endpoint)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = build_llm_client(get_settings(), options)
        return client


def batch_client_for(options: GenerationOptions) -> OpenAIBatchClient:
    """A Batch API client for the job's backend; the model must be known, so it is resolved
    (from the server's list) through the online client when neither job nor backend names it."""
    settings = get_settings()
    backend = settings.backend(options.backend)
    if backend is None:
        raise LLMPermanentError("no LLM backend configured: set OPENAI_BASE_URL")
    model = options.model or backend.default_model or llm_for(options).model
    return OpenAIBatchClient(
        base_url=backend.base_url,
        api_key=backend.api_key.get_secret_value(),
        model=model,
        endpoint=options.endpoint,
        timeout_s=settings.llm_timeout_s,
        max_retries=settings.llm_max_retries,
        backend=options.backend or DEFAULT_BACKEND,
    )


def reset_llm_clients() -> None:
    """Forget (and close) every client, e.g. after the settings changed."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        close = getattr(client, "close", None)
        if close is not None:
            close()
