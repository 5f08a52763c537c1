"""Deterministic chat completions, shared by the built-in mock provider and the mock
upstream server (``python -m tests.mockupstream``).

The same request always gets the same answer, and the usage it reports is the true
count of what it sent (``proxy.tokens``), so tests can check billing to the token.
Kept free of Django.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from proxy import tokens

DEFAULT_MAX_TOKENS = 40
_WORDS = [
    "tollway",
    "routes",
    "every",
    "request",
    "through",
    "a",
    "fair",
    "and",
    "exact",
    "gateway",
    "that",
    "meters",
    "tokens",
    "prices",
    "usage",
    "streams",
    "answers",
    "retries",
    "failures",
    "and",
    "keeps",
    "the",
    "ledger",
    "honest",
    "for",
    "each",
    "tenant",
    "model",
    "provider",
    "key",
    "budget",
    "invoice",
    "and",
    "report",
    "while",
    "latency",
    "stays",
    "low",
    "and",
    "throughput",
    "stays",
    "high",
    "under",
    "load",
]


def _seed(messages: Sequence[Mapping[str, Any]], index: int) -> bytes:
    last_user = ""
    for message in messages:
        if message.get("role") == "user":
            last_user, _ = tokens.content_text(message.get("content"))
    return hashlib.sha256(f"{index}:{last_user}".encode()).digest()


def reply(messages: Sequence[Mapping[str, Any]], *, max_tokens: int | None, index: int = 0) -> tuple[str, str]:
    """The reply text and its finish reason ("stop", or "length" when cut at max_tokens)."""
    seed = _seed(messages, index)
    length = 12 + seed[0] % 16  # words
    words = [_WORDS[seed[(i + 1) % len(seed)] * (i + 1) % len(_WORDS)] for i in range(length)]
    text = "Mock answer: " + " ".join(words) + "."
    limit = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    parts = tokens.pieces(text)
    if len(parts) > limit:
        return "".join(parts[:limit]), "length"
    return text, "stop"


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    return value if isinstance(value, int) and value >= 0 else None


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The last message's text if it is the user's (not a tool result), else None."""
    last = messages[-1] if messages else {}
    if last.get("role") != "user":
        return None
    return tokens.content_text(last.get("content"))[0]


