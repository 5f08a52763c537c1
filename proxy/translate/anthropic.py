"""OpenAI chat ⇄ Anthropic Messages (``POST /v1/messages``).

Requests (:func:`request`): system and developer messages become ``system``; images
become image blocks; assistant ``tool_calls`` become ``tool_use`` blocks and ``tool``
messages ``tool_result`` blocks; an assistant message's ``thinking_blocks`` (as Tollway
and LiteLLM return them) go back first in its content, signatures intact, as Anthropic
requires when thinking and tools meet. ``tools``/``tool_choice``/``parallel_tool_calls``,
``stop``, ``max_tokens``, ``temperature``, ``top_p``, ``top_k`` and ``user`` are
translated; ``reasoning_effort`` becomes a ``thinking`` budget.

``response_format`` with a JSON schema is enforced: models with structured outputs
(Claude 4.5 and later, and Opus 4.1) get ``output_config.format``; older ones a tool,
:data:`ANSWER_TOOL`, whose input schema is the schema, forced through ``tool_choice``.
Its input comes back as ``message.content``, never as a tool call. ``json_object`` has
no schema to enforce, so it stays an instruction in ``system``.

Answers (:func:`response`, :class:`Chunks`): text blocks are the content; ``thinking``
blocks are ``reasoning_content`` (on the message, and on each delta in a stream) and are
also kept whole, signature included, in ``thinking_blocks``, so the next turn can send
them back; ``message.refusal`` is ``null`` as OpenAI's schema requires.

Usage: ``input_tokens`` excludes cached tokens, so the prompt total is ``input_tokens +
cache_read_input_tokens + cache_creation_input_tokens``. In a stream, ``message_start``
carries the input side and ``message_delta.usage`` is cumulative: the last value wins.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

from billing.pricing import TokenUsage
from config.errors import InvalidRequest
from proxy.translate.common import (
    arguments,
    effort_of,
    functions,
    json_schema_of,
    json_text,
    openai_usage,
    stop_sequences,
    text_of,
    tool_calls,
)

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI does not
ANSWER_TOOL = "final_answer"
ANSWER_TOOL_DESCRIPTION = "Give your final answer by calling this tool: its input is the answer."
FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# reasoning_effort → thinking.budget_tokens (LiteLLM's budgets; 1024 is Anthropic's least).
THINKING_BUDGET = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192}
_CLAUDE_VERSION = re.compile(r"claude-(?:opus|sonnet|haiku)-(\d+)(?:-(\d{1,2}))?(?:\D|$)")


def structured_outputs(model: str) -> bool:
    """Whether ``model`` takes ``output_config.format`` (Claude 4.5 and later, Opus 4.1)."""
    match = _CLAUDE_VERSION.search(model)
    if match is None:
        return False
    version = (int(match.group(1)), int(match.group(2) or 0))
    return version >= (4, 5) or ("opus" in model and version == (4, 1))


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


def _thinking_blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The thinking blocks an earlier answer returned, as Anthropic wants them back: only
    signed ones (Anthropic refuses a thinking block without its signature)."""
    blocks: list[dict[str, Any]] = []
    given = message.get("thinking_blocks")
    for block in given if isinstance(given, list) else []:
        if not isinstance(block, Mapping):
            continue
        if block.get("type") == "thinking" and block.get("signature"):
            blocks.append({"type": "thinking", "thinking": block.get("thinking", ""), "signature": block["signature"]})
        elif block.get("type") == "redacted_thinking" and block.get("data"):
            blocks.append({"type": "redacted_thinking", "data": block["data"]})
    return blocks


