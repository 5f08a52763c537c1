"""Stage 1, parse: the body size limit, JSON, its nesting depth, the required fields and
the documented parameters (``proxy.params``), with OpenAI-shaped 400s.

It runs after authentication (``proxy.views``): only a caller with a valid key gets its
body read. Every size the client controls is bounded here or at admission: the body
(``TOLLWAY_MAX_BODY_BYTES``), its nesting (``TOLLWAY_MAX_JSON_DEPTH``), ``n``,
``max_tokens``, ``dimensions``, the prompts of a request; and every string that can reach
Postgres (the model name, in the ledger) is refused if it holds NUL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from config.errors import ErrorCode, InvalidRequest
from proxy import params

log = logging.getLogger(__name__)

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_MODEL_NAME = 256  # the ledger's column holds the requested name

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

    @property
    def prompt_tokens(self) -> int | None:
        """The exact prompt size when the client sent token ids rather than text."""
        if self.endpoint == CHAT:
            return None
        value = self.body.get("prompt" if self.endpoint == COMPLETIONS else "input")
        if not isinstance(value, list) or not value or isinstance(value[0], str):
            return None
        return len(value) if isinstance(value[0], int) else sum(len(ids) for ids in value)

    @property
    def outputs(self) -> int:
        """How many completions the request makes the provider generate, each up to
        ``max_tokens``: ``n`` (or ``best_of`` when larger, since each is generated and
        billed), times the prompts of a legacy completion. What admission reserves for."""
        body = self.body
        choices = max(body.get("n") or 1, body.get("best_of") or 1)
        if self.endpoint == COMPLETIONS:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
                choices *= len(prompt)  # strings or token-id arrays: one completion set each
        return choices

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
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson's own limit (1,024 levels), far above ours
            raise _too_deep(None) from None
        raise _not_json() from None
    except (ValueError, UnicodeDecodeError):
        raise _not_json() from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code=ErrorCode.INVALID_JSON)
    _check_depth(raw, body)
    return body


def _not_json() -> InvalidRequest:
    return InvalidRequest(
        "We could not parse the JSON body of your request. Send valid JSON with Content-Type: application/json.",
        code=ErrorCode.INVALID_JSON,
    )


def _too_deep(param: str | None) -> InvalidRequest:
    limit = settings.TOLLWAY["MAX_JSON_DEPTH"]
    where = f"'{param}'" if param else "The request body"
    return InvalidRequest(f"{where} is nested deeper than {limit} levels, the most Tollway accepts.", param=param)


def _check_depth(raw: bytes, body: dict[str, Any]) -> None:
    """Refuse a body nested deeper than ``MAX_JSON_DEPTH``: the upstream encoders refuse
    depths orjson still parses (254 levels and up), which would be a failure after
    admission instead of a 400.

    A body with fewer brackets than the limit cannot be that deep (a C-speed count of the
    raw bytes); any other is measured by :data:`depth_probe`. Only a body found too deep
    is walked, to name the parameter.
    """
    limit = int(settings.TOLLWAY["MAX_JSON_DEPTH"])
    if raw.count(b"[") + raw.count(b"{") <= limit or depth_probe.within(body, limit):
        return
    for name, value in body.items():
        if not _within(value, limit - 1):
            raise _too_deep(name)
    raise _too_deep(None)


def _within(value: Any, levels: int) -> bool:
    """Whether ``value`` nests no deeper than ``levels`` more containers (a walk in Python)."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return True
    if levels <= 0:
        return False
    return all(_within(child, levels - 1) for child in children if isinstance(child, dict | list))


class DepthProbe:
    """Whether a parsed body nests no deeper than a limit, measured in C rather than by a
    walk in Python (which cost ten times the JSON parse itself on an agent's body).

    orjson refuses to serialise a structure nested more than ``ORJSON_DEPTH`` levels. So
    the body, put at the bottom of ``ORJSON_DEPTH - limit`` one-element lists, serialises
    exactly when it is no deeper than ``limit``: one ``orjson.dumps``. That limit is
    orjson's behaviour, not its documented API, so it is checked once, at first use; if an
    upgrade changed it, the probe warns and walks in Python instead.
    """

    ORJSON_DEPTH = 254

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calibrated: bool | None = None
        self._chains: dict[int, tuple[list[Any], list[Any]]] = {}

    def _chain(self, levels: int) -> tuple[list[Any], list[Any]]:
        """Lists nested ``levels`` deep, outermost and innermost, built once per depth."""
        if levels not in self._chains:
            inner: list[Any] = [None]
            outer = inner
            for _ in range(levels - 1):
                outer = [outer]
            self._chains[levels] = (outer, inner)
        return self._chains[levels]

    def _dumps_within(self, value: Any, levels: int) -> bool:
        outer, inner = self._chain(levels)
        with self._lock:  # one chain per depth, filled and emptied under the lock
            inner[0] = value
            try:
                orjson.dumps(outer)
            except orjson.JSONEncodeError as exc:
                if "recursion" in str(exc).lower():
                    return False
                raise
            finally:
                inner[0] = None
        return True

    def calibrated(self) -> bool:
        if self._calibrated is None:
            try:
                # ORJSON_DEPTH levels serialise, one more does not: the rule this probe needs.
                self._calibrated = self._dumps_within(None, self.ORJSON_DEPTH) and not self._dumps_within(
                    [None], self.ORJSON_DEPTH
                )
            except Exception:  # any surprise means the rule does not hold
                self._calibrated = False
            if not self._calibrated:
                log.warning(
                    "orjson's nesting limit is not %s levels: JSON depth is checked in Python", self.ORJSON_DEPTH
                )
        return self._calibrated

    def within(self, body: dict[str, Any], limit: int) -> bool:
        limit = max(1, min(limit, self.ORJSON_DEPTH - 1))
        if not self.calibrated():
            return _within(body, limit)
        return self._dumps_within(body, self.ORJSON_DEPTH - limit)


