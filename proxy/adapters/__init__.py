"""One module per provider kind, behind ``proxy.adapters.base.Adapter``."""

from __future__ import annotations

from config.errors import ErrorCode, UpstreamError
from proxy.adapters.anthropic import AnthropicAdapter
from proxy.adapters.base import Adapter, Completion
from proxy.adapters.gemini import GeminiAdapter
from proxy.adapters.mock import MockAdapter
from proxy.adapters.openai import OpenAIAdapter

__all__ = ["Adapter", "Completion", "for_kind"]

_ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
    "mock": MockAdapter(),
}


def for_kind(kind: str) -> Adapter:
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        raise UpstreamError(f"No adapter for provider kind '{kind}'.", code=ErrorCode.NO_DEPLOYMENT, status=503)
    return adapter
