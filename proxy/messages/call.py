"""Stage 5 for the Messages API: the upstream call, by the deployment's kind.

* **anthropic**: the client's body, with the deployment's model name, to the provider's
  ``/messages`` with the client's ``anthropic-version`` and ``anthropic-beta``: nothing is
  lost (``cache_control``, thinking signatures, documents, server tools, betas). The
  answer and its events come back as Anthropic sent them.
* **any other kind**: the body translated to OpenAI chat (``proxy.translate.messages``),
  through the kind's own adapter, and its answer translated back.

Either way a stream is an iterator of Anthropic event dicts, with the usage it has seen,
for the relay; retries happen before its first event (``proxy.attempts``), as for chat.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
from django.http import HttpResponseBase

from billing.pricing import TokenUsage
from config.errors import ErrorCode, UpstreamError
from proxy import adapters, attempts, meter
from proxy.adapters.base import (
    ChunkStream,
    UpstreamStream,
    bad_response,
    cut_short,
    json_of,
    load_event,
    post,
    secret,
    usage_from_openai,
)
from proxy.messages import relay
from proxy.messages.parse import MessagesRequest
from proxy.route import Target
from proxy.translate import anthropic
from proxy.translate import messages as translate

ANTHROPIC = "anthropic"


def _headers(target: Target, chat: MessagesRequest) -> dict[str, str]:
    headers = {"x-api-key": secret(target), "anthropic-version": chat.version}
    if chat.betas:
        headers["anthropic-beta"] = chat.betas
    return headers


def _native_body(chat: MessagesRequest, target: Target) -> dict[str, Any]:
    return {**chat.body, "model": target.upstream_model}


class NativeStream(UpstreamStream):
    """An Anthropic stream, event for event, noting the usage it carries: the input side
    in ``message_start``, the cumulative total in each ``message_delta``."""

    def __init__(self, target: Target, response: httpx.Response) -> None:
        super().__init__(target, response)
        self.raw_usage: dict[str, Any] = {}
        self.usage: TokenUsage | None = None  # final once the stop reason has come
        self.text: list[str] = []

    def chunks(self) -> Iterator[dict[str, Any]]:
        for payload in self.payloads():
            event = load_event(payload)
            failure = anthropic.stream_error(event)
            if failure is not None:
                message, overloaded = failure
                raise UpstreamError(
                    f"The upstream provider failed mid-stream: {message}",
                    code=ErrorCode.UPSTREAM_OVERLOADED if overloaded else ErrorCode.UPSTREAM_UNAVAILABLE,
                )
            self._note(event)
            yield event
            if event.get("type") == "message_stop":
                return
        raise cut_short()

    def _note(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            self.raw_usage.update((event.get("message") or {}).get("usage") or {})
        elif kind == "message_delta":
            self.raw_usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            if (event.get("delta") or {}).get("stop_reason"):
                self.usage = anthropic.usage_of(self.raw_usage)
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            piece = delta.get("text") or delta.get("thinking") or delta.get("partial_json")
            if isinstance(piece, str):
                self.text.append(piece)

    def partial_usage(self) -> TokenUsage | None:
        return anthropic.usage_of(self.raw_usage)


class TranslatedStream:
    """An adapter's OpenAI chunks as Anthropic events (``translate.messages.Events``)."""

    def __init__(self, stream: ChunkStream, call: meter.Call) -> None:
        self.stream = stream
        self.call = call
        self.usage: TokenUsage | None = None
        self.text: list[str] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        events = translate.Events(self.call.route.entry.name)
        for chunk in self.stream:
            usage = usage_from_openai(chunk.get("usage"))
            if usage is not None:
                self.usage = usage
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                self.text.extend(str(delta.get(k) or "") for k in ("content", "reasoning_content"))
                for tool in delta.get("tool_calls") or []:
                    self.text.append(str((tool.get("function") or {}).get("arguments") or ""))
            yield from events.chunk(chunk)
        # Adapters end every stream with the usage; an OpenAI-compatible server may not.
        yield from events.finish(self.usage or self.estimate())

    def estimate(self) -> TokenUsage:
        known = self.stream.partial_usage()
        guess = meter.estimate(self.call.chat, "".join(self.text))
        if known is None:
            return guess
        return TokenUsage(
            input_tokens=known.input_tokens,
            output_tokens=max(known.output_tokens, guess.output_tokens),
            cached_input_tokens=known.cached_input_tokens,
            cache_write_tokens=known.cache_write_tokens,
        )

    def partial_usage(self) -> TokenUsage | None:
        return self.stream.partial_usage()

    def close(self) -> None:
        self.stream.close()


def _url(target: Target, path: str = "/messages") -> str:
    return target.base_url.rstrip("/") + path


def answer(call: meter.Call, adapter: adapters.Adapter, _: dict[str, Any]) -> HttpResponseBase:
    """One attempt at the call on ``call.route``: what ``proxy.views._run`` runs per attempt."""
    target = call.route.target
    chat = call.chat
    assert isinstance(chat, MessagesRequest)
    if target.kind == ANTHROPIC:
        response = post(target, _url(target), _native_body(chat, target), _headers(target, chat), stream=chat.stream)
        if chat.stream:
            return _streamed(call, NativeStream(target, response))
        data = json_of(target, response)
        if data.get("type") != "message":
            raise bad_response(target, response.content)
        return _completed(call, data, anthropic.usage_of(data.get("usage")), native=True)
    body = translate.request(chat.body, model=target.upstream_model, stream=chat.stream)
    if chat.stream:
        return _streamed(call, TranslatedStream(adapter.stream(target, body), call))
    completion = adapter.complete(target, body)
    usage = completion.usage
    message = translate.response(
        completion.body, usage or TokenUsage(input_tokens=0, output_tokens=0), model=call.route.entry.name
    )
    return _completed(call, message, usage, native=False)


def _completed(
    call: meter.Call, message: dict[str, Any], usage: TokenUsage | None, *, native: bool
) -> HttpResponseBase:
    call.upstream_done = time.monotonic()
    call.answered = True
    return relay.json_response(call, message, usage, native=native)


def _streamed(call: meter.Call, source: NativeStream | TranslatedStream) -> HttpResponseBase:
    primed = attempts.primed(source)  # the provider is answering: from here the call is billable
    call.answered = True
    return relay.stream_response(call, primed, source)


def count_tokens(target: Target, chat: MessagesRequest) -> int:
    """The provider's own count of an Anthropic deployment's prompt (not billed)."""
    body = {k: v for k, v in _native_body(chat, target).items() if k not in ("max_tokens", "stream")}
    response = post(target, _url(target, "/messages/count_tokens"), body, _headers(target, chat), stream=False)
    count = json_of(target, response).get("input_tokens")
    if not isinstance(count, int):
        raise bad_response(target, response.content)
    return count
