"""One module per provider kind, behind ``proxy.adapters.base.Adapter``."""

from __future__ import annotations

from config.errors import ErrorCode, UpstreamError
from proxy.adapters.base import Adapter
from proxy.adapters.mock import MockAdapter
from proxy.adapters.openai import OpenAIAdapter

_ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "mock": MockAdapter(),
}


def for_kind(kind: str) -> Adapter:
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        # Anthropic and Gemini adapters land with the API-surface issue.
        raise UpstreamError(f"No adapter for provider kind '{kind}' yet.", code=ErrorCode.NO_DEPLOYMENT, status=503)
    return adapter
