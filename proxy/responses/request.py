"""Stage 1 for ``POST /v1/responses``: the body, checked, as a :class:`ResponsesRequest`.

Only the shape is checked here (OpenAI-shaped 400s naming the parameter); whether a
translated provider can carry what was asked is decided when the call is routed
(``proxy.translate.responses``), since a pass-through provider carries everything.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.http import HttpRequest

from config.errors import ErrorCode, InvalidRequest
from proxy import params
from proxy.parse import ChatRequest, json_body
from proxy.parse import _model as model_of
from proxy.translate.responses import MESSAGE_ROLES, input_items, new_id

RESPONSES = "responses"  # the ledger's UsageRecord.Api value
MAX_INPUT_ITEMS = 2048
ITEM_TYPES = frozenset({"message", "function_call", "function_call_output", "reasoning"})


@dataclass(frozen=True)
class ResponsesRequest(ChatRequest):
    """A Responses call as the request path meters it. ``body`` (what admission and the
    response cache read) is the request with the whole conversation in ``input`` and
    ``max_output_tokens`` as ``max_completion_tokens``; ``messages`` is its text, for
    Tollway's own count when a provider reports none."""

    request_body: dict[str, Any] = field(default_factory=dict)  # as the client sent it
    items: list[dict[str, Any]] = field(default_factory=list)  # this turn's input, with ids
    history: list[dict[str, Any]] = field(default_factory=list)  # the stored conversation before it
    previous_pk: int | None = None
    root_id: str = ""
    response_id: str = ""
    created_at: int = 0
    store: bool = True

    @property
    def prompt_tokens(self) -> int | None:
        return None  # never token ids

    @property
    def conversation(self) -> list[dict[str, Any]]:
        return [*self.history, *self.items]


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _check_item(index: int, item: Any) -> None:
    where = f"input[{index}]"
    if not isinstance(item, dict):
        raise _bad(f"{where} must be an object: a message or another input item.", where)
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise _bad(f"{where}.type must be a string.", f"{where}.type")
    if kind == "message":
        if not isinstance(item.get("role"), str) or item["role"] not in MESSAGE_ROLES:
            roles = ", ".join(sorted(MESSAGE_ROLES))
            raise _bad(f"{where}.role must be one of {roles}; got {params.shown(item.get('role'))}.", f"{where}.role")
        content = item.get("content")
        if not isinstance(content, str) and not (
            isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in content)
        ):
            raise _bad(
                f"{where}.content must be a string or an array of content parts, each an object with a 'type'.",
                f"{where}.content",
            )
    elif kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            if not isinstance(item.get(name), str):
                raise _bad(f"{where}.{name} must be a string.", f"{where}.{name}")
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise _bad(f"{where}.call_id must be a string.", f"{where}.call_id")
        output = item.get("output")
        if not isinstance(output, str) and not (
            isinstance(output, list) and all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in output)
        ):
            raise _bad(f"{where}.output must be a string or an array of content parts.", f"{where}.output")


def check_input(body: Mapping[str, Any]) -> Any:
    value = body.get("input")
    if value is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code=ErrorCode.MISSING_PARAMETER)
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise _bad("'input' must be a string or a non-empty array of input items.", "input")
    if len(value) > MAX_INPUT_ITEMS:
        raise _bad(f"'input' holds {len(value)} items; at most {MAX_INPUT_ITEMS} per request.", "input")
    for index, item in enumerate(value):
        _check_item(index, item)
    return value


_OUTPUT = params.integer(1, params.MAX_OUTPUT_TOKENS_CEILING)


def _optional(body: Mapping[str, Any], name: str, check: params.Check) -> None:
    if body.get(name) is not None:
        check(name, body[name])


def _tools(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(t, dict) and isinstance(t.get("type"), str) for t in value):
        raise _bad("'tools' must be an array of tool objects, each with a 'type'.", "tools")
    for index, tool in enumerate(value):
        if tool["type"] == "function" and not (isinstance(tool.get("name"), str) and tool["name"]):
            raise _bad(f"tools[{index}].name must be a non-empty string.", f"tools[{index}].name")