depth_probe = DepthProbe()


def _required(body: Mapping[str, Any], name: str) -> Any:
    if body.get(name) is None:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name, code=ErrorCode.MISSING_PARAMETER)
    return body[name]


def _model(body: Mapping[str, Any]) -> str:
    model = _required(body, "model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    if len(model) > MAX_MODEL_NAME or "\x00" in model:
        raise InvalidRequest(
            f"'model' must be a model name: at most {MAX_MODEL_NAME} characters, without NUL.", param="model"
        )
    return model


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
    return bool(stream), bool(options and options.get("include_usage"))


def _token_ids(value: Any) -> bool:
    return bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= params.MAX_TOKEN_ID for t in value
    )


def _prompts(value: Any, name: str, *, max_items: int | None = None) -> list[str]:
    """A prompt or embedding ``input``: a string, an array of strings, an array of token
    ids, or an array of token-id arrays. Returns its texts (none for token ids)."""
    if isinstance(value, str):
        return [value]
    expected = "a string, an array of strings, an array of token ids or an array of token-id arrays"
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"'{name}' must be {expected}.", param=name)
    if max_items is not None and len(value) > max_items:
        raise InvalidRequest(f"'{name}' holds {len(value)} items; at most {max_items} per request.", param=name)
    if all(isinstance(v, str) for v in value):
        return value
    if _token_ids(value) or all(isinstance(v, list) and _token_ids(v) for v in value):
        return []
    raise InvalidRequest(f"'{name}' must be {expected} (token ids are integers from 0 to 2^32 - 1).", param=name)


def completion_request(request: HttpRequest) -> ChatRequest:
    """Legacy ``/v1/completions``: ``prompt`` is a string, an array of strings, an array
    of token ids or an array of them (for providers that take token ids: OpenAI-compatible
    ones and the mock; the others refuse legacy completions altogether)."""
    return completion_body(json_body(request))


def completion_body(body: dict[str, Any]) -> ChatRequest:
    """:func:`completion_request` for a body already parsed (a Batch API line)."""
    model = _model(body)
    texts = _prompts(_required(body, "prompt"), "prompt")
    params.check(body, params.COMPLETIONS)
    stream, include_usage = _stream_flags(body)
    return ChatRequest(
        body=body,
        model=model,
        messages=[{"role": "user", "content": " ".join(texts)}],
        stream=stream,
        include_usage=include_usage,
        endpoint=COMPLETIONS,
    )


def embedding_request(request: HttpRequest) -> ChatRequest:
    """``/v1/embeddings``: ``input`` is a string, or an array of strings, of token ids or
    of token-id arrays (passed through to providers that accept them), at most 2,048."""
    return embedding_body(json_body(request))


def embedding_body(body: dict[str, Any]) -> ChatRequest:
    """:func:`embedding_request` for a body already parsed (a Batch API line)."""
    model = _model(body)
    texts = _prompts(_required(body, "input"), "input", max_items=params.MAX_EMBEDDING_INPUTS)
    params.check(body, params.EMBEDDINGS)
    return ChatRequest(
        body=body,
        model=model,
        messages=[{"role": "user", "content": " ".join(texts)}],
        stream=False,
        include_usage=False,
        endpoint=EMBEDDINGS,
    )


def _message(index: int, message: Any) -> None:
    """One chat message: an object, a known role, content a string, parts or null; its
    common shape checked in one expression, anything else explained by :func:`_refuse_message`."""
    if (
        type(message) is dict
        and type(message.get("role")) is str
        and message["role"] in ROLES
        and type(message.get("content")) is str
        and len(message) == 2
    ):
        return  # {"role": ..., "content": "..."}: most messages
    _refuse_message(index, message)


def _refuse_message(index: int, message: Any) -> None:
    """Raise for a bad message, naming what is wrong; return for a good one."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"{where} must be an object.", param=where)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequest(
            f"{where}.role must be one of {', '.join(sorted(ROLES))}; got {params.shown(role)}.", param=f"{where}.role"
        )
    content = message.get("content")
    if isinstance(content, list):
        for number, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(
                    f"{where}.content[{number}] must be a content part: an object with a 'type'.",
                    param=f"{where}.content[{number}]",
                )
    elif content is not None and not isinstance(content, str):
        raise InvalidRequest(
            f"{where}.content must be a string or an array of content parts.", param=f"{where}.content"
        )
    if not isinstance(message.get("name", ""), str):
        raise InvalidRequest(f"{where}.name must be a string.", param=f"{where}.name")
    calls = message.get("tool_calls")
    if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
        raise InvalidRequest(f"{where}.tool_calls must be an array of tool calls.", param=f"{where}.tool_calls")


def chat_request(request: HttpRequest) -> ChatRequest:
    return chat_body(json_body(request))


def chat_body(body: dict[str, Any]) -> ChatRequest:
    """:func:`chat_request` for a body already parsed (a Batch API line)."""
    model = _model(body)
    messages = _required(body, "messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array of message objects.", param="messages")
    for index, message in enumerate(messages):
        _message(index, message)
    params.check(body, params.CHAT)
    stream, include_usage = _stream_flags(body)
    return ChatRequest(body=body, model=model, messages=messages, stream=stream, include_usage=include_usage)
