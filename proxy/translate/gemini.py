"""OpenAI chat ⇄ Google Gemini ``generateContent`` (and ``batchEmbedContents``).

Requests (:func:`request`): system and developer messages become ``systemInstruction``;
the assistant is the ``model`` role; images become ``inlineData`` (data URLs) or
``fileData``; tool calls and results become ``functionCall`` and ``functionResponse``
parts. Sampling options go into ``generationConfig`` (``n`` → ``candidateCount``, ``stop``
→ ``stopSequences``, ``seed``, penalties, ``logprobs``/``top_logprobs``,
``response_format`` → ``responseMimeType`` and ``responseJsonSchema``,
``reasoning_effort`` → ``thinkingConfig``); ``tools`` → ``functionDeclarations`` with
each schema cut to Gemini's subset (``proxy.translate.gemini_schema``); ``tool_choice``
→ ``toolConfig``.

Answers (:func:`response`, :class:`Chunks`): text parts are the content, thought parts
(``thought: true``, the summaries ``includeThoughts`` asks for) are
``reasoning_content``; ``logprobsResult`` becomes ``logprobs.content``; a prompt blocked
by safety (``promptFeedback.blockReason``, no candidates) and a candidate stopped for
safety both end with ``finish_reason: "content_filter"``.

Tool-call ids: Gemini's ``functionCall`` has none, so each call gets a fresh
``call_…`` id. A call's ``thoughtSignature`` (which Gemini 3 requires back on the next
turn) rides in that id after ``__thought__``, as LiteLLM does, so any OpenAI client
carries it round without knowing: :func:`request` takes it out again.

Usage comes from ``usageMetadata``: ``promptTokenCount`` includes the cached
``cachedContentTokenCount``; output is ``candidatesTokenCount + thoughtsTokenCount``, the
thoughts also reported as ``completion_tokens_details.reasoning_tokens``. Streamed
events carry cumulative snapshots: the last one wins.
"""

from __future__ import annotations

import base64
import re
import struct
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
    new_tool_call_id,
    openai_usage,
    stop_sequences,
    text_of,
    tool_calls,
)
from proxy.translate.gemini_schema import to_gemini

FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}
SIGNATURE_SEPARATOR = "__thought__"  # LiteLLM's, so ids from either gateway round-trip
# Google's documented stand-in for a function call that has no signature (history from
# another model or gateway): Gemini 3 accepts it instead of refusing the turn.
DUMMY_SIGNATURE = "skip_thought_signature_validator"

# reasoning_effort → thinkingBudget (Gemini 2.x) or thinkingLevel (Gemini 3+). The
# budgets are LiteLLM's, so a deployment moved between the two thinks the same.
THINKING_BUDGET = {"none": 0, "minimal": 128, "low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192}
THINKING_LEVEL = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}
_GENERATION = re.compile(r"gemini-(\d+)")


def _generation(model: str) -> int:
    match = _GENERATION.search(model)
    return int(match.group(1)) if match else 0


def thinking_config(effort: str, model: str) -> dict[str, Any]:
    """``reasoning_effort`` as Gemini's ``thinkingConfig`` for ``model``."""
    if effort not in THINKING_BUDGET:
        raise InvalidRequest(
            f"'reasoning_effort' must be one of {', '.join(THINKING_BUDGET)}; got {effort!r}.",
            param="reasoning_effort",
        )
    thoughts = effort != "none"
    if _generation(model) >= 3:
        # Gemini 3 always thinks; Flash also has a "minimal" level, Pro starts at "low".
        level = THINKING_LEVEL.get(effort, "low")
        if effort in ("none", "minimal") and "flash" in model:
            level = "minimal"
        return {"thinkingLevel": level, "includeThoughts": thoughts}
    budget = THINKING_BUDGET[effort]
    if effort == "minimal" and "flash-lite" in model:
        budget = 512  # its smallest budget
    return {"thinkingBudget": budget, "includeThoughts": thoughts}


def split_call_id(call_id: str) -> tuple[str, str | None]:
    """A tool-call id as (id, thought signature or None)."""
    head, sep, signature = call_id.partition(SIGNATURE_SEPARATOR)
    return head, (signature or None) if sep else None


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


def _contents(messages: list[dict[str, Any]], *, model: str) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call id -> function name, for functionResponse
    needs_signature = _generation(model) >= 3

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for index, message in enumerate(messages):
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
        elif role == "user":
            add("user", _parts(message.get("content")))
        elif role == "assistant":
            parts = _parts(message.get("content")) if message.get("content") else []
            for position, call in enumerate(tool_calls(message, index)):
                function = call["function"]
                call_id = str(call.get("id") or "")
                names[call_id] = str(function.get("name") or "")
                part: dict[str, Any] = {
                    "functionCall": {"name": function.get("name"), "args": arguments(function.get("arguments"))}
                }
                signature = split_call_id(call_id)[1]
                if signature is None and needs_signature and position == 0:
                    signature = DUMMY_SIGNATURE  # only the first call of a step carries one
                if signature is not None:
                    part["thoughtSignature"] = signature
                parts.append(part)
            add("model", parts)
        elif role in ("tool", "function"):
            name = names.get(str(message.get("tool_call_id") or ""), str(message.get("name") or ""))
            add(
                "user",
                [{"functionResponse": {"name": name, "response": {"content": text_of(message.get("content"))}}}],
            )
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