def _messages(messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        # Anthropic wants alternating turns: merge consecutive ones (e.g. several tool results).
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for index, message in enumerate(messages):
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
        elif role == "user":
            add("user", _blocks(message.get("content")))
        elif role == "assistant":
            blocks = _thinking_blocks(message) + _blocks(message.get("content"))
            for call in tool_calls(message, index):
                function = call["function"]
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "input": arguments(function.get("arguments")),
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
                        "content": text_of(message.get("content")),
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


def _thinking(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    """``reasoning_effort`` as a thinking budget inside ``max_tokens`` (which, as OpenAI's
    ``max_completion_tokens``, counts the thinking too)."""
    effort = effort_of(body)
    if effort is None or effort == "none":
        return
    if effort not in THINKING_BUDGET:
        raise InvalidRequest(
            f"'reasoning_effort' must be one of none, {', '.join(THINKING_BUDGET)}; got {effort!r}.",
            param="reasoning_effort",
        )
    budget = THINKING_BUDGET[effort]
    if not (body.get("max_completion_tokens") or body.get("max_tokens")):
        out["max_tokens"] = budget + DEFAULT_MAX_TOKENS  # room to think, and to answer
    elif out["max_tokens"] <= budget:
        budget = out["max_tokens"] - 1
    if budget < THINKING_BUDGET["minimal"]:
        raise InvalidRequest(
            f"With 'reasoning_effort', Anthropic needs room to think: set max_completion_tokens above "
            f"{THINKING_BUDGET['minimal']}.",
            param="max_completion_tokens",
        )
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _response_format(body: Mapping[str, Any], out: dict[str, Any], system: list[str]) -> None:
    response_format = body.get("response_format")
    if not isinstance(response_format, Mapping):
        return
    if response_format.get("type") == "json_object":
        system.append("Respond with a single JSON object and nothing else.")
        return
    if response_format.get("type") != "json_schema":
        return
    schema = json_schema_of(response_format)
    if schema is None:
        raise InvalidRequest(
            "'response_format.json_schema.schema' must be a JSON Schema object.", param="response_format"
        )
    if structured_outputs(str(body["model"])):
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        return
    # Older models: a tool whose input is the answer. Forced, unless thinking is on (which
    # Anthropic allows with auto tool choice only) or the client's own tools may be needed.
    tool = {"name": ANSWER_TOOL, "description": ANSWER_TOOL_DESCRIPTION, "input_schema": schema}
    out["tools"] = [*out.get("tools", []), tool]
    if "thinking" in out or len(out["tools"]) > 1:
        out.setdefault("tool_choice", {"type": "auto" if "thinking" in out else "any"})
    else:
        out["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}


def request(body: Mapping[str, Any], *, stream: bool) -> dict[str, Any]:
    """An OpenAI chat request (with the provider's model name) as a Messages request."""
    system, messages = _messages(body["messages"])
    out: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS,
    }
    if body.get("stop"):
        out["stop_sequences"] = stop_sequences(body["stop"])
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    user = body.get("user") or body.get("safety_identifier")
    if user:
        out["metadata"] = {"user_id": user}
    tools = functions(body.get("tools"))
    if tools:
        out["tools"] = [
            {
                "name": f["name"],
                **({"description": f["description"]} if f.get("description") else {}),
                "input_schema": f.get("parameters") or {"type": "object", "properties": {}},
            }
            for f in tools
        ]
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and tools:
        out["tool_choice"] = choice
    _thinking(body, out)
    _response_format(body, out, system)
    if system:
        out["system"] = "\n\n".join(s for s in system if s)
    if stream:
        out["stream"] = True
    return out


# --- Answers ------------------------------------------------------------------------


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


def _finish(stop_reason: Any, answered: bool, calls: bool) -> str:
    """The finish reason; a stop for the answer tool is the end of the answer, not a call."""
    finish = FINISH.get(str(stop_reason), "stop")
    if finish == "tool_calls" and answered and not calls:
        return "stop"
    return finish


def response(data: Mapping[str, Any], *, model: str) -> tuple[dict[str, Any], TokenUsage | None]:
    """A Messages answer as a ``chat.completion`` body, and its usage."""
    texts: list[str] = []
    thinking: list[str] = []
    thinking_blocks: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    answer: str | None = None
    for block in data.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind in ("thinking", "redacted_thinking"):
            thinking_blocks.append(dict(block))
            if kind == "thinking":
                thinking.append(block.get("thinking", ""))
        elif kind == "tool_use" and block.get("name") == ANSWER_TOOL:
            answer = json_text(block.get("input") or {})
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": json_text(block.get("input") or {})},
                }
            )
    content = answer if answer is not None else "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
    message["refusal"] = None
    if thinking_blocks:
        message["reasoning_content"] = "".join(thinking)
        message["thinking_blocks"] = thinking_blocks
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
                "finish_reason": _finish(data.get("stop_reason"), answer is not None, bool(calls)),
            }
        ],
    }
    if usage is not None:
        body["usage"] = openai_usage(usage)
    return body, usage


