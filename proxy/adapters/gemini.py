"""Adapter for Google's Gemini API (``generateContent``, ``streamGenerateContent?alt=sse``
and ``batchEmbedContents`` under ``{base_url}/models/{model}``), spoken as OpenAI.

Requests: system and developer messages become ``systemInstruction``; the assistant is
the ``model`` role; images become ``inlineData`` (data URLs) or ``fileData``; tool calls
and results become ``functionCall`` and ``functionResponse`` parts. Sampling options go
into ``generationConfig`` (``n`` → ``candidateCount``, ``stop`` → ``stopSequences``,
``seed``, ``logprobs``/``top_logprobs``, ``response_format`` → ``responseMimeType`` and
``responseJsonSchema``); ``tools`` → ``functionDeclarations``; ``tool_choice`` →
``toolConfig``.

Usage comes from ``usageMetadata``: ``promptTokenCount`` includes the cached
``cachedContentTokenCount``; output is ``candidatesTokenCount + thoughtsTokenCount``.
Streamed chunks carry cumulative snapshots: the last one wins.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

from billing.pricing import TokenUsage
from config.errors import InvalidRequest
from proxy.adapters.base import (
    Completion,
    Unsupported,
    UpstreamStream,
    bad_response,
    cut_short,
    decode_chunk,
    json_of,
    openai_usage,
    post,
    secret,
)
from proxy.route import Target

FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return ""


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "text":
            parts.append({"text": part.get("text", "")})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
                mime, data = url[5:].split(";base64,", 1)
                parts.append({"inlineData": {"mimeType": mime, "data": data}})
            elif isinstance(url, str):
                parts.append({"fileData": {"fileUri": url}})
    return parts


def _contents(messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call id -> function name, for functionResponse

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
        elif role == "user":
            add("user", _parts(message.get("content")))
        elif role == "assistant":
            parts = _parts(message.get("content")) if message.get("content") else []
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                names[call.get("id", "")] = function.get("name", "")
                try:
                    args = json.loads(function.get("arguments") or "{}")
                except ValueError:
                    raise InvalidRequest("A tool call's 'arguments' is not valid JSON.", param="messages") from None
                parts.append({"functionCall": {"name": function.get("name"), "args": args}})
            add("model", parts)
        elif role in ("tool", "function"):
            name = names.get(message.get("tool_call_id", ""), message.get("name", ""))
            add("user", [{"functionResponse": {"name": name, "response": {"content": _text(message.get("content"))}}}])
    return system, contents


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice == "auto":
        return {"functionCallingConfig": {"mode": "AUTO"}}
    if choice == "required":
        return {"functionCallingConfig": {"mode": "ANY"}}
    if choice == "none":
        return {"functionCallingConfig": {"mode": "NONE"}}
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}}
    return None


def translate_request(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request as a Gemini generateContent request (the model is in the URL)."""
    system, contents = _contents(body["messages"])
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config: dict[str, Any] = {}
    simple = {
        "temperature": "temperature",
        "top_p": "topP",
        "n": "candidateCount",
        "seed": "seed",
        "presence_penalty": "presencePenalty",
        "frequency_penalty": "frequencyPenalty",
    }
    for ours, theirs in simple.items():
        if body.get(ours) is not None:
            config[theirs] = body[ours]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("logprobs"):
        config["responseLogprobs"] = True
        if body.get("top_logprobs") is not None:
            config["logprobs"] = body["top_logprobs"]
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema is not None:
            config["responseJsonSchema"] = schema
    if config:
        out["generationConfig"] = config
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            {
                "functionDeclarations": [
                    {
                        "name": t["function"]["name"],
                        **({"description": t["function"]["description"]} if t["function"].get("description") else {}),
                        **({"parameters": t["function"]["parameters"]} if t["function"].get("parameters") else {}),
                    }
                    for t in tools
                    if isinstance(t, Mapping) and isinstance(t.get("function"), Mapping)
                ]
            }
        ]
        tool_config = _tool_config(body.get("tool_choice"))
        if tool_config:
            out["toolConfig"] = tool_config
    return out


def usage_of(metadata: Any) -> TokenUsage | None:
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("promptTokenCount"), int):
        return None
    prompt = metadata["promptTokenCount"] + (metadata.get("toolUsePromptTokenCount") or 0)
    cached = metadata.get("cachedContentTokenCount") or 0
    return TokenUsage(
        input_tokens=prompt,
        output_tokens=(metadata.get("candidatesTokenCount") or 0) + (metadata.get("thoughtsTokenCount") or 0),
        cached_input_tokens=min(cached, prompt),
    )


