"""A standalone OpenAI-compatible mock upstream server, over real HTTP.

    python -m proxy.mockupstream --port 9100 [--api-key K] [--latency-ms 0] [--chunk-delay-ms 0]

Tests run it on loopback so the real upstream code path (httpx, SSE parsing, error
mapping) is exercised; the benchmark uses it too. Answers come from ``proxy.mockgen``.

Faults are chosen by the upstream model name, so a deployment can point at one:

* ``mock-error-<status>``: that HTTP status with an OpenAI error body (429 adds Retry-After);
* ``mock-garbage``: a 200 whose body is not JSON;
* ``mock-cut``: a stream that breaks off after a few chunks, with no usage and no [DONE];
* ``mock-no-usage``: a stream that never sends the usage chunk.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from proxy import mockgen

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
) -> list[bytes]:
    headers = [("Retry-After", "1")] if status == 429 else []
    return _json(
        start_response, status, {"error": {"message": message, "type": type_, "param": None, "code": code}}, headers
    )


class MockUpstream:
    def __init__(self, *, api_key: str = "", latency: float = 0.0, chunk_delay: float = 0.0) -> None:
        self.api_key = api_key
        self.latency = latency
        self.chunk_delay = chunk_delay

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/health":
            return _json(start_response, 200, {"status": "ok"})
        if self.api_key and environ.get("HTTP_AUTHORIZATION", "") != f"Bearer {self.api_key}":
            return _error(start_response, 401, "Incorrect API key provided.", code="invalid_api_key")
        if path in ("/v1/models", "/models") and method == "GET":
            return _json(
                start_response,
                200,
                {"object": "list", "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "mock"}]},
            )
        if path in ("/v1/chat/completions", "/chat/completions") and method == "POST":
            return self.chat(environ, start_response)
        return _error(start_response, 404, f"No route {method} {path}", code="not_found")

    def chat(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            body = json.loads(environ["wsgi.input"].read(length) or b"null")
        except ValueError:
            return _error(start_response, 400, "We could not parse the JSON body of your request.")
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("messages"), list)
            or not isinstance(body.get("model"), str)
        ):
            return _error(start_response, 400, "'model' and 'messages' are required.")
        model = body["model"]
        if self.latency:
            time.sleep(self.latency)
        if model.startswith("mock-error-"):
            status = int(model.rsplit("-", 1)[1])
            return _error(
                start_response,
                status,
                f"Mock upstream failure {status}.",
                type_="server_error" if status >= 500 else "invalid_request_error",
            )
        if model == "mock-garbage":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b"<html>definitely not json"]
        if not body.get("stream"):
            return _json(start_response, 200, mockgen.completion(body, model=model))
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        return self.stream(body, model)

    def stream(self, body: dict[str, Any], model: str) -> Iterator[bytes]:
        with_usage = False if model == "mock-no-usage" else None
        for index, chunk in enumerate(
            mockgen.chunks(body, model=model, chunk_delay=self.chunk_delay, with_usage=with_usage)
        ):
            if model == "mock-cut" and index == 4:
                raise CutStream("mock-cut: dropping the connection mid-stream")
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


def main(argv: list[str] | None = None) -> None:
    from gevent import monkey

    monkey.patch_all()  # sleeps and sockets cooperate, so one process serves thousands of streams
    from gevent.pywsgi import WSGIServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--api-key", default="", help="require this Bearer key")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before answering")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between streamed chunks")
    args = parser.parse_args(argv)
    app = MockUpstream(api_key=args.api_key, latency=args.latency_ms / 1000, chunk_delay=args.chunk_delay_ms / 1000)
    server = WSGIServer((args.host, args.port), app, log=None, error_log=None)
    print(f"mock upstream listening on http://{args.host}:{server.server_port}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
