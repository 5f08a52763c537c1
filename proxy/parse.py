"""Stage 1, parse: the body size limit, JSON, and the required fields, with OpenAI-shaped 400s."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from config.errors import ErrorCode, InvalidRequest

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


# The endpoint a request came through; the same values as the ledger's UsageRecord.Api.
CHAT, COMPLETIONS, EMBEDDINGS = "chat", "completions", "embeddings"


@dataclass(frozen=True)
class ChatRequest:
    """A validated request to one of the model endpoints. ``body`` is passed upstream as
    given (adapters of other formats translate it).

    ``messages`` is the prompt as chat messages, whatever the endpoint: Tollway counts it
    when a provider reports no usage.
    """

    body: dict[str, Any]
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool  # the client asked for the usage chunk
    endpoint: str = CHAT

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        """The body for the provider: its model name, and, when streaming, usage requested
        so the call can be metered from the provider's own count."""
        body = {**self.body, "model": upstream_model}
        if self.stream:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        return body


def json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        raw = request.body
    except RequestDataTooBig:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raise InvalidRequest(
            f"The request body is larger than the {limit} bytes allowed.", code=ErrorCode.BODY_TOO_LARGE, status=413
        ) from None
    try:
        body = orjson.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest(
            "We could not parse the JSON body of your request. Send valid JSON with Content-Type: application/json.",
            code=ErrorCode.INVALID_JSON,
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code=ErrorCode.INVALID_JSON)
    return body


def _required(body: Mapping[str, Any], name: str) -> Any:
    if body.get(name) is None:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name, code=ErrorCode.MISSING_PARAMETER)
    return body[name]


def _model(body: Mapping[str, Any]) -> str:
    model = _required(body, "model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    return model


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    if options is not None and not stream:
        raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
    return bool(stream), bool(options and options.get("include_usage"))


def _positive_ints(body: Mapping[str, Any], *names: str) -> None:
    for name in names:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def completion_request(request: HttpRequest) -> ChatRequest:
    """Legacy ``/v1/completions``: ``prompt`` is a string or a list of strings."""
    body = json_body(request)
    model = _model(body)
    prompt = _strings(_required(body, "prompt"))
    if prompt is None:
        raise InvalidRequest("'prompt' must be a string or a non-empty array of strings.", param="prompt")
    stream, include_usage = _stream_flags(body)
    _positive_ints(body, "max_tokens", "n")
    return ChatRequest(
        body=body,
        model=model,
        messages=[{"role": "user", "content": " ".join(prompt)}],
        stream=stream,
        include_usage=include_usage,
        endpoint=COMPLETIONS,
    )


def embedding_request(request: HttpRequest) -> ChatRequest:
    """``/v1/embeddings``: ``input`` is a string or an array of strings (or of token arrays,
    passed through to providers that accept them)."""
    body = json_body(request)
    model = _model(body)
    raw = _required(body, "input")
    texts = _strings(raw)
    if texts is None and not (isinstance(raw, list) and raw):
        raise InvalidRequest("'input' must be a string or a non-empty array.", param="input")
    _positive_ints(body, "dimensions")
    return ChatRequest(
        body=body,
        model=model,
        messages=[{"role": "user", "content": " ".join(texts or [])}],
        stream=False,
        include_usage=False,
        endpoint=EMBEDDINGS,
    )


def chat_request(request: HttpRequest) -> ChatRequest:
    body = json_body(request)
    model = _model(body)
    messages = _required(body, "messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array of message objects.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{index}] must be an object.", param=f"messages[{index}]")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"messages[{index}].role must be one of {', '.join(sorted(ROLES))}; got {role!r}.",
                param=f"messages[{index}].role",
            )
    stream, include_usage = _stream_flags(body)
    _positive_ints(body, "max_tokens", "max_completion_tokens", "n")
    return ChatRequest(body=body, model=model, messages=messages, stream=stream, include_usage=include_usage)