def tool_call(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The mock's tool call: when the request offers function tools and the user's last
    message names one, it calls that tool (with the message as ``{"query": ...}``); after
    the tool's result, it answers in text. Deterministic, so agents can be tested."""
    tools = body.get("tools")
    text = _last_user_text(body["messages"])
    if not isinstance(tools, list) or body.get("tool_choice") == "none" or text is None:
        return None
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if isinstance(name, str) and name and name in text:
            digest = hashlib.sha256(f"{name}:{text}".encode()).hexdigest()[:24]
            arguments = json.dumps({"query": text[:80]})
            return {"id": f"call_{digest}", "type": "function", "function": {"name": name, "arguments": arguments}}
    return None


def structured(body: Mapping[str, Any], text: str) -> str:
    """With a ``json_schema`` response format, the answer as a JSON object of that schema's
    properties (strings get the reply text, numbers its length, booleans true)."""
    fmt = body.get("response_format")
    spec = fmt.get("json_schema") if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema" else None
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if not isinstance(schema, Mapping):
        return text
    values: dict[str, Any] = {}
    for name, prop in (schema.get("properties") or {}).items():
        kind = prop.get("type") if isinstance(prop, Mapping) else None
        values[name] = {"integer": len(text), "number": len(text), "boolean": True}.get(str(kind), text)
    return json.dumps(values)


def _completion_id(body: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(repr(body.get("messages")).encode()).hexdigest()[:24]
    return f"chatcmpl-mock{digest}"


def completion(body: Mapping[str, Any], *, model: str) -> dict[str, Any]:
    """A ``chat.completion`` object for the request ``body``."""
    messages = body["messages"]
    n = body["n"] if isinstance(body.get("n"), int) and body["n"] > 0 else 1
    choices = []
    completion_tokens = 0
    call = tool_call(body)
    for index in range(n):
        text, finish = reply(messages, max_tokens=_max_tokens(body), index=index)
        text = structured(body, text)
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if call is not None:
            text, finish = call["function"]["name"] + call["function"]["arguments"], "tool_calls"
            message.update(content=None, tool_calls=[call])
        completion_tokens += tokens.count(text)
        choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": finish})
    return {
        "id": _completion_id(body),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(tokens.prompt_tokens(messages), completion_tokens),
        "system_fingerprint": "fp_tollway_mock",
    }


def chunks(
    body: Mapping[str, Any],
    *,
    model: str,
    chunk_delay: float = 0.0,
    with_usage: bool | None = None,
    usage_on: str = "",
) -> Iterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a streamed answer, one token per chunk.

    The usage chunk (``choices: []``) comes last when the request asked for it through
    ``stream_options.include_usage``, or when ``with_usage`` says so. ``usage_on`` puts the
    usage on chunks that still have choices instead, as some servers do: ``"finish"`` on
    the finish chunk only, ``"every"`` on every chunk, a running count (vLLM's
    ``continuous_usage_stats``).
    """
    messages = body["messages"]
    if with_usage is None:
        options = body.get("stream_options") or {}
        with_usage = bool(isinstance(options, Mapping) and options.get("include_usage"))
    text, finish = reply(messages, max_tokens=_max_tokens(body))
    base = {
        "id": _completion_id(body),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_tollway_mock",
    }
    extra: dict[str, Any] = {"usage": None} if with_usage else {}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            **extra,
        }

    prompt = tokens.prompt_tokens(messages)
    if usage_on:
        sent = ""
        for piece in ["", *tokens.pieces(text)]:
            sent += piece
            delta = {"content": piece} if piece else {"role": "assistant", "content": ""}
            running = _usage(prompt, tokens.count(sent))
            yield {**chunk(delta), "usage": running if usage_on == "every" else None}
        yield {**chunk({}, finish), "usage": _usage(prompt, tokens.count(text))}
        return
    yield chunk({"role": "assistant", "content": "", "refusal": None})
    call = tool_call(body)
    if call is not None:
        function = call["function"]
        text, finish = function["name"] + function["arguments"], "tool_calls"
        opening = {"index": 0, "id": call["id"], "type": "function", "function": {"name": function["name"]}}
        yield chunk({"tool_calls": [{**opening, "function": {**opening["function"], "arguments": ""}}]})
        for piece in tokens.pieces(function["arguments"]):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    else:
        text = structured(body, text)
        for piece in tokens.pieces(text):
            if chunk_delay:
                time.sleep(chunk_delay)
            yield chunk({"content": piece})
    yield chunk({}, finish)
    if with_usage:
        yield {**base, "choices": [], "usage": _usage(prompt, tokens.count(text))}


# --- Legacy completions and embeddings ------------------------------------------------


def _token_ids(prompt: Any) -> list[list[int]] | None:
    """A prompt of token ids (``int[]`` or ``int[][]``) as a list of id lists; else None."""
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        return prompt
    return None


def prompt_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A legacy ``prompt`` (a string, a list of strings, or token ids) as one user message."""
    prompt = body.get("prompt", "")
    ids = _token_ids(prompt)
    if ids is not None:
        text = " ".join(str(t) for part in ids for t in part)  # the answer depends on the ids
    else:
        text = prompt if isinstance(prompt, str) else " ".join(p for p in prompt if isinstance(p, str))
    return [{"role": "user", "content": text}]


def _exact_prompt(body: Mapping[str, Any], usage: Any) -> None:
    """A token-id prompt's usage counts the ids themselves, as a real server does."""
    ids = _token_ids(body.get("prompt"))
    if ids is not None and isinstance(usage, dict):
        usage["prompt_tokens"] = sum(len(part) for part in ids)
        usage["total_tokens"] = usage["prompt_tokens"] + usage.get("completion_tokens", 0)


def text_completion(body: Mapping[str, Any], *, model: str) -> dict[str, Any]:
    """A legacy ``text_completion`` object for a ``/v1/completions`` request."""
    chat = completion({**body, "messages": prompt_messages(body)}, model=model)
    _exact_prompt(body, chat["usage"])
    return {
        **chat,
        "id": chat["id"].replace("chatcmpl-", "cmpl-"),
        "object": "text_completion",
        "choices": [
            {
                "index": c["index"],
                "text": c["message"]["content"],
                "logprobs": None,
                "finish_reason": c["finish_reason"],
            }
            for c in chat["choices"]
        ],
    }


def text_chunks(
    body: Mapping[str, Any], *, model: str, chunk_delay: float = 0.0, with_usage: bool | None = None
) -> Iterator[dict[str, Any]]:
    """A streamed legacy completion: ``text_completion`` objects with ``choices[].text``."""
    for chunk in chunks(
        {**body, "messages": prompt_messages(body)}, model=model, chunk_delay=chunk_delay, with_usage=with_usage
    ):
        chunk = {**chunk, "id": chunk["id"].replace("chatcmpl-", "cmpl-"), "object": "text_completion"}
        _exact_prompt(body, chunk.get("usage"))
        chunk["choices"] = [
            {
                "index": c["index"],
                "text": c["delta"].get("content") or "",
                "logprobs": None,
                "finish_reason": c["finish_reason"],
            }
            for c in chunk["choices"]
        ]
        yield chunk


def _vector(values: list[float], encoding_format: Any) -> list[float] | str:
    """Floats, or (``encoding_format: "base64"``, as the openai SDKs ask by default) the
    base64 of little-endian float32s, as OpenAI sends them."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


def embeddings(body: Mapping[str, Any], *, model: str) -> dict[str, Any]:
    """Deterministic unit-length vectors, and the true token count of the input. Token-id
    arrays (``[1, 2]`` or ``[[1, 2], [3]]``), which OpenAI's models take, count one token
    per id."""
    inputs = body.get("input", "")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    texts = [t if isinstance(t, str) else " ".join(str(i) for i in t) for t in inputs]
    requested = body.get("dimensions")
    dimensions = requested if isinstance(requested, int) and requested > 0 else 8
    data = []
    for index, text in enumerate(texts):
        digest = hashlib.sha256(text.encode()).digest()
        raw = [digest[i % len(digest)] - 127.5 for i in range(dimensions)]
        norm = sum(v * v for v in raw) ** 0.5 or 1.0
        vector = [round(v / norm, 6) for v in raw]
        data.append({"object": "embedding", "index": index, "embedding": _vector(vector, body.get("encoding_format"))})
    prompt = sum(tokens.count(t) if isinstance(t, str) else len(t) for t in inputs)
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}
