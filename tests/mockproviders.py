"""Loopback upstreams that speak Anthropic's and Gemini's own wire formats.

    python -m tests.mockupstream --kind anthropic|gemini [--fixtures DIR] [--api-key K]

They answer from fixture files built from the providers' documented examples
(``tests/fixtures/<kind>/``), byte for byte, and record every request they receive so a
test can assert exactly what an adapter sent: ``GET /_debug/requests`` lists them (method,
path, query, the auth headers, the JSON body) and ``DELETE /_debug/requests`` forgets them.
``GET /_debug/stats`` counts every request ever received, in total and by the body's
``user`` field (the fault suite tags each call, to prove no call was sent twice).

Behaviour is chosen by the model name in the request, as for the OpenAI mock:
``mock-error-<status>`` answers that status with the provider's error body;
``mock-garbage`` answers 200 with a body that is not JSON; ``mock-cut`` breaks the stream
off before its last event (after at most three); ``mock-stream-error`` sends the
provider's in-stream error event; ``mock-slow`` paces a stream at 50 ms per event.
Otherwise the request's shape picks the fixture:

* Anthropic: ``output_config`` → ``structured_output``; ``tool_choice`` forcing the
  ``final_answer`` tool → ``forced_tool``; ``thinking`` → ``thinking``; ``tools`` →
  ``tool_use``; else ``message``.
* Gemini: model ``mock-blocked`` → ``blocked_prompt`` (the prompt refused for safety);
  ``mock-safety`` → ``safety_stop`` (a candidate stopped for safety); a ``gemini-3…``
  model with ``tools`` → ``function_call_signature`` (a call with its
  ``thoughtSignature``); ``tools`` → ``function_call``;
  ``generationConfig.responseLogprobs`` → ``logprobs``; else ``generate_content``.

The Anthropic one also answers ``POST /v1/messages/count_tokens`` from
``count_tokens.json`` (refusing a body with ``max_tokens``, as Anthropic does), and records
``anthropic-beta`` with the other auth headers.

Like the real APIs, they refuse (400, in the provider's words) what those refuse and
Tollway must never send: Gemini a tool schema keyword outside its ``Schema`` subset, or a
Gemini 3 function call sent back without its ``thoughtSignature``; Anthropic a thinking
request whose earlier tool-using turn lost its signed thinking block, thinking with a
forced tool choice, or a thinking budget not below ``max_tokens``. Kept free of Django.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

StartResponse = Callable[..., Any]
SLOW_DELAY = 0.05


class CutStream(Exception):
    """Raised inside a streamed body to drop the connection mid-response."""


def respond_json(
    start_response: StartResponse, status: int, body: Any, headers: list[tuple[str, str]] | None = None
) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        f"{status} X", [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *(headers or [])]
    )
    return [data]


def sse_events(text: str) -> list[str]:
    """A fixture's events, each with its blank-line terminator, as sent on the wire."""
    sep = "\r\n\r\n" if "\r\n\r\n" in text else "\n\n"
    return [event + sep for event in text.split(sep) if event.strip()]


class Recorder:
    """Keeps the last requests received, for ``/_debug/requests``, and counts them all,
    for ``/_debug/stats``."""

    AUTH_HEADERS = ("authorization", "x-api-key", "anthropic-version", "anthropic-beta", "x-goog-api-key")

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.total = 0
        self.by_user: dict[str, int] = {}

    def record(self, environ: dict[str, Any], body: Any) -> None:
        headers = {
            name: environ[f"HTTP_{name.upper().replace('-', '_')}"]
            for name in self.AUTH_HEADERS
            if f"HTTP_{name.upper().replace('-', '_')}" in environ
        }
        self.total += 1
        user = body.get("user") if isinstance(body, dict) else None
        if isinstance(user, str):
            self.by_user[user] = self.by_user.get(user, 0) + 1
        self.requests.append(
            {
                "method": environ.get("REQUEST_METHOD"),
                "path": environ.get("PATH_INFO"),
                "query": environ.get("QUERY_STRING", ""),
                "headers": headers,
                "body": body,
            }
        )
        del self.requests[:-100]

    def debug(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes] | None:
        if environ.get("PATH_INFO") == "/_debug/stats":
            return respond_json(start_response, 200, {"total": self.total, "by_user": self.by_user})
        if environ.get("PATH_INFO") != "/_debug/requests":
            return None
        if environ.get("REQUEST_METHOD") == "DELETE":
            self.requests.clear()
        return respond_json(start_response, 200, self.requests)


def read_json(environ: dict[str, Any]) -> Any:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    try:
        return json.loads(environ["wsgi.input"].read(length) or b"null")
    except ValueError:
        return None


