"""Stage 1 for the Messages API: the request as Anthropic documents it, validated enough
that no later stage can fail on its shape (a 400 naming the field, in Anthropic's
shape), and kept as sent: an Anthropic deployment gets it as it came.

The body size and nesting limits are the chat endpoint's (``proxy.parse.json_body``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest

from config.errors import ErrorCode, InvalidRequest
from proxy import parse

MESSAGES = "messages"  # the endpoint, as the ledger's UsageRecord.Api names it
ROLES = ("user", "assistant")
TOOL_CHOICES = ("auto", "any", "tool", "none")
THINKING = ("enabled", "disabled", "adaptive")
DEFAULT_VERSION = "2023-06-01"


@dataclass(frozen=True)
class MessagesRequest(parse.ChatRequest):
    """A Messages request. ``body`` is Anthropic's; ``messages`` is its prompt as plain
    chat messages, for Tollway's own token count (admission and estimates)."""

    version: str = DEFAULT_VERSION  # the client's anthropic-version
    betas: str = ""  # the client's anthropic-beta, passed on to Anthropic

    @property
    def prompt_tokens(self) -> int | None:
        return None  # a Messages prompt is text, never token ids: Tollway counts it


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _number(body: Mapping[str, Any], name: str, low: float, high: float | None) -> None:
    value = body.get(name)
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise _invalid(f"{name}: must be a number {bound}.", name)


def _block(where: str, block: Any) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _invalid(f"{where}: must be a content block, an object with a 'type'.", where)
    kind = block["type"]
    if kind == "text" and not isinstance(block.get("text"), str):
        raise _invalid(f"{where}.text: must be a string.", f"{where}.text")
    if kind in ("image", "document") and not isinstance(block.get("source"), dict):
        raise _invalid(f"{where}.source: must be an object.", f"{where}.source")
    if kind == "tool_use" and not (
        isinstance(block.get("id"), str) and isinstance(block.get("name"), str) and isinstance(block.get("input"), dict)
    ):
        raise _invalid(f"{where}: a tool_use block needs 'id', 'name' and an 'input' object.", where)
    if kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            raise _invalid(f"{where}.tool_use_id: must be a string.", f"{where}.tool_use_id")
        content = block.get("content")
        if isinstance(content, list):
            for number, inner in enumerate(content):
                _block(f"{where}.content.{number}", inner)
        elif content is not None and not isinstance(content, str):
            raise _invalid(f"{where}.content: must be a string or an array of content blocks.", f"{where}.content")


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages: must be a non-empty array of messages.", "messages")
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise _invalid(f"{where}: must be an object.", where)
        if message.get("role") not in ROLES:
            raise _invalid(f"{where}.role: must be 'user' or 'assistant'.", f"{where}.role")
        content = message.get("content")
        if isinstance(content, list):
            for number, block in enumerate(content):
                _block(f"{where}.content.{number}", block)
        elif not isinstance(content, str):
            raise _invalid(f"{where}.content: must be a string or an array of content blocks.", f"{where}.content")
    return messages


def _system(body: Mapping[str, Any]) -> None:
    system = body.get("system")
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _invalid("system: must be a string or an array of text blocks.", "system")
    for number, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _invalid(f"system.{number}: must be a text block.", f"system.{number}")


def _tools(body: Mapping[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("tools: must be an array of tools.", "tools")
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
                raise _invalid(f"tools.{index}: must be an object with a 'name'.", f"tools.{index}")
            custom = tool.get("type") in (None, "custom")
            if custom and not isinstance(tool.get("input_schema"), dict):
                raise _invalid(
                    f"tools.{index}.input_schema: must be a JSON Schema object.", f"tools.{index}.input_schema"
                )
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICES:
            raise _invalid(
                f"tool_choice: must be an object whose 'type' is one of {', '.join(TOOL_CHOICES)}.", "tool_choice"
            )
        if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
            raise _invalid("tool_choice.name: must name the tool.", "tool_choice.name")


def _options(body: Mapping[str, Any], *, count_only: bool) -> None:
    if not count_only:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise InvalidRequest("max_tokens: Field required.", param="max_tokens", code=ErrorCode.MISSING_PARAMETER)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise _invalid("max_tokens: must be a whole number of at least 1.", "max_tokens")
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise _invalid("top_k: must be a whole number of at least 0.", "top_k")
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise _invalid("stop_sequences: must be an array of strings.", "stop_sequences")
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and isinstance(metadata.get("user_id", ""), str | None)
    ):
        raise _invalid("metadata: must be an object whose user_id is a string.", "metadata")
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in THINKING:
            raise _invalid(f"thinking.type: must be one of {', '.join(THINKING)}.", "thinking")
        budget = thinking.get("budget_tokens")
        if thinking["type"] == "enabled" and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1024):
            raise _invalid("thinking.budget_tokens: must be a whole number of at least 1024.", "thinking.budget_tokens")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream: must be a boolean.", "stream")


def _text(content: Any) -> str:
    """Every piece of text in a message's content, for Tollway's own count."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content if isinstance(content, list) else []:
        kind = block.get("type")
        if kind == "text":
            parts.append(block["text"])
        elif kind == "thinking":
            parts.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            parts.append(f"{block['name']} {json.dumps(block['input'])}")
        elif kind == "tool_result":
            parts.append(_text(block.get("content")))
        elif kind == "document" and (block.get("source") or {}).get("type") == "text":
            parts.append(str(block["source"].get("data", "")))
    return " ".join(parts)


def prompt_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The prompt as chat messages of plain text (the system prompt and the tools' schemas
    as a system message), which ``proxy.tokens`` counts; images count as chat images."""
    system = body.get("system")
    preamble = [system if isinstance(system, str) else _text(system)]
    if body.get("tools"):
        preamble.append(json.dumps(body["tools"]))
    out: list[dict[str, Any]] = [{"role": "system", "content": " ".join(p for p in preamble if p)}]
    for message in body["messages"]:
        content = message["content"]
        images = (
            [{"type": "image_url"} for b in content if b.get("type") == "image"] if isinstance(content, list) else []
        )
        text = {"type": "text", "text": _text(content)}
        out.append({"role": message["role"], "content": [text, *images] if images else text["text"]})
    return out


def messages_request(request: HttpRequest, *, count_only: bool = False) -> MessagesRequest:
    """``POST /v1/messages`` (or, with ``count_only``, its ``count_tokens``)."""
    body = parse.json_body(request)
    model = parse._model(body)  # the chat endpoint's rule for the model name
    messages = _messages(body)
    _system(body)
    _tools(body)
    _options(body, count_only=count_only)
    return MessagesRequest(
        body=body,
        model=model,
        messages=prompt_messages(body) if messages else [],
        stream=bool(body.get("stream")) and not count_only,
        include_usage=False,
        endpoint=MESSAGES,
        version=request.headers.get("anthropic-version") or DEFAULT_VERSION,
        betas=request.headers.get("anthropic-beta", ""),
    )
