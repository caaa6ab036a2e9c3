"""Clients for OpenAI-compatible LLM servers."""