class Chunks:
    """Anthropic's typed stream events as ``chat.completion.chunk`` dicts, ending with a
    usage chunk. Feed each decoded event to :meth:`event`; ``done`` is set at
    ``message_stop``; ``raw_usage`` is what the provider has counted so far."""

    def __init__(self, model: str) -> None:
        self.base: dict[str, Any] = {"id": "", "object": "chat.completion.chunk", "created": int(time.time())}
        self.base["model"] = model
        self.raw_usage: dict[str, Any] = {}
        self.done = False
        self.tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self.answer_block: int | None = None  # the block of the answer tool, relayed as content
        self.thinking: dict[int, dict[str, Any]] = {}  # block index -> the thinking block so far

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def event(self, event: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        kind = event.get("type")
        index = event.get("index", 0)
        if kind == "message_start":
            message = event.get("message") or {}
            self.base["id"] = message.get("id", "")
            self.raw_usage.update(message.get("usage") or {})
            yield self._chunk({"role": "assistant", "content": ""})
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "text" and block.get("text"):
                yield self._chunk({"content": block["text"]})
            elif block.get("type") in ("thinking", "redacted_thinking"):
                self.thinking[index] = dict(block)
                if block.get("thinking"):
                    yield self._chunk({"reasoning_content": block["thinking"]})
            elif block.get("type") == "tool_use" and block.get("name") == ANSWER_TOOL:
                self.answer_block = index
            elif block.get("type") == "tool_use":
                position = self.tool_index.setdefault(index, len(self.tool_index))
                call = {"name": block.get("name"), "arguments": ""}
                yield self._chunk(
                    {"tool_calls": [{"index": position, "id": block.get("id"), "type": "function", "function": call}]}
                )
        elif kind == "content_block_delta":
            yield from self._delta(index, event.get("delta") or {})
        elif kind == "content_block_stop" and index in self.thinking:
            # The whole block, signature included: what the next turn must send back.
            yield self._chunk({"thinking_blocks": [self.thinking.pop(index)]})
        elif kind == "message_delta":
            # Cumulative counts: overwrite, never add.
            self.raw_usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            stop_reason = (event.get("delta") or {}).get("stop_reason")
            if stop_reason:
                yield self._chunk({}, _finish(stop_reason, self.answer_block is not None, bool(self.tool_index)))
        elif kind == "message_stop":
            self.done = True
            usage = usage_of(self.raw_usage)
            if usage is not None:
                yield {**self.base, "choices": [], "usage": openai_usage(usage)}
        # ping and unknown future events are skipped, as Anthropic's versioning policy asks.

    def _delta(self, index: int, delta: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        kind = delta.get("type")
        if kind == "text_delta":
            yield self._chunk({"content": delta.get("text", "")})
        elif kind == "thinking_delta":
            block = self.thinking.setdefault(index, {"type": "thinking", "thinking": ""})
            block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
            yield self._chunk({"reasoning_content": delta.get("thinking", "")})
        elif kind == "signature_delta":
            self.thinking.setdefault(index, {"type": "thinking", "thinking": ""})["signature"] = delta.get("signature")
        elif kind == "input_json_delta" and index == self.answer_block:
            yield self._chunk({"content": delta.get("partial_json", "")})
        elif kind == "input_json_delta":
            position = self.tool_index.get(index, 0)
            yield self._chunk(
                {"tool_calls": [{"index": position, "function": {"arguments": delta.get("partial_json", "")}}]}
            )


def stream_error(event: Mapping[str, Any]) -> tuple[str, bool] | None:
    """An in-stream ``error`` event as (message, overloaded); None for other events."""
    if event.get("type") != "error":
        return None
    error = event.get("error") or {}
    return str(error.get("message") or "unknown error")[:500], error.get("type") == "overloaded_error"
