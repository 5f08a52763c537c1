"""OpenAI's Responses API spoken through chat completions: the one translation every
provider without a native ``/responses`` endpoint shares (chat-only OpenAI-compatible
servers, Anthropic, Gemini and the mock reach it through their chat adapters).

* :func:`chat_body` turns a Responses request (its ``input`` already expanded with the
  stored conversation) into a chat completions body;
* :func:`output_of` turns a ``chat.completion`` into the Responses ``output`` items and
  status; :func:`response_object` wraps them in the ``response`` object;
* :class:`Events` turns ``chat.completion.chunk`` dicts into the typed Responses stream
  events, in the order OpenAI sends them.

What a chat completion cannot carry is refused with a 400 naming it (built-in tools,
``item_reference`` inputs, ``background``, ``conversation``, ``prompt``); reasoning items
in the input are dropped, since chat has no way to send them back.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, Mapping
from typing import Any

from billing.pricing import TokenUsage
from config.errors import ErrorCode, InvalidRequest
from proxy.translate.common import new_tool_call_id, usage_with_details

MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})


def new_id(prefix: str) -> str:
    """An id in OpenAI's style: ``resp_``, ``msg_``, ``fc_``, ``rs_`` + 48 hex digits."""
    return f"{prefix}_{secrets.token_hex(24)}"


def _refuse(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=ErrorCode.UNSUPPORTED)


# --- input ------------------------------------------------------------------------------


def input_items(value: Any) -> list[dict[str, Any]]:
    """``input`` as a list of items, each with an ``id`` (as ``input_items`` lists them): a
    string becomes one user message of ``input_text``; a message's string content becomes
    one ``input_text`` part (``output_text`` for the assistant)."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    items: list[dict[str, Any]] = []
    for raw in value:
        item = dict(raw)
        kind = item.setdefault("type", "message")
        if kind == "message":
            role = item.get("role")
            if isinstance(item.get("content"), str):
                part = "output_text" if role == "assistant" else "input_text"
                text_part: dict[str, Any] = {"type": part, "text": item["content"]}
                if part == "output_text":
                    text_part["annotations"] = []
                item["content"] = [text_part]
            item.setdefault("status", "completed")
        prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
        item.setdefault("id", new_id(prefix.get(kind, "item")))
        items.append(item)
    return items


def _part(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text") or "")}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal") or "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise _refuse(
                f"{where}: only an input_image with an 'image_url' (a URL or a data URL) can be translated; "
                "a 'file_id' needs a model whose provider serves the Responses API.",
                where,
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file = {k: part[k] for k in ("file_data", "file_id", "filename") if part.get(k)}
        if not file:
            raise InvalidRequest(f"{where}: an input_file needs 'file_data' or 'file_id'.", param=where)
        return {"type": "file", "file": file}
    raise _refuse(f"{where}: content of type {kind!r} cannot be translated to chat completions.", where)


def _content(content: Any, where: str, *, assistant: bool) -> Any:
    if isinstance(content, str):
        return content
    parts = [_part(p, f"{where}[{i}]") for i, p in enumerate(content or [])]
    if assistant or all(p["type"] == "text" for p in parts):
        return "".join(p.get("text", "") for p in parts)
    return parts


def _messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"input[{index}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            message: dict[str, Any] = {
                "role": role,
                "content": _content(item.get("content"), f"{where}.content", assistant=role == "assistant"),
            }
            messages.append(message)
        elif kind == "function_call":
            call = {
                "id": item.get("call_id") or new_tool_call_id(),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant" and isinstance(last.get("content"), str):
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _content(output, f"{where}.output", assistant=True)
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind == "reasoning":
            continue  # chat completions cannot send reasoning back; the model reasons anew
        else:
            raise _refuse(
                f"{where}: an input item of type {kind!r} cannot be translated to chat completions; "
                "use a model whose provider serves the Responses API.",
                where,
            )
    return messages


# --- the request ------------------------------------------------------------------------


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for index, tool in enumerate(tools or []):
        if tool.get("type") != "function":
            raise _refuse(
                f"tools[{index}]: the built-in tool {tool.get('type')!r} needs a model whose provider serves the "
                "Responses API; this model is translated to chat completions, which has function tools only.",
                f"tools[{index}]",
            )
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    kind = choice.get("type")
    raise _refuse(f"tool_choice of type {kind!r} cannot be translated to chat completions.", "tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if not isinstance(fmt, Mapping) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
    return {"type": "json_schema", "json_schema": spec}


UNTRANSLATABLE = {
    "background": "background responses",
    "conversation": "conversations",
    "prompt": "prompt templates",
}


def chat_body(body: Mapping[str, Any], items: list[dict[str, Any]], *, stream: bool) -> dict[str, Any]:
    """The chat completions body for a Responses request whose conversation is ``items``
    (the stored history, then this turn's input)."""
    for name, what in UNTRANSLATABLE.items():
        if body.get(name):
            raise _refuse(
                f"'{name}': {what} need a model whose provider serves the Responses API; this model is "
                "translated to chat completions.",
                name,
            )
    messages = _messages(items)
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    response_format = _response_format(body.get("text"))
    if response_format:
        chat["response_format"] = response_format
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping) and reasoning.get("effort"):
        chat["reasoning_effort"] = reasoning["effort"]
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "user", "service_tier", "top_logprobs"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("top_logprobs"):
        chat["logprobs"] = True
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