class FixtureUpstream:
    """Shared plumbing; subclasses know their provider's paths, auth and fixtures."""

    kind = ""

    def __init__(self, fixtures: Path, *, api_key: str = "") -> None:
        self.fixtures = fixtures
        self.api_key = api_key
        self.recorder = Recorder()
        self.errors: dict[str, Any] = json.loads((fixtures / "errors.json").read_text())

    def fixture(self, name: str) -> str:
        return (self.fixtures / name).read_text()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/health":
            return respond_json(start_response, 200, {"status": "ok"})
        debug = self.recorder.debug(environ, start_response)
        if debug is not None:
            return debug
        body = read_json(environ)
        self.recorder.record(environ, body)
        return self.handle(environ, start_response, body)

    def handle(self, environ: dict[str, Any], start_response: StartResponse, body: Any) -> Iterable[bytes]:
        raise NotImplementedError

    def garbage(self, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"<html>definitely not json"]

    def error(self, start_response: StartResponse, status: int) -> list[bytes]:
        body = self.errors[str(status)]
        # Anthropic sends Retry-After on a 429; Google puts a RetryInfo in the body instead.
        headers = [("Retry-After", "7")] if status == 429 and self.kind == "anthropic" else []
        return respond_json(start_response, self.wire_status(status, body), body, headers)

    def wire_status(self, status: int, body: Any) -> int:
        return status

    def stream(self, events: list[str], *, cut: bool = False, slow: bool = False) -> Iterator[bytes]:
        cut_at = min(3, len(events) - 1)  # always before the last event
        for index, event in enumerate(events):
            if cut and index == cut_at:
                raise CutStream("mock-cut: dropping the connection mid-stream")
            if slow:
                time.sleep(SLOW_DELAY)
            yield event.encode()


