"""Adapter for Anthropic's Messages API (``POST {base_url}/messages``), spoken as OpenAI chat.

The HTTP side only: what is translated, and how, is ``proxy.translate.anthropic`` (and
``proxy.translate.params`` for the parameters Anthropic has no equivalent of).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from billing.pricing import TokenUsage
from config.errors import ErrorCode, UpstreamError
from proxy.adapters.base import (
    Completion,
    Unsupported,
    UpstreamStream,
    bad_response,
    cut_short,
    json_of,
    load_event,
    post,
    secret,
)
from proxy.route import Target
from proxy.translate import anthropic, params

API_VERSION = "2023-06-01"


def translate_request(target: Target, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The Messages request for an OpenAI chat ``body``, after the parameter policy."""
    return anthropic.request(params.apply(body, kind="anthropic", drop=target.drop_params), stream=stream)


class _Stream(UpstreamStream):
    """Anthropic's typed events as OpenAI chunks, ending with a usage chunk."""

    translator: anthropic.Chunks | None = None

    def partial_usage(self) -> TokenUsage | None:
        return anthropic.usage_of(self.translator.raw_usage) if self.translator else None

    def chunks(self) -> Iterator[dict[str, Any]]:
        self.translator = translator = anthropic.Chunks(self.target.upstream_model)
        for payload in self.payloads():
            event = load_event(payload)
            failure = anthropic.stream_error(event)
            if failure is not None:
                message, overloaded = failure
                raise UpstreamError(
                    f"The upstream provider failed mid-stream: {message}",
                    code=ErrorCode.UPSTREAM_OVERLOADED if overloaded else ErrorCode.UPSTREAM_UNAVAILABLE,
                )
            yield from translator.event(event)
            if translator.done:
                return
        raise cut_short()


class AnthropicAdapter(Unsupported):
    kind = "anthropic"

    def _headers(self, target: Target) -> dict[str, str]:
        return {"x-api-key": secret(target), "anthropic-version": API_VERSION}

    def _url(self, target: Target) -> str:
        return target.base_url.rstrip("/") + "/messages"

    def complete(self, target: Target, body: dict[str, Any]) -> Completion:
        request = translate_request(target, body, stream=False)
        response = post(target, self._url(target), request, self._headers(target), stream=False)
        data = json_of(target, response)
        if data.get("type") != "message":
            raise bad_response(target, response.content)
        answer, usage = anthropic.response(data, model=target.upstream_model)
        return Completion(body=answer, usage=usage)

    def stream(self, target: Target, body: dict[str, Any]) -> _Stream:
        request = translate_request(target, body, stream=True)
        return _Stream(target, post(target, self._url(target), request, self._headers(target), stream=True))