def _declaration(function: Mapping[str, Any], index: int) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        declaration["description"] = function["description"]
    parameters = function.get("parameters") or {}
    # A function without arguments has no parameters at all: Gemini refuses an empty object.
    if parameters and (parameters.get("properties") or parameters.get("$ref") or parameters.get("anyOf")):
        declaration["parameters"] = to_gemini(parameters, param=f"tools[{index}].function.parameters")
    return declaration


SIMPLE = {
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "n": "candidateCount",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}


def request(body: Mapping[str, Any], *, model: str) -> dict[str, Any]:
    """An OpenAI chat request as a Gemini generateContent request (the model is in the
    URL; ``model`` decides the thinking settings and signature rules)."""
    system, contents = _contents(body["messages"], model=model)
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config: dict[str, Any] = {}
    for ours, theirs in SIMPLE.items():
        if body.get(ours) is not None:
            config[theirs] = body[ours]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    if body.get("stop"):
        config["stopSequences"] = stop_sequences(body["stop"])
    if body.get("logprobs"):
        config["responseLogprobs"] = True
        if body.get("top_logprobs") is not None:
            config["logprobs"] = body["top_logprobs"]
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = json_schema_of(response_format)
        if schema is not None:
            config["responseJsonSchema"] = schema  # this field takes JSON Schema as it is
    effort = effort_of(body)
    if effort is not None:
        config["thinkingConfig"] = thinking_config(effort, model)
    if config:
        out["generationConfig"] = config
    declared = functions(body.get("tools"))
    if declared:
        out["tools"] = [{"functionDeclarations": [_declaration(f, i) for i, f in enumerate(declared)]}]
        tool_config = _tool_config(body.get("tool_choice"))
        if tool_config:
            out["toolConfig"] = tool_config
    return out


# --- Answers ------------------------------------------------------------------------


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


def usage_body(metadata: Any) -> dict[str, Any] | None:
    """``usageMetadata`` as OpenAI's usage object, thoughts as reasoning tokens."""
    usage = usage_of(metadata)
    if usage is None:
        return None
    return openai_usage(usage, reasoning_tokens=metadata.get("thoughtsTokenCount") or 0)


def _token_logprob(candidate: Any) -> dict[str, Any]:
    token = str(candidate.get("token", "")) if isinstance(candidate, Mapping) else ""
    logprob = candidate.get("logProbability", 0.0) if isinstance(candidate, Mapping) else 0.0
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def logprobs(result: Any) -> dict[str, Any] | None:
    """``logprobsResult`` as OpenAI's ``logprobs``: one entry per chosen token, with the
    top candidates at that position."""
    if not isinstance(result, Mapping):
        return None
    top = result.get("topCandidates") or []
    content = []
    for position, chosen in enumerate(result.get("chosenCandidates") or []):
        alternatives = (
            top[position].get("candidates") if position < len(top) and isinstance(top[position], Mapping) else []
        )
        content.append({**_token_logprob(chosen), "top_logprobs": [_token_logprob(a) for a in alternatives or []]})
    return {"content": content, "refusal": None}


def _candidate(candidate: Mapping[str, Any]) -> tuple[str, str, list[dict[str, Any]]]:
    """One candidate's visible text, thought summary and tool calls (each with a fresh id)."""
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if not isinstance(part, Mapping):
            continue
        if isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else texts).append(part["text"])
        elif isinstance(part.get("functionCall"), Mapping):
            call = part["functionCall"]
            call_id = new_tool_call_id()
            if part.get("thoughtSignature"):
                call_id += SIGNATURE_SEPARATOR + str(part["thoughtSignature"])
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.get("name"), "arguments": json_text(call.get("args") or {})},
                }
            )
    return "".join(texts), "".join(thoughts), calls


def _finish(candidate: Mapping[str, Any], has_calls: bool) -> str | None:
    reason = candidate.get("finishReason")
    if not reason:
        return None
    if FINISH.get(reason) == "content_filter":
        return "content_filter"
    return "tool_calls" if has_calls else FINISH.get(reason, "stop")


def blocked(data: Mapping[str, Any]) -> str | None:
    """Why Gemini refused the prompt itself, if it did (no candidates then)."""
    feedback = data.get("promptFeedback")
    if isinstance(feedback, Mapping) and feedback.get("blockReason") and not data.get("candidates"):
        return str(feedback["blockReason"])
    return None