# --- the answer -------------------------------------------------------------------------


def usage_object(usage: TokenUsage | None, reasoning_tokens: int = 0) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def usage_from_response(usage: Any) -> TokenUsage | None:
    """A Responses ``usage`` object as TokenUsage; None if absent or malformed."""
    if not isinstance(usage, Mapping):
        return None
    given, made = usage.get("input_tokens"), usage.get("output_tokens")
    if not isinstance(given, int) or not isinstance(made, int) or given < 0 or made < 0:
        return None
    return usage_with_details(given, made, usage.get("input_tokens_details"))


def reasoning_tokens(chat_usage: Any) -> int:
    details = chat_usage.get("completion_tokens_details") if isinstance(chat_usage, Mapping) else None
    value = details.get("reasoning_tokens") if isinstance(details, Mapping) else None
    return value if isinstance(value, int) else 0


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [], "content": [{"type": "reasoning_text", "text": text}]}


def _status(finish_reason: Any) -> tuple[str, dict[str, Any] | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def output_of(completion: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str, dict[str, Any] | None]:
    """A ``chat.completion``'s first choice as Responses output items, with the response's
    status and ``incomplete_details``."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    status, incomplete = _status(choice.get("finish_reason"))
    output: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        output.append(_reasoning_item(new_id("rs"), message["reasoning_content"]))
    parts = []
    if message.get("content"):
        parts.append(_text_part(message["content"]))
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts:
        output.append(
            {
                "type": "message",
                "id": new_id("msg"),
                "status": "incomplete" if status == "incomplete" else "completed",
                "role": "assistant",
                "content": parts,
            }
        )
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(
            {
                "type": "function_call",
                "id": new_id("fc"),
                "call_id": call.get("id") or new_tool_call_id(),
                "name": function.get("name") or "",
                "arguments": function.get("arguments") or "",
                "status": "completed",
            }
        )
    return output, status, incomplete


def _tool_echo(tool: Any) -> Any:
    """A tool as the response lists it: a function tool always says ``strict`` and
    ``parameters`` (OpenAI echoes its defaults)."""
    if isinstance(tool, Mapping) and tool.get("type") == "function":
        return {"strict": tool.get("strict", True), "parameters": tool.get("parameters"), **tool}
    return tool


def response_object(
    body: Mapping[str, Any],
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    incomplete_details: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``response`` object, echoing the request's settings as OpenAI does."""
    reasoning: Mapping[str, Any] = body["reasoning"] if isinstance(body.get("reasoning"), Mapping) else {}
    text: Mapping[str, Any] = body["text"] if isinstance(body.get("text"), Mapping) else {}
    answer: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output or [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": body.get("store", True) is not False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, **text},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [_tool_echo(tool) for tool in body.get("tools") or []],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "metadata": body.get("metadata") or {},
    }
    if usage is not None:  # the schema has no null usage: absent until the answer is done
        answer["usage"] = usage
    if body.get("user") is not None:
        answer["user"] = body["user"]
    return answer


# --- streams ----------------------------------------------------------------------------


class Events:
    """Chat chunks in, Responses stream events out (without ``sequence_number``s, which
    the relay numbers, and without the terminal event, which it sends once metered).

    Each output item opens with ``response.output_item.added`` and closes with
    ``response.output_item.done``; text also has its content part and ``.done`` events.
    :attr:`output`, :attr:`status` and :attr:`incomplete_details` describe the finished
    response.
    """

    def __init__(self) -> None:
        self.output: list[dict[str, Any]] = []
        self.status = "completed"
        self.incomplete_details: dict[str, Any] | None = None
        self.reasoning_tokens = 0
        self._open: dict[str, Any] | None = None  # the item being streamed
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> function_call item

    def _index(self, item: dict[str, Any]) -> int:
        return self.output.index(item)

    def _add(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.output.append(item)
        shown = {**item, "status": "in_progress"} if "status" in item else dict(item)
        if item["type"] in ("message", "reasoning"):
            shown["content"] = []
        elif item["type"] == "function_call":
            shown["arguments"] = ""
        yield {"type": "response.output_item.added", "output_index": self._index(item), "item": shown}

    def _close(self) -> Iterator[dict[str, Any]]:
        item, self._open = self._open, None
        if item is None:
            return
        index = self._index(item)
        if item["type"] == "message":
            part = item["content"][0]
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            yield {"type": "response.output_text.done", **common, "text": part["text"], "logprobs": []}
            yield {"type": "response.content_part.done", **common, "part": part}
        elif item["type"] == "reasoning":
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            text = item["content"][0]["text"]
            yield {"type": "response.reasoning_text.done", **common, "text": text}
            yield {"type": "response.content_part.done", **common, "part": item["content"][0]}
        yield {"type": "response.output_item.done", "output_index": index, "item": item}

    def _reasoning(self, text: str) -> Iterator[dict[str, Any]]:
        if self._open is None or self._open["type"] != "reasoning":
            yield from self._close()
            self._open = _reasoning_item(new_id("rs"), "")
            yield from self._add(self._open)
            part = {"type": "reasoning_text", "text": ""}
            yield {
                "type": "response.content_part.added",
                "item_id": self._open["id"],
                "output_index": self._index(self._open),
                "content_index": 0,
                "part": part,
            }
        self._open["content"][0]["text"] += text
        yield {
            "type": "response.reasoning_text.delta",
            "item_id": self._open["id"],
            "output_index": self._index(self._open),
            "content_index": 0,
            "delta": text,
        }

    def _text(self, text: str) -> Iterator[dict[str, Any]]:
        if self._open is None or self._open["type"] != "message":
            yield from self._close()
            self._open = {
                "type": "message",
                "id": new_id("msg"),
                "status": "completed",
                "role": "assistant",
                "content": [_text_part("")],
            }
            yield from self._add(self._open)
            yield {
                "type": "response.content_part.added",
                "item_id": self._open["id"],
                "output_index": self._index(self._open),
                "content_index": 0,
                "part": _text_part(""),
            }
        self._open["content"][0]["text"] += text
        yield {
            "type": "response.output_text.delta",
            "item_id": self._open["id"],
            "output_index": self._index(self._open),
            "content_index": 0,
            "delta": text,
            "logprobs": [],
        }

    def _tool_call(self, call: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        position = call.get("index", 0)
        function = call.get("function") or {}
        item = self._calls.get(position)
        if item is None:
            yield from self._close()
            item = {
                "type": "function_call",
                "id": new_id("fc"),
                "call_id": call.get("id") or new_tool_call_id(),
                "name": function.get("name") or "",
                "arguments": "",
                "status": "completed",
            }
            self._calls[position] = item
            self._open = item
            yield from self._add(item)
        delta = function.get("arguments") or ""
        if delta:
            item["arguments"] += delta
            yield {
                "type": "response.function_call_arguments.delta",
                "item_id": item["id"],
                "output_index": self._index(item),
                "delta": delta,
            }

    def _close_call(self) -> Iterator[dict[str, Any]]:
        item = self._open
        if item is not None and item["type"] == "function_call":
            yield {
                "type": "response.function_call_arguments.done",
                "item_id": item["id"],
                "name": item["name"],
                "output_index": self._index(item),
                "arguments": item["arguments"],
            }
        yield from self._close()

    def chunk(self, chunk: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """The events one chat chunk makes."""
        self.reasoning_tokens = reasoning_tokens(chunk.get("usage")) or self.reasoning_tokens
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                yield from self._switch_from_call()
                yield from self._reasoning(delta["reasoning_content"])
            if delta.get("content"):
                yield from self._switch_from_call()
                yield from self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                open_call = self._open is not None and self._open["type"] == "function_call"
                if open_call and self._calls.get(call.get("index", 0)) is not self._open:
                    yield from self._close_call()
                yield from self._tool_call(call)
            if choice.get("finish_reason"):
                self.status, self.incomplete_details = _status(choice["finish_reason"])

    def _switch_from_call(self) -> Iterator[dict[str, Any]]:
        if self._open is not None and self._open["type"] == "function_call":
            yield from self._close_call()

    def finish(self) -> Iterator[dict[str, Any]]:
        """Close whatever is open, once the chat stream has ended."""
        yield from self._close_call()
        if self.status == "incomplete":
            for item in self.output:
                if item["type"] == "message":
                    item["status"] = "incomplete"
