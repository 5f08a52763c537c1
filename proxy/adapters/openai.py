"""Adapter for OpenAI-compatible providers: OpenAI, DeepSeek, vLLM, Ollama, aggregators.

The body goes upstream as the client sent it (with the provider's model name), so every
parameter, including ones Tollway has never heard of, reaches the provider unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from config.errors import UpstreamError
from proxy.adapters.base import (
    Completion,
    UpstreamStream,
    bad_response,
    cut_short,
    decode_chunk,
    json_of,
    load_event,
    post,
    secret,
    usage_from_openai,
)
from proxy.route import Target
from proxy.translate.responses import usage_from_response

# The events that end a Responses stream.
RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class _Stream(UpstreamStream):
    as_bytes = False  # set by take_bytes()

    def take_bytes(self) -> bool:
        """From the next chunk on, yield the chunks that carry no error as the provider's
        own JSON bytes, in lists of those that arrived together, for a reader that
        rewrites them without parsing and sends each list on in one write (``proxy.relay``)."""
        self.as_bytes = True
        return True

    def chunks(self) -> Iterator[dict[str, Any]]:
        for batch in self.raw_batches():
            plain: list[bytes] = []
            for payload in batch:
                if payload.strip() == b"[DONE]":
                    if plain:
                        yield plain  # type: ignore[misc]  # bytes, as take_bytes() asked
                    return
                if self.as_bytes and b'"error"' not in payload:
                    plain.append(payload)
                    continue
                if plain:
                    yield plain  # type: ignore[misc]
                    plain = []
                yield decode_chunk(payload.decode("utf-8", "replace"))
            if plain:
                yield plain  # type: ignore[misc]
        raise cut_short()


class _ResponsesStream(UpstreamStream):
    """A native Responses stream: its typed events, as they come, until the terminal one."""

    def chunks(self) -> Iterator[dict[str, Any]]:
        for payload in self.payloads():
            if payload.strip() == "[DONE]":
                break
            event = load_event(payload)
            if event.get("type") == "error":
                message = str(event.get("message") or "unknown error")[:500]
                raise UpstreamError(f"The upstream provider failed mid-stream: {message}")
            yield event
            if event.get("type") in RESPONSES_TERMINAL:
                return
        raise cut_short()


class OpenAIAdapter:
    kind = "openai"

    def _headers(self, target: Target) -> dict[str, str]:
        key = secret(target)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _url(self, target: Target, path: str) -> str:
        return target.base_url.rstrip("/") + path

    def _complete(self, target: Target, path: str, body: dict[str, Any], list_key: str) -> Completion:
        response = post(target, self._url(target, path), body, self._headers(target), stream=False)
        data = json_of(target, response)
        if not isinstance(data.get(list_key), list):
            raise bad_response(target, response.content)
        return Completion(body=data, usage=usage_from_openai(data.get("usage")))

    def _stream(self, target: Target, path: str, body: dict[str, Any]) -> _Stream:
        response = post(target, self._url(target, path), body, self._headers(target), stream=True)
        return _Stream(target, response)

    def complete(self, target: Target, body: dict[str, Any]) -> Completion:
        return self._complete(target, "/chat/completions", body, "choices")

    def stream(self, target: Target, body: dict[str, Any]) -> _Stream:
        return self._stream(target, "/chat/completions", body)

    def text_complete(self, target: Target, body: dict[str, Any]) -> Completion:
        return self._complete(target, "/completions", body, "choices")

    def text_stream(self, target: Target, body: dict[str, Any]) -> _Stream:
        return self._stream(target, "/completions", body)

    def embed(self, target: Target, body: dict[str, Any]) -> Completion:
        return self._complete(target, "/embeddings", body, "data")

    # The Responses API, for a provider that serves it (Provider.serves_responses).

    def responses(self, target: Target, body: dict[str, Any]) -> Completion:
        response = post(target, self._url(target, "/responses"), body, self._headers(target), stream=False)
        data = json_of(target, response)
        if data.get("object") != "response" or not isinstance(data.get("output"), list):
            raise bad_response(target, response.content)
        return Completion(body=data, usage=usage_from_response(data.get("usage")))

    def responses_stream(self, target: Target, body: dict[str, Any]) -> _ResponsesStream:
        response = post(target, self._url(target, "/responses"), body, self._headers(target), stream=True)
        return _ResponsesStream(target, response)