def response(data: Mapping[str, Any], *, model: str) -> tuple[dict[str, Any], TokenUsage | None]:
    """A generateContent answer as a ``chat.completion`` body, and its usage."""
    choices = []
    if blocked(data):
        choices.append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": "", "refusal": None},
                "logprobs": None,
                "finish_reason": "content_filter",
            }
        )
    for position, candidate in enumerate(data.get("candidates") or []):
        text, thoughts, calls = _candidate(candidate)
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
        if thoughts:
            message["reasoning_content"] = thoughts
        if calls:
            message["tool_calls"] = calls
        choices.append(
            {
                "index": candidate.get("index", position),
                "message": message,
                "logprobs": logprobs(candidate.get("logprobsResult")),
                "finish_reason": _finish(candidate, bool(calls)) or "stop",
            }
        )
    body: dict[str, Any] = {
        "id": data.get("responseId") or "",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    usage = usage_body(data.get("usageMetadata"))
    if usage is not None:
        body["usage"] = usage
    return body, usage_of(data.get("usageMetadata"))


class Chunks:
    """Gemini's streamed ``GenerateContentResponse`` events as ``chat.completion.chunk``
    dicts. Feed each event to :meth:`event`; :meth:`end` yields the usage chunk, or raises
    ``ValueError`` if the stream stopped before every candidate finished (Gemini has no
    end marker)."""

    def __init__(self, model: str) -> None:
        self.base: dict[str, Any] = {"id": "", "object": "chat.completion.chunk", "created": int(time.time())}
        self.base["model"] = model
        self.usage: TokenUsage | None = None
        self.metadata: Any = None
        self.started: set[int] = set()
        self.finished: set[int] = set()
        self.calls: dict[int, int] = {}  # candidate index -> tool calls sent so far

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None, lp: Any = None) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

    def event(self, data: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        self.base["id"] = data.get("responseId") or self.base["id"]
        usage = usage_of(data.get("usageMetadata"))
        if usage is not None:  # a snapshot: the latest wins
            self.usage, self.metadata = usage, data["usageMetadata"]
        if blocked(data):
            self.started.add(0)
            self.finished.add(0)
            yield self._chunk(0, {"role": "assistant", "content": ""}, "content_filter")
            return
        for position, candidate in enumerate(data.get("candidates") or []):
            index = candidate.get("index", position)
            text, thoughts, calls = _candidate(candidate)
            delta: dict[str, Any] = {}
            if index not in self.started:
                self.started.add(index)
                delta["role"] = "assistant"
            if thoughts:
                delta["reasoning_content"] = thoughts
            if text or (not calls and "role" in delta):
                delta["content"] = text
            if calls:
                first = self.calls.get(index, 0)
                delta["tool_calls"] = [{"index": first + i, **c} for i, c in enumerate(calls)]
                self.calls[index] = first + len(calls)
            finish = _finish(candidate, bool(self.calls.get(index)))
            if finish:
                self.finished.add(index)
            if delta or finish:
                yield self._chunk(index, delta, finish, logprobs(candidate.get("logprobsResult")))

    def end(self) -> Iterator[dict[str, Any]]:
        if not self.finished or self.finished != self.started:
            raise ValueError("the stream ended before every candidate finished")
        if self.usage is not None:
            yield {**self.base, "choices": [], "usage": usage_body(self.metadata)}


# --- Embeddings ---------------------------------------------------------------------


def embed_request(body: Mapping[str, Any], *, model: str) -> dict[str, Any]:
    """``/v1/embeddings`` as ``batchEmbedContents``. Gemini embeds text only: token-id
    arrays, which OpenAI's models take, get a 400 that says so."""
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest(
            "This model's provider (Gemini) embeds text only: send 'input' as a string or an array of "
            "strings, not token ids.",
            param="input",
        )
    return {
        "requests": [
            {
                "model": f"models/{model}",
                "content": {"parts": [{"text": text}]},
                **({"outputDimensionality": body["dimensions"]} if body.get("dimensions") else {}),
            }
            for text in texts
        ]
    }


def encode_embedding(values: list[float], encoding_format: Any) -> list[float] | str:
    """A vector as OpenAI sends it: floats, or with ``encoding_format: "base64"`` the
    base64 of little-endian float32s (what the openai SDKs ask for by default)."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


def embed_response(data: Mapping[str, Any], body: Mapping[str, Any], *, model: str) -> dict[str, Any] | None:
    """A batchEmbedContents answer as an OpenAI embedding list; None if it has no list."""
    embeddings = data.get("embeddings")
    if not isinstance(embeddings, list):
        return None
    fmt = body.get("encoding_format")
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_embedding(e.get("values", []), fmt)}
            for i, e in enumerate(embeddings)
        ],
        "model": model,
    }