FORMATS = ("text", "json_object", "json_schema")


def _text(value: Any) -> None:
    fmt = value.get("format") if isinstance(value, dict) else None
    if not isinstance(value, dict) or (fmt is not None and not isinstance(fmt, dict)):
        raise _bad('\'text\' must be an object, e.g. {"format": {"type": "json_schema", ...}}.', "text")
    if isinstance(fmt, dict) and fmt.get("type") not in FORMATS:
        raise _bad(f"'text.format.type' must be one of {', '.join(FORMATS)}.", "text.format.type")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and not isinstance(fmt.get("schema"), dict):
        raise _bad("'text.format.schema' must be a JSON Schema object.", "text.format.schema")


def _tool_choice(name: str, value: Any) -> None:
    if value in ("auto", "none", "required"):
        return
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise _bad("'tool_choice' must be auto, none, required, or an object with a 'type'.", name)
    if value["type"] == "function" and not isinstance(value.get("name"), str):
        raise _bad("'tool_choice.name' must name a function.", "tool_choice.name")


def _object(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise _bad(f"'{name}' must be an object.", name)


def _instructions(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise _bad("'instructions' must be a string.", name)


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(f"'{name}' must be a boolean.", name)
    return value


def _previous(body: Mapping[str, Any]) -> str | None:
    value = body.get("previous_response_id")
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 64 or "\x00" in value:
        raise _bad("'previous_response_id' must be the id of a stored response.", "previous_response_id")
    return value


def responses_body(request: HttpRequest) -> tuple[dict[str, Any], str | None]:
    """The checked body of ``POST /v1/responses``, and its ``previous_response_id``."""
    body = json_body(request)
    model_of(body)
    check_input(body)
    _optional(body, "max_output_tokens", _OUTPUT)
    _optional(body, "temperature", params.number(0, 2))
    _optional(body, "top_p", params.number(0, 1))
    _optional(body, "tools", lambda _, v: _tools(v))
    _optional(body, "text", lambda _, v: _text(v))
    _optional(body, "tool_choice", _tool_choice)
    _optional(body, "reasoning", _object)
    _optional(body, "metadata", params.string_map)
    _optional(body, "instructions", _instructions)
    _optional(body, "user", params.string)
    for name in ("parallel_tool_calls", "stream", "store", "background"):
        _flag(body, name, False)
    if body.get("stream_options") is not None and not body.get("stream"):
        raise _bad("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    return body, _previous(body)


def _message_text(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item as a chat-like message, for Tollway's own token count."""
    if item.get("type", "message") == "message":
        content = item.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text") or "") for p in content if isinstance(p, Mapping))
        return {"role": "user", "content": content or ""}
    text = item.get("arguments") or item.get("output") or ""
    return {"role": "user", "content": text if isinstance(text, str) else ""}


def responses_request(
    body: dict[str, Any],
    *,
    history: list[dict[str, Any]],
    previous_pk: int | None = None,
    root_id: str = "",
) -> ResponsesRequest:
    """The request as the request path meters it, with a fresh response id."""
    items = input_items(body["input"])
    conversation = [*history, *items]
    metered = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "input")}
    # As sent, without the ids Tollway gives items: the response cache keys on this body.
    metered["input"] = [*history, *([body["input"]] if isinstance(body["input"], str) else body["input"])]
    if body.get("max_output_tokens") is not None:
        metered["max_completion_tokens"] = body["max_output_tokens"]
    messages = [_message_text(item) for item in conversation]
    if isinstance(body.get("instructions"), str):
        messages.insert(0, {"role": "system", "content": body["instructions"]})
    stream = bool(body.get("stream"))
    response_id = new_id("resp")
    return ResponsesRequest(
        body=metered,
        model=body["model"],
        messages=messages,
        stream=stream,
        include_usage=True,
        endpoint=RESPONSES,
        request_body=body,
        items=items,
        history=history,
        previous_pk=previous_pk,
        root_id=root_id or response_id,
        response_id=response_id,
        created_at=int(time.time()),
        store=body.get("store") is not False,
    )