class AnthropicUpstream(FixtureUpstream):
    """``POST /v1/messages`` as Anthropic answers it."""

    kind = "anthropic"

    def handle(self, environ: dict[str, Any], start_response: StartResponse, body: Any) -> Iterable[bytes]:
        if self.api_key and environ.get("HTTP_X_API_KEY") != self.api_key:
            return self.error(start_response, 401)
        if environ.get("PATH_INFO") == "/v1/messages/count_tokens" and environ.get("REQUEST_METHOD") == "POST":
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or "max_tokens" in body:
                return self.error(start_response, 400)
            return respond_json(start_response, 200, json.loads(self.fixture("count_tokens.json")))
        if environ.get("PATH_INFO") != "/v1/messages" or environ.get("REQUEST_METHOD") != "POST":
            return self.error(start_response, 404)
        if not isinstance(body, dict) or not body.get("max_tokens") or not isinstance(body.get("messages"), list):
            return self.error(start_response, 400)
        model = str(body.get("model", ""))
        if model.startswith("mock-error-"):
            return self.error(start_response, int(model.rsplit("-", 1)[1]))
        if model == "mock-garbage":
            return self.garbage(start_response)
        refusal = self.refusal(body)
        if refusal:
            return respond_json(
                start_response, 400, {"type": "error", "error": {"type": "invalid_request_error", "message": refusal}}
            )
        name = self.fixture_name(body)
        if not body.get("stream"):
            return respond_json(start_response, 200, json.loads(self.fixture(f"{name}.json")))
        events = sse_events(self.fixture(f"{name}_stream.sse"))
        if model == "mock-stream-error":
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            events = [*events[:4], f"event: error\ndata: {json.dumps(error)}\n\n"]
        start_response("200 OK", [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache")])
        return self.stream(events, cut=model == "mock-cut", slow=model == "mock-slow")

    def fixture_name(self, body: dict[str, Any]) -> str:
        if body.get("output_config"):
            return "structured_output"
        if body.get("tool_choice") == {"type": "tool", "name": "final_answer"}:
            return "forced_tool"
        if body.get("thinking"):
            return "thinking"
        return "tool_use" if body.get("tools") else "message"

    def refusal(self, body: dict[str, Any]) -> str:
        """What the real Messages API would refuse about ``body`` (its words), or ""."""
        thinking = body.get("thinking")
        if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
            return ""
        if int(thinking.get("budget_tokens") or 0) >= int(body["max_tokens"]):
            return "`max_tokens` must be greater than `thinking.budget_tokens`."
        if isinstance(body.get("tool_choice"), dict) and body["tool_choice"].get("type") in ("any", "tool"):
            return "Thinking may not be enabled when tool_choice forces tool use."
        for index, message in enumerate(body["messages"]):
            content = message.get("content")
            if message.get("role") != "assistant" or not isinstance(content, list):
                continue
            kinds = [block.get("type") for block in content if isinstance(block, dict)]
            if "tool_use" in kinds and kinds[0] not in ("thinking", "redacted_thinking"):
                return (
                    f"messages.{index}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                    f"`{kinds[0]}`. When `thinking` is enabled, a final `assistant` message must start with a "
                    "thinking block."
                )
            if any(b.get("type") == "thinking" and not b.get("signature") for b in content if isinstance(b, dict)):
                return f"messages.{index}.content: thinking blocks need their signature."
        return ""


# Gemini's Schema: what functionDeclarations[].parameters may hold (anything else is a 400).
GEMINI_SCHEMA_KEYS = {
    "type", "format", "title", "description", "nullable", "enum", "items", "minItems", "maxItems",
    "properties", "required", "minProperties", "maxProperties", "minimum", "maximum", "minLength",
    "maxLength", "pattern", "example", "anyOf", "propertyOrdering", "default",
}  # fmt: skip


def gemini_schema_error(schema: Any, where: str) -> str:
    """Google's message for the first keyword ``schema`` has outside Gemini's subset, or ""."""
    if not isinstance(schema, dict):
        return ""
    for key, value in schema.items():
        if key not in GEMINI_SCHEMA_KEYS:
            return f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field."
        children: list[tuple[str, Any]] = []
        if key == "properties" and isinstance(value, dict):
            children = [(f"{where}.properties[{name}].value", sub) for name, sub in value.items()]
        elif key == "items":
            children = [(f"{where}.items", value)]
        elif key == "anyOf" and isinstance(value, list):
            children = [(f"{where}.any_of[{i}]", sub) for i, sub in enumerate(value)]
        for child_where, child in children:
            error = gemini_schema_error(child, child_where)
            if error:
                return error
    return ""


class GeminiUpstream(FixtureUpstream):
    """``/v1beta/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse`` and
    ``:batchEmbedContents`` as Google answers them."""

    kind = "gemini"

    def wire_status(self, status: int, body: Any) -> int:
        return int(body["error"]["code"])  # a bad key is a 400 with reason API_KEY_INVALID

    def handle(self, environ: dict[str, Any], start_response: StartResponse, body: Any) -> Iterable[bytes]:
        if self.api_key and environ.get("HTTP_X_GOOG_API_KEY") != self.api_key:
            return self.error(start_response, 401)
        path = environ.get("PATH_INFO", "")
        prefix = "/v1beta/models/"
        if not path.startswith(prefix) or ":" not in path or environ.get("REQUEST_METHOD") != "POST":
            return self.error(start_response, 404)
        model, method = path[len(prefix) :].rsplit(":", 1)
        if not isinstance(body, dict):
            return self.error(start_response, 400)
        if model.startswith("mock-error-"):
            return self.error(start_response, int(model.rsplit("-", 1)[1]))
        if model == "mock-garbage":
            return self.garbage(start_response)
        if method == "batchEmbedContents":
            values = json.loads(self.fixture("embeddings.json"))["embeddings"][0]["values"]
            return respond_json(start_response, 200, {"embeddings": [{"values": values} for _ in body["requests"]]})
        if not isinstance(body.get("contents"), list):
            return self.error(start_response, 400)
        refusal = self.refusal(model, body)
        if refusal:
            error = {"error": {"code": 400, "message": refusal, "status": "INVALID_ARGUMENT"}}
            return respond_json(start_response, 400, error)
        name = self.fixture_name(model, body)
        if method == "generateContent":
            return respond_json(start_response, 200, json.loads(self.fixture(f"{name}.json")))
        if method != "streamGenerateContent" or environ.get("QUERY_STRING") != "alt=sse":
            return self.error(start_response, 404)
        events = sse_events(self.fixture("stream.sse" if name == "generate_content" else f"{name}_stream.sse"))
        if model == "mock-stream-error":
            events = [events[0], f"data: {json.dumps(self.errors['503'])}\r\n\r\n"]
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        return self.stream(events, cut=model == "mock-cut", slow=model == "mock-slow")

    def fixture_name(self, model: str, body: dict[str, Any]) -> str:
        if model == "mock-blocked":
            return "blocked_prompt"
        if model == "mock-safety":
            return "safety_stop"
        if body.get("tools"):
            return "function_call_signature" if model.startswith("gemini-3") else "function_call"
        if (body.get("generationConfig") or {}).get("responseLogprobs"):
            return "logprobs"
        return "generate_content"

    def refusal(self, model: str, body: dict[str, Any]) -> str:
        """What the real API would refuse about ``body`` (Google's words), or ""."""
        for t, tool in enumerate(body.get("tools") or []):
            for f, declaration in enumerate(tool.get("functionDeclarations") or []):
                where = f"tools[{t}].function_declarations[{f}].parameters"
                error = gemini_schema_error(declaration.get("parameters"), where)
                if error:
                    return error
        if not model.startswith("gemini-3"):
            return ""
        for position, content in enumerate(body["contents"]):
            calls = [p for p in content.get("parts") or [] if isinstance(p, dict) and "functionCall" in p]
            if content.get("role") == "model" and calls and not calls[0].get("thoughtSignature"):
                name = calls[0]["functionCall"].get("name")
                return (
                    "Function call is missing a thought_signature in functionCall parts. This is required for "
                    f"tools to work correctly. Additional data, function call `default_api:{name}`, position "
                    f"{position + 1}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures."
                )
        return ""
