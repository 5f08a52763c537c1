"""Anthropic Messages (inbound, ``POST /v1/messages``) ⇄ OpenAI chat, for the providers
Tollway reaches through their OpenAI-shaped adapters (``openai``, ``gemini``, ``mock``).

It is ``proxy.translate.anthropic`` in reverse, and reuses its tables: the finish
reasons (:data:`anthropic.FINISH`), the thinking budgets (:data:`anthropic.THINKING_BUDGET`)
and the usage split (cached input and cache writes counted apart from ``input_tokens``).
An Anthropic deployment never comes here: its requests pass through natively.

Requests (:func:`request`): ``system`` becomes a system message; text blocks stay text;
image blocks become ``image_url`` parts (a data URL for base64); a base64 PDF ``document``
becomes a ``file`` part and a text document its text; ``tool_use`` blocks become the
assistant's ``tool_calls``, and ``tool_result`` blocks ``tool`` messages, in order;
``tools``, ``tool_choice`` (``disable_parallel_tool_use`` as ``parallel_tool_calls``),
``stop_sequences``, ``temperature``, ``top_p``, ``top_k``, ``metadata.user_id`` (as
``user``), ``thinking`` (as ``reasoning_effort``) and a JSON-schema ``output_config.format``
(as ``response_format``) are translated; other top-level fields are Anthropic's alone
(``service_tier``, ``context_management``, ``container``...) and are not sent.

What no OpenAI-shaped provider can carry is dropped, and the docs say so
(docs/tenants/messages.md): ``cache_control`` (those providers cache on their own, and
report it), the thinking blocks of earlier turns (their signatures are Anthropic's), a
``tool_result``'s ``is_error`` flag, and citations. What would change the answer
silently is refused with a 400 instead: Anthropic's server tools (web search, code
execution...), which only Anthropic runs, and a document by URL or file id.

Answers (:func:`response`, :class:`Events`): the reply's reasoning becomes a ``thinking``
block (with an empty signature: no provider but Anthropic signs), its text a ``text``
block, its tool calls ``tool_use`` blocks; a stream becomes Anthropic's typed events, with
the final usage in ``message_delta``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Mapping
from typing import Any

from billing.pricing import TokenUsage
from config.errors import ErrorCode, InvalidRequest
from proxy.translate import anthropic

# OpenAI finish reasons as Anthropic stop reasons (the reverse of anthropic.FINISH).
STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
STOP_REASON["function_call"] = "tool_use"


def message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def _refuse(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=ErrorCode.UNSUPPORTED)


def _effort(budget: int) -> str:
    """A thinking budget as the smallest ``reasoning_effort`` whose budget covers it."""
    for effort in ("low", "medium", "high"):
        if budget <= anthropic.THINKING_BUDGET[effort]:
            return effort
    return "high"


def _text(content: Any) -> str:
    """A tool result's or a system prompt's text: the string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if isinstance(b, Mapping) and b.get("type") == "text")
    return ""


def _image(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = str(source.get("url"))
    else:
        raise _refuse(f"{where}: an image by {source.get('type')!r} can only be sent to an Anthropic model.", where)
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "text":
        return {"type": "text", "text": str(source.get("data", ""))}
    if source.get("type") == "base64":
        data = f"data:{source.get('media_type')};base64,{source.get('data')}"
        return {"type": "file", "file": {"filename": str(block.get("title") or "document.pdf"), "file_data": data}}
    raise _refuse(
        f"{where}: a document by {source.get('type')!r} can only be sent to an Anthropic model; send it as base64.",
        where,
    )


def _user(index: int, content: Any, out: list[dict[str, Any]]) -> None:
    """A user turn: its tool results first, as ``tool`` messages, then its other content."""
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    parts: list[dict[str, Any]] = []
    for number, block in enumerate(content):
        where = f"messages[{index}].content[{number}]"
        kind = block["type"]
        if kind == "tool_result":
            out.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": _text(block.get("content"))}
            )
        elif kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(_image(block, where))
        elif kind == "document":
            parts.append(_document(block, where))
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise _refuse(f"{where}: a '{kind}' block can only be sent to an Anthropic model.", where)
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})


