"""The built-in mock provider: answers in-process from ``proxy.mockgen``, no network.

Pacing comes from ``TOLLWAY_MOCK_LATENCY_MS`` and ``TOLLWAY_MOCK_CHUNK_DELAY_MS``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings

from billing.pricing import TokenUsage
from proxy import mockgen
from proxy.adapters.base import Completion, usage_from_openai
from proxy.route import Target


class _Stream:
    def __init__(self, chunks: Iterator[dict[str, Any]]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._chunks

    def close(self) -> None:
        pass

    def partial_usage(self) -> TokenUsage | None:
        return None


class MockAdapter:
    kind = "mock"

    def _wait(self) -> None:
        latency = settings.TOLLWAY["MOCK_LATENCY_MS"]
        if latency:
            time.sleep(latency / 1000)

    def _delay(self) -> float:
        return float(settings.TOLLWAY["MOCK_CHUNK_DELAY_MS"]) / 1000

    def complete(self, target: Target, body: dict[str, Any]) -> Completion:
        self._wait()
        data = mockgen.completion(body, model=target.upstream_model)
        return Completion(body=data, usage=usage_from_openai(data["usage"]))

    def stream(self, target: Target, body: dict[str, Any]) -> _Stream:
        self._wait()
        return _Stream(mockgen.chunks(body, model=target.upstream_model, chunk_delay=self._delay()))

    def text_complete(self, target: Target, body: dict[str, Any]) -> Completion:
        self._wait()
        data = mockgen.text_completion(body, model=target.upstream_model)
        return Completion(body=data, usage=usage_from_openai(data["usage"]))

    def text_stream(self, target: Target, body: dict[str, Any]) -> _Stream:
        self._wait()
        return _Stream(mockgen.text_chunks(body, model=target.upstream_model, chunk_delay=self._delay()))

    def embed(self, target: Target, body: dict[str, Any]) -> Completion:
        self._wait()
        data = mockgen.embeddings(body, model=target.upstream_model)
        return Completion(body=data, usage=usage_from_openai(data["usage"]))
