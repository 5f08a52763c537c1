"""A standalone OpenAI-compatible mock upstream server, over real HTTP.

    python -m tests.mockupstream --port 9100 [--api-key K] [--latency-ms 0] [--chunk-delay-ms 0]
    python -m tests.mockupstream --kind anthropic|gemini [--fixtures DIR] ...   (see tests.mockproviders)

Tests run it on loopback so the real upstream code path (httpx, SSE parsing, error
mapping) is exercised; the benchmark uses it too. Answers come from ``proxy.mockgen``.

Faults are chosen by the upstream model name, so a deployment can point at one:

* ``mock-error-<status>``: that HTTP status with an OpenAI error body (429 adds Retry-After);
* ``mock-busy``: 503 with ``Retry-After: 1`` (an overloaded provider that says when);
* ``mock-garbage``: a 200 whose body is not JSON;
* ``mock-cut``: a stream that breaks off after a few chunks, with no usage and no [DONE];
* ``mock-no-usage``: a stream that never sends the usage chunk;
* ``mock-usage-on-finish`` / ``mock-usage-on-every``: a stream whose usage rides on the
  finish chunk, or on every chunk (vLLM's ``continuous_usage_stats``), with its choices;
* ``mock-slow``: a stream paced at 50 ms per chunk (to leave in the middle of);
* ``mock-hang``: waits a second before answering (to trip a first-byte timeout);
* ``mock-flaky-<N>[-<tag>]``: the first N calls with that exact model name answer 503,
  later ones succeed (a deployment that recovers; the tag keeps tests apart);
* ``mock-reset``: starts a 200 answer (JSON, or a stream's headers and a comment) and
  drops the connection before any content;
* ``mock-stall``: a stream that sends its headers, then waits a second before its first
  chunk (a failure before the first byte that is not a status).

It serves ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and the
Responses API's ``/v1/responses`` (``tests.mockresponses``), and
records what it received at ``/_debug/requests`` (see ``tests.mockproviders``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from proxy import mockgen
from tests import mockresponses
from tests.mockproviders import AnthropicUpstream, GeminiUpstream, Recorder, read_json

# OpenAI streams its chunks as compact JSON, "usage":null on each when usage was asked for.
COMPACT = (",", ":")

StartResponse = Callable[..., Any]


class CutStream(Exception):
    """Raised inside a streamed body to drop the connection mid-response."""


def _json(
    start_response: StartResponse, status: int, body: Any, headers: list[tuple[str, str]] | None = None
) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        f"{status} X", [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *(headers or [])]
    )
    return [data]


def _error(
    start_response: StartResponse,
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    retry_after: bool = False,
) -> list[bytes]:
    headers = [("Retry-After", "1")] if status == 429 or retry_after else []
    return _json(
        start_response, status, {"error": {"message": message, "type": type_, "param": None, "code": code}}, headers
    )


class MockUpstream:
    def __init__(self, *, api_key: str = "", latency: float = 0.0, chunk_delay: float = 0.0) -> None:
        self.api_key = api_key
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.recorder = Recorder()
        self.calls: dict[str, int] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/health":
            return _json(start_response, 200, {"status": "ok"})
        debug = self.recorder.debug(environ, start_response)
        if debug is not None:
            return debug
        if self.api_key and environ.get("HTTP_AUTHORIZATION", "") != f"Bearer {self.api_key}":
            return _error(start_response, 401, "Incorrect API key provided.", code="invalid_api_key")
        if path in ("/v1/models", "/models") and method == "GET":
            return _json(
                start_response,
                200,
                {"object": "list", "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "mock"}]},
            )
        if method != "POST":
            return _error(start_response, 404, f"No route {method} {path}", code="not_found")
        body = read_json(environ)
        self.recorder.record(environ, body)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _error(start_response, 400, "We could not parse the JSON body of your request.")
        if path in ("/v1/chat/completions", "/chat/completions"):
            if not isinstance(body.get("messages"), list):
                return _error(start_response, 400, "'messages' is required.")
            return self.answer(start_response, body, mockgen.completion, self.stream)
        if path in ("/v1/completions", "/completions"):
            if body.get("prompt") is None:
                return _error(start_response, 400, "'prompt' is required.")
            return self.answer(start_response, body, mockgen.text_completion, self.text_stream)
        if path in ("/v1/responses", "/responses"):
            if body.get("input") is None:
                return _error(start_response, 400, "Missing required parameter: 'input'.")
            if body.get("previous_response_id"):  # this mock stores nothing, as Tollway must assume
                return _error(start_response, 404, f"Response with id '{body['previous_response_id']}' not found.")
            return self.answer(start_response, body, mockresponses.answer, self.responses_stream)
        if path in ("/v1/embeddings", "/embeddings"):
            if self.latency:
                time.sleep(self.latency)
            return _json(start_response, 200, mockgen.embeddings(body, model=body["model"]))
        return _error(start_response, 404, f"No route {method} {path}", code="not_found")

    def answer(
        self,
        start_response: StartResponse,
        body: dict[str, Any],
        complete: Callable[..., dict[str, Any]],
        stream: Callable[[dict[str, Any], str], Iterator[bytes]],
    ) -> Iterable[bytes]:
        model = body["model"]
        if self.latency:
            time.sleep(self.latency)
        if model == "mock-hang":
            time.sleep(1.0)
        self.calls[model] = self.calls.get(model, 0) + 1
        if model.startswith("mock-flaky-") and self.calls[model] <= int(model.split("-")[2]):
            return _error(start_response, 503, f"Mock flaky failure {self.calls[model]}.", type_="server_error")
        if model == "mock-busy":
            return _error(start_response, 503, "Mock upstream overloaded.", type_="server_error", retry_after=True)
        if model.startswith("mock-error-"):
            status = int(model.rsplit("-", 1)[1])
            return _error(
                start_response,
                status,
                f"Mock upstream failure {status}.",
                type_="server_error" if status >= 500 else "invalid_request_error",
            )
        if model == "mock-reset":
            stream_ = bool(body.get("stream"))
            kind = "text/event-stream" if stream_ else "application/json"
            start_response("200 OK", [("Content-Type", kind), ("Content-Length", "4096")])
            return self.reset(b": hello\n\n" if stream_ else b'{"id": "chatcmpl-')
        if model == "mock-garbage":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b"<html>definitely not json"]
        if not body.get("stream"):
            return _json(start_response, 200, complete(body, model=model))
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        return stream(body, model)

    def reset(self, first: bytes) -> Iterator[bytes]:
        yield first
        raise CutStream("mock-reset: dropping the connection before the answer")

    def _delay(self, model: str) -> float:
        return 0.05 if model == "mock-slow" else self.chunk_delay

    def responses_stream(self, body: dict[str, Any], model: str) -> Iterator[bytes]:
        yield from mockresponses.sse(body, model=model)

    def text_stream(self, body: dict[str, Any], model: str) -> Iterator[bytes]:
        for chunk in mockgen.text_chunks(body, model=model, chunk_delay=self._delay(model)):
            yield b"data: " + json.dumps(chunk, separators=COMPACT).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    def stream(self, body: dict[str, Any], model: str) -> Iterator[bytes]:
        if model == "mock-stall":
            yield b": stalling\n\n"  # an SSE comment, so the headers go out now
            time.sleep(1.0)
        with_usage = False if model == "mock-no-usage" else None
        usage_on = model.removeprefix("mock-usage-on-") if model.startswith("mock-usage-on-") else ""
        for index, chunk in enumerate(
            mockgen.chunks(body, model=model, chunk_delay=self._delay(model), with_usage=with_usage, usage_on=usage_on)
        ):
            if model == "mock-cut" and index == 4:
                raise CutStream("mock-cut: dropping the connection mid-stream")
            yield b"data: " + json.dumps(chunk, separators=COMPACT).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


def main(argv: list[str] | None = None) -> None:
    from gevent import monkey

    monkey.patch_all()  # sleeps and sockets cooperate, so one process serves thousands of streams
    from gevent.pywsgi import WSGIServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kind", choices=["openai", "anthropic", "gemini"], default="openai")
    parser.add_argument("--fixtures", default="", help="fixture directory (anthropic, gemini)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--api-key", default="", help="require this Bearer key")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before answering")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between streamed chunks")
    args = parser.parse_args(argv)
    app: Callable[..., Iterable[bytes]]
    if args.kind == "openai":
        app = MockUpstream(api_key=args.api_key, latency=args.latency_ms / 1000, chunk_delay=args.chunk_delay_ms / 1000)
    else:
        fixtures = Path(args.fixtures or Path(__file__).resolve().parent / "fixtures" / args.kind)
        kinds = {"anthropic": AnthropicUpstream, "gemini": GeminiUpstream}
        app = kinds[args.kind](fixtures, api_key=args.api_key)
    server = WSGIServer((args.host, args.port), app, log=None, error_log=None)
    print(f"mock {args.kind} upstream listening on http://{args.host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
