"""The mock upstream's native Responses API (``POST /v1/responses``), as OpenAI answers it.

Written apart from Tollway's translation (``proxy.translate.responses``) so a test of the
pass-through route checks Tollway against an independent rendering of the wire format:
the ``response`` object, and the typed SSE events in OpenAI's order with
``sequence_number``s. The words come from ``proxy.mockgen`` (the same reply a chat call
would get), with the same rules for calling a tool and for ``json_schema`` output.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

from proxy import mockgen, tokens


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The request as chat-like messages: what mockgen needs to pick its reply."""
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    for item in items or []:
        kind = item.get("type", "message")
        if kind == "message":
            content = item.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text") or "") for p in content)
            messages.append({"role": item.get("role"), "content": content})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": str(item.get("output"))})
        elif kind == "function_call":
            messages.append({"role": "assistant", "content": item.get("arguments")})
    return messages


def _chat_view(body: Mapping[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    tools = [
        {"type": "function", "function": {"name": t.get("name")}}
        for t in body.get("tools") or []
        if t.get("type") == "function"
    ]
    fmt = (body.get("text") or {}).get("format") or {}
    chat: dict[str, Any] = {"messages": messages, "tools": tools, "tool_choice": body.get("tool_choice")}
    if fmt.get("type") == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": {"schema": fmt.get("schema")}}
    return chat


def _id(prefix: str, seed: str) -> str:
    return f"{prefix}_{hashlib.sha256(seed.encode()).hexdigest()[:48]}"


def answer(body: Mapping[str, Any], *, model: str) -> dict[str, Any]:
    """The whole ``response`` object for ``body``."""
    messages = _messages(body)
    chat = _chat_view(body, messages)
    seed = json.dumps(messages, sort_keys=True)
    call = mockgen.tool_call(chat)
    limit = body.get("max_output_tokens")
    text, finish = mockgen.reply(messages, max_tokens=limit if isinstance(limit, int) else None)
    status, incomplete = ("incomplete", {"reason": "max_output_tokens"}) if finish == "length" else ("completed", None)
    if call is not None:
        function = call["function"]
        output = [
            {
                "type": "function_call",
                "id": _id("fc", seed),
                "call_id": call["id"],
                "name": function["name"],
                "arguments": function["arguments"],
                "status": "completed",
            }
        ]
        counted = function["name"] + function["arguments"]
        status, incomplete = "completed", None
    else:
        text = mockgen.structured(chat, text)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        output = [{"type": "message", "id": _id("msg", seed), "status": status, "role": "assistant", "content": [part]}]
        counted = text
    prompt, completion = tokens.prompt_tokens(messages), tokens.count(counted)
    return {
        "id": _id("resp", seed + str(time.time())),
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        },
        "metadata": body.get("metadata") or {},
        **({"user": body["user"]} if body.get("user") is not None else {}),
    }


def events(body: Mapping[str, Any], *, model: str, cut: bool = False) -> Iterator[dict[str, Any]]:
    """The stream of the same answer: OpenAI's events, in OpenAI's order. ``cut`` stops
    after the first text delta (a provider that drops the connection)."""
    final = answer(body, model=model)
    started = {**final, "status": "in_progress", "output": [], "completed_at": None}
    del started["usage"]
    yield {"type": "response.created", "response": started}
    yield {"type": "response.in_progress", "response": started}
    for index, item in enumerate(final["output"]):
        if item["type"] == "function_call":
            yield {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {**item, "arguments": "", "status": "in_progress"},
            }
            for piece in tokens.pieces(item["arguments"]):
                yield {
                    "type": "response.function_call_arguments.delta",
                    "item_id": item["id"],
                    "output_index": index,
                    "delta": piece,
                }
            yield {
                "type": "response.function_call_arguments.done",
                "item_id": item["id"],
                "name": item["name"],
                "output_index": index,
                "arguments": item["arguments"],
            }
        else:
            yield {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {**item, "content": [], "status": "in_progress"},
            }
            part = item["content"][0]
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            yield {"type": "response.content_part.added", **where, "part": {**part, "text": ""}}
            for number, piece in enumerate(tokens.pieces(part["text"])):
                if cut and number == 1:
                    return
                yield {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
            yield {"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []}
            yield {"type": "response.content_part.done", **where, "part": part}
        yield {"type": "response.output_item.done", "output_index": index, "item": item}
    kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
    yield {"type": kind, "response": final}


def sse(body: Mapping[str, Any], *, model: str) -> Iterator[bytes]:
    for number, event in enumerate(events(body, model=model, cut=model == "mock-cut")):
        event["sequence_number"] = number
        yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