def _candidate(candidate: Mapping[str, Any], call_ids: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """The visible text and tool calls of one candidate (thought summaries are left out)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
        elif isinstance(part.get("functionCall"), Mapping):
            call = part["functionCall"]
            call_id = call.get("id") or f"call_{len(call_ids)}"
            call_ids.append(call_id)
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.get("name"), "arguments": json.dumps(call.get("args") or {})},
                }
            )
    return "".join(texts), calls


def _finish(candidate: Mapping[str, Any], has_calls: bool) -> str | None:
    reason = candidate.get("finishReason")
    if not reason:
        return None
    return "tool_calls" if has_calls else FINISH.get(reason, "stop")


def translate_response(data: dict[str, Any], model: str) -> Completion:
    choices = []
    for position, candidate in enumerate(data.get("candidates") or []):
        text, calls = _candidate(candidate, [])
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = calls
        choices.append(
            {
                "index": candidate.get("index", position),
                "message": message,
                "logprobs": None,
                "finish_reason": _finish(candidate, bool(calls)) or "stop",
            }
        )
    usage = usage_of(data.get("usageMetadata"))
    body: dict[str, Any] = {
        "id": data.get("responseId") or "",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = openai_usage(usage)
    return Completion(body=body, usage=usage)


class _Stream(UpstreamStream):
    """Each SSE event is a whole GenerateContentResponse: new text, cumulative usage."""

    usage: TokenUsage | None = None

    def partial_usage(self) -> TokenUsage | None:
        return self.usage

    def chunks(self) -> Iterator[dict[str, Any]]:
        base: dict[str, Any] = {"id": "", "object": "chat.completion.chunk", "created": int(time.time())}
        base["model"] = self.target.upstream_model
        finished: set[int] = set()
        started: set[int] = set()
        call_ids: dict[int, list[str]] = {}
        for payload in self.payloads():
            data = decode_chunk(payload)  # Gemini reports a mid-stream failure as {"error": ...}
            base["id"] = data.get("responseId") or base["id"]
            self.usage = usage_of(data.get("usageMetadata")) or self.usage  # a snapshot: the latest wins
            for position, candidate in enumerate(data.get("candidates") or []):
                index = candidate.get("index", position)
                ids = call_ids.setdefault(index, [])
                first_call = len(ids)
                text, calls = _candidate(candidate, ids)
                delta: dict[str, Any] = {}
                if index not in started:
                    started.add(index)
                    delta["role"] = "assistant"
                if text or (not calls and "role" in delta):
                    delta["content"] = text
                if calls:
                    delta["tool_calls"] = [{"index": first_call + i, **c} for i, c in enumerate(calls)]
                finish = _finish(candidate, bool(ids))
                if finish:
                    finished.add(index)
                if delta or finish:
                    yield {
                        **base,
                        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
                    }
        # Gemini has no end marker: a stream is complete when every candidate has finished.
        if not finished or finished != started:
            raise cut_short()
        if self.usage is not None:
            yield {**base, "choices": [], "usage": openai_usage(self.usage)}


class GeminiAdapter(Unsupported):
    kind = "gemini"

    def _headers(self, target: Target) -> dict[str, str]:
        return {"x-goog-api-key": secret(target)}

    def _url(self, target: Target, method: str) -> str:
        return f"{target.base_url.rstrip('/')}/models/{target.upstream_model}:{method}"

    def complete(self, target: Target, body: dict[str, Any]) -> Completion:
        response = post(
            target, self._url(target, "generateContent"), translate_request(body), self._headers(target), stream=False
        )
        data = json_of(target, response)
        if not isinstance(data.get("candidates"), list):
            raise bad_response(target, response.content)
        return translate_response(data, target.upstream_model)

    def stream(self, target: Target, body: dict[str, Any]) -> _Stream:
        url = self._url(target, "streamGenerateContent") + "?alt=sse"
        return _Stream(target, post(target, url, translate_request(body), self._headers(target), stream=True))

    def embed(self, target: Target, body: dict[str, Any]) -> Completion:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InvalidRequest("This model's provider (Gemini) embeds strings only.", param="input")
        request: dict[str, Any] = {
            "requests": [
                {
                    "model": f"models/{target.upstream_model}",
                    "content": {"parts": [{"text": text}]},
                    **({"outputDimensionality": body["dimensions"]} if body.get("dimensions") else {}),
                }
                for text in texts
            ]
        }
        response = post(target, self._url(target, "batchEmbedContents"), request, self._headers(target), stream=False)
        data = json_of(target, response)
        embeddings = data.get("embeddings")
        if not isinstance(embeddings, list):
            raise bad_response(target, response.content)
        return Completion(
            body={
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": e.get("values", [])}
                    for i, e in enumerate(embeddings)
                ],
                "model": target.upstream_model,
            },
            usage=None,  # batchEmbedContents reports no usage: Tollway counts the input
        )
