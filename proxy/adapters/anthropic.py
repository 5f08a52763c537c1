"""Adapter for Anthropic's Messages API (``POST {base_url}/messages``), spoken as OpenAI chat.

Requests: system and developer messages become ``system``; images become image blocks;
assistant ``tool_calls`` become ``tool_use`` blocks and ``tool`` messages ``tool_result``
blocks; ``tools``/``tool_choice``/``parallel_tool_calls``, ``stop``, ``max_tokens``,
``temperature``, ``top_p`` and ``user`` are translated. ``response_format`` becomes an
instruction in ``system`` (Anthropic has no JSON mode). ``n`` > 1 and ``logprobs`` have
no Anthropic equivalent and are refused; ``seed`` and penalties are ignored.

Usage: ``input_tokens`` excludes cached tokens, so the prompt total is ``input_tokens +
cache_read_input_tokens + cache_creation_input_tokens``. In a stream, ``message_start``
carries the input side and ``message_delta.usage`` is cumulative: the last value wins.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

from billing.pricing import TokenUsage
from config.errors import ErrorCode, InvalidRequest, UpstreamError
from proxy.adapters.base import (
    Completion,
    Unsupported,
    UpstreamStream,
    bad_response,
    cut_short,
    json_of,
    load_event,
    openai_usage,
    post,
    secret,
)
from proxy.route import Target

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI does not

FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return ""


def _image(url: str) -> dict[str, Any]:
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if isinstance(url, str):
                blocks.append(_image(url))
    return blocks


def _arguments(raw: Any) -> Any:
    try:
        return json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        raise InvalidRequest("A tool call's 'arguments' is not valid JSON.", param="messages") from None


def _messages(messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        # Anthropic wants alternating turns: merge consecutive ones (e.g. several tool results).
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
        elif role == "user":
            add("user", _blocks(message.get("content")))
        elif role == "assistant":
            blocks = _blocks(message.get("content"))
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "input": _arguments(function.get("arguments")),
                    }
                )
            add("assistant", blocks)
        elif role in ("tool", "function"):
            add(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": message.get("tool_call_id") or message.get("name"),
                        "content": _text(message.get("content")),
                    }
                ],
            )
    return system, out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    result: dict[str, Any] | None
    if choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif choice == "none":
        result = {"type": "none"}
    elif isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        result = {"type": "tool", "name": choice["function"].get("name")}
    else:
        result = None
    if parallel is False:
        result = result or {"type": "auto"}
        if result["type"] != "none":
            result["disable_parallel_tool_use"] = True
    return result


def translate_request(body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """An OpenAI chat request as an Anthropic Messages request."""
    if (body.get("n") or 1) > 1:
        raise InvalidRequest("This model's provider (Anthropic) does not support n > 1.", param="n")
    if body.get("logprobs"):
        raise InvalidRequest("This model's provider (Anthropic) does not return logprobs.", param="logprobs")
    system, messages = _messages(body["messages"])
    out: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS,
    }
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") in ("json_object", "json_schema"):
        instruction = "Respond with a single JSON object and nothing else."
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema is not None:
            instruction += " It must match this JSON schema: " + json.dumps(schema, separators=(",", ":"))
        system.append(instruction)
    if system:
        out["system"] = "\n\n".join(s for s in system if s)
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("user"):
        out["metadata"] = {"user_id": body["user"]}
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            {
                "name": t["function"]["name"],
                **({"description": t["function"]["description"]} if t["function"].get("description") else {}),
                "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}},
            }
            for t in tools
            if isinstance(t, Mapping) and isinstance(t.get("function"), Mapping)
        ]
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and tools:
        out["tool_choice"] = choice
    if stream:
        out["stream"] = True
    return out


def usage_of(usage: Any) -> TokenUsage | None:
    if not isinstance(usage, Mapping) or not isinstance(usage.get("output_tokens"), int):
        return None
    read = usage.get("cache_read_input_tokens") or 0
    write = usage.get("cache_creation_input_tokens") or 0
    return TokenUsage(
        input_tokens=(usage.get("input_tokens") or 0) + read + write,
        output_tokens=usage["output_tokens"],
        cached_input_tokens=read,
        cache_write_tokens=write,
    )


def translate_response(data: dict[str, Any], model: str) -> Completion:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    usage = usage_of(data.get("usage"))
    body: dict[str, Any] = {
        "id": data.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": FINISH.get(str(data.get("stop_reason")), "stop"),
            }
        ],
    }
    if usage is not None:
        body["usage"] = openai_usage(usage)
    return Completion(body=body, usage=usage)


class _Stream(UpstreamStream):
    """Anthropic's typed events as OpenAI chunks, ending with a usage chunk."""

    raw_usage: dict[str, Any] | None = None

    def partial_usage(self) -> TokenUsage | None:
        return usage_of(self.raw_usage)

    def chunks(self) -> Iterator[dict[str, Any]]:
        base: dict[str, Any] = {"id": "", "object": "chat.completion.chunk", "created": int(time.time())}
        base["model"] = self.target.upstream_model
        raw_usage: dict[str, Any] = {}
        self.raw_usage = raw_usage
        tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        for payload in self.payloads():
            event = load_event(payload)
            kind = event.get("type")
            if kind == "message_start":
                message = event.get("message") or {}
                base["id"] = message.get("id", "")
                raw_usage.update(message.get("usage") or {})
                yield chunk({"role": "assistant", "content": ""})
            elif kind == "content_block_start":
                block = event.get("content_block") or {}
                if block.get("type") == "text" and block.get("text"):
                    yield chunk({"content": block["text"]})
                elif block.get("type") == "tool_use":
                    index = tool_index.setdefault(event.get("index", 0), len(tool_index))
                    yield chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "id": block.get("id"),
                                    "type": "function",
                                    "function": {"name": block.get("name"), "arguments": ""},
                                }
                            ]
                        }
                    )
            elif kind == "content_block_delta":
                delta = event.get("delta") or {}
                if delta.get("type") == "text_delta":
                    yield chunk({"content": delta.get("text", "")})
                elif delta.get("type") == "input_json_delta":
                    index = tool_index.get(event.get("index", 0), 0)
                    yield chunk(
                        {"tool_calls": [{"index": index, "function": {"arguments": delta.get("partial_json", "")}}]}
                    )
            elif kind == "message_delta":
                # Cumulative counts: overwrite, never add.
                raw_usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
                stop_reason = (event.get("delta") or {}).get("stop_reason")
                if stop_reason:
                    yield chunk({}, FINISH.get(stop_reason, "stop"))
            elif kind == "message_stop":
                usage = usage_of(raw_usage)
                if usage is not None:
                    yield {**base, "choices": [], "usage": openai_usage(usage)}
                return
            elif kind == "error":
                error = event.get("error") or {}
                overloaded = error.get("type") == "overloaded_error"
                raise UpstreamError(
                    f"The upstream provider failed mid-stream: {str(error.get('message') or 'unknown error')[:500]}",
                    code=ErrorCode.UPSTREAM_OVERLOADED if overloaded else ErrorCode.UPSTREAM_UNAVAILABLE,
                )
            # ping, thinking deltas and unknown future events are skipped, as Anthropic's
            # versioning policy asks; thinking is still counted in output_tokens.
        raise cut_short()


class AnthropicAdapter(Unsupported):
    kind = "anthropic"

    def _headers(self, target: Target) -> dict[str, str]:
        return {"x-api-key": secret(target), "anthropic-version": API_VERSION}

    def _url(self, target: Target) -> str:
        return target.base_url.rstrip("/") + "/messages"

    def complete(self, target: Target, body: dict[str, Any]) -> Completion:
        request = translate_request(body, stream=False)
        response = post(target, self._url(target), request, self._headers(target), stream=False)
        data = json_of(target, response)
        if data.get("type") != "message":
            raise bad_response(target, response.content)
        return translate_response(data, target.upstream_model)

    def stream(self, target: Target, body: dict[str, Any]) -> _Stream:
        request = translate_request(body, stream=True)
        return _Stream(target, post(target, self._url(target), request, self._headers(target), stream=True))