def _assistant(index: int, content: Any, out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "assistant", "content": content})
        return
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for number, block in enumerate(content):
        kind = block["type"]
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # signed by Anthropic, meaningless to anyone else
        else:
            where = f"messages[{index}].content[{number}]"
            raise _refuse(f"{where}: a '{kind}' block can only be sent to an Anthropic model.", where)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    out.append(message)


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for index, tool in enumerate(tools):
        if tool.get("type") not in (None, "custom"):
            raise _refuse(
                f"tools[{index}] is Anthropic's server tool '{tool.get('type')}', which only an Anthropic model runs.",
                f"tools[{index}]",
            )
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Mapping[str, Any], body: dict[str, Any]) -> None:
    kind = choice.get("type")
    if kind == "tool":
        body["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    else:
        body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[str(kind)]
    if choice.get("disable_parallel_tool_use") and kind != "none":
        body["parallel_tool_calls"] = False


def request(messages_body: Mapping[str, Any], *, model: str, stream: bool) -> dict[str, Any]:
    """A validated Messages request (``proxy.messages.parse``) as an OpenAI chat body for
    the provider's ``model``."""
    chat: list[dict[str, Any]] = []
    system = _text(messages_body.get("system"))
    if system:
        chat.append({"role": "system", "content": system})
    for index, message in enumerate(messages_body["messages"]):
        if message["role"] == "user":
            _user(index, message["content"], chat)
        else:
            _assistant(index, message["content"], chat)
    body: dict[str, Any] = {"model": model, "messages": chat, "max_tokens": messages_body["max_tokens"]}
    for name in ("temperature", "top_p", "top_k"):
        if messages_body.get(name) is not None:
            body[name] = messages_body[name]
    if messages_body.get("stop_sequences"):
        body["stop"] = list(messages_body["stop_sequences"])
    user = (messages_body.get("metadata") or {}).get("user_id")
    if user:
        body["user"] = user
    if messages_body.get("tools"):
        body["tools"] = _tools(messages_body["tools"])
        if messages_body.get("tool_choice"):
            _tool_choice(messages_body["tool_choice"], body)
    output = messages_body.get("output_config") or {}
    output_format = (output.get("format") if isinstance(output, Mapping) else None) or messages_body.get(
        "output_format"
    )
    if isinstance(output_format, Mapping) and output_format.get("type") == "json_schema":
        schema = {"name": "output", "schema": output_format.get("schema") or {}}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    thinking = messages_body.get("thinking") or {}
    if thinking.get("type") == "enabled":
        body["reasoning_effort"] = _effort(int(thinking.get("budget_tokens") or 0))
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


# --- Answers ------------------------------------------------------------------------


def usage_body(usage: TokenUsage) -> dict[str, Any]:
    """TokenUsage as Anthropic's ``usage``: ``input_tokens`` excludes the cached and the
    cache-written tokens, which have their own counts."""
    return {
        "input_tokens": max(usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens, 0),
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
    }


def _input(arguments: Any) -> Any:
    """A tool call's JSON ``arguments`` as its ``input``; the raw text if it is not JSON."""
    try:
        return json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except ValueError:
        return {"arguments": arguments}


def response(completion: Mapping[str, Any], usage: TokenUsage, *, model: str) -> dict[str, Any]:
    """A ``chat.completion`` as a Messages answer, with ``usage`` (the provider's, or
    Tollway's estimate when it reported none)."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _input(function.get("arguments")),
            }
        )
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASON.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": usage_body(usage),
    }


def output_text(message: Mapping[str, Any]) -> str:
    """The text a Messages answer carries (text, thinking, tool input): what Tollway
    counts when no usage came."""
    parts: list[str] = []
    for block in message.get("content") or []:
        if block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif block.get("type") == "thinking":
            parts.append(block.get("thinking", ""))
        elif block.get("type") == "tool_use":
            parts.append(json.dumps(block.get("input") or {}))
    return " ".join(parts)


class Events:
    """``chat.completion.chunk`` dicts as Anthropic's stream events. Feed each chunk to
    :meth:`chunk`; :meth:`finish` closes the stream with the usage.

    Anthropic's order is kept: ``message_start`` then a ``ping``; each content block opened
    by ``content_block_start``, filled by deltas and closed by ``content_block_stop``
    before the next one opens; then ``message_delta`` (the stop reason and the whole
    usage) and ``message_stop``.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.index = -1  # the open block's index; -1 before the first
        self.open: str | None = None  # "text", "thinking" or "tool_use"
        self.tools: dict[int, int] = {}  # OpenAI tool_calls index -> block index
        self.stop_reason = "end_turn"

    def _start(self) -> Iterator[dict[str, Any]]:
        self.started = True
        message: dict[str, Any] = {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # The provider counts the prompt at the end; message_delta carries it.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        yield {"type": "message_start", "message": message}
        yield {"type": "ping"}

    def _close(self) -> Iterator[dict[str, Any]]:
        if self.open is not None:
            if self.open == "thinking":
                yield {
                    "type": "content_block_delta",
                    "index": self.index,
                    "delta": {"type": "signature_delta", "signature": ""},
                }
            yield {"type": "content_block_stop", "index": self.index}
            self.open = None

    def _open(self, kind: str, block: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield from self._close()
        self.index += 1
        self.open = kind
        yield {"type": "content_block_start", "index": self.index, "content_block": block}

    def chunk(self, chunk: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        if not self.started:
            yield from self._start()
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if self.open != "thinking":
                    yield from self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                yield {
                    "type": "content_block_delta",
                    "index": self.index,
                    "delta": {"type": "thinking_delta", "thinking": delta["reasoning_content"]},
                }
            if delta.get("content"):
                if self.open != "text":
                    yield from self._open("text", {"type": "text", "text": ""})
                yield {
                    "type": "content_block_delta",
                    "index": self.index,
                    "delta": {"type": "text_delta", "text": delta["content"]},
                }
            for call in delta.get("tool_calls") or []:
                yield from self._tool_call(call)
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASON.get(str(choice["finish_reason"]), "end_turn")

    def _tool_call(self, call: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        position = call.get("index", 0)
        function = call.get("function") or {}
        if position not in self.tools:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or "toolu_" + secrets.token_hex(12),
                "name": function.get("name") or "",
                "input": {},
            }
            yield from self._open("tool_use", block)
            self.tools[position] = self.index
        if function.get("arguments"):
            yield {
                "type": "content_block_delta",
                "index": self.tools[position],
                "delta": {"type": "input_json_delta", "partial_json": function["arguments"]},
            }

    def finish(self, usage: TokenUsage) -> Iterator[dict[str, Any]]:
        """The end of the stream: the open block closed, the stop reason and the usage."""
        if not self.started:
            yield from self._start()
        yield from self._close()
        yield {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
            "usage": usage_body(usage),
        }
        yield {"type": "message_stop"}
