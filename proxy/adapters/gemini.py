"""Adapter for Google's Gemini API (``generateContent``, ``streamGenerateContent?alt=sse``
and ``batchEmbedContents`` under ``{base_url}/models/{model}``), spoken as OpenAI.

The HTTP side only: what is translated, and how, is ``proxy.translate.gemini`` (and
``proxy.translate.params`` for the parameters Gemini has no equivalent of).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from billing.pricing import TokenUsage
from proxy.adapters.base import (
    Completion,
    Unsupported,
    UpstreamStream,
    bad_response,
    cut_short,
    decode_chunk,
    json_of,
    post,
    secret,
)
from proxy.route import Target
from proxy.translate import gemini, params


def translate_request(target: Target, body: dict[str, Any]) -> dict[str, Any]:
    """The generateContent request for an OpenAI chat ``body``, after the parameter policy."""
    return gemini.request(params.apply(body, kind="gemini", drop=target.drop_params), model=target.upstream_model)


class _Stream(UpstreamStream):
    """Each SSE event is a whole GenerateContentResponse: new text, cumulative usage."""

    translator: gemini.Chunks | None = None

    def partial_usage(self) -> TokenUsage | None:
        return self.translator.usage if self.translator else None

    def chunks(self) -> Iterator[dict[str, Any]]:
        self.translator = translator = gemini.Chunks(self.target.upstream_model)
        for payload in self.payloads():
            # Gemini reports a mid-stream failure as {"error": ...}
            yield from translator.event(decode_chunk(payload))
        try:
            yield from translator.end()
        except ValueError:
            raise cut_short() from None


class GeminiAdapter(Unsupported):
    kind = "gemini"

    def _headers(self, target: Target) -> dict[str, str]:
        return {"x-goog-api-key": secret(target)}

    def _url(self, target: Target, method: str) -> str:
        return f"{target.base_url.rstrip('/')}/models/{target.upstream_model}:{method}"

    def complete(self, target: Target, body: dict[str, Any]) -> Completion:
        request = translate_request(target, body)
        response = post(target, self._url(target, "generateContent"), request, self._headers(target), stream=False)
        data = json_of(target, response)
        if not isinstance(data.get("candidates"), list) and not gemini.blocked(data):
            raise bad_response(target, response.content)
        answer, usage = gemini.response(data, model=target.upstream_model)
        return Completion(body=answer, usage=usage)

    def stream(self, target: Target, body: dict[str, Any]) -> _Stream:
        url = self._url(target, "streamGenerateContent") + "?alt=sse"
        return _Stream(target, post(target, url, translate_request(target, body), self._headers(target), stream=True))

    def embed(self, target: Target, body: dict[str, Any]) -> Completion:
        request = gemini.embed_request(body, model=target.upstream_model)
        response = post(target, self._url(target, "batchEmbedContents"), request, self._headers(target), stream=False)
        answer = gemini.embed_response(json_of(target, response), body, model=target.upstream_model)
        if answer is None:
            raise bad_response(target, response.content)
        # batchEmbedContents reports no usage: Tollway counts the input
        return Completion(body=answer, usage=None)
