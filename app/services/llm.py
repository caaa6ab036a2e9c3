"""One LLM client per process and backend configuration, shared by the task's threads."""

from __future__ import annotations

import threading

from app.config import get_settings
from app.llm.base import LLMClient
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


def reset_llm_clients() -> None:
    """Forget (and close) every client, e.g. after the settings changed."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        close = getattr(client, "close", None)
        if close is not None:
            close()
