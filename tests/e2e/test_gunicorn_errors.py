"""gunicorn's own answers, before the app runs (a request line or headers over its limits),
are JSON in OpenAI's shape, not its HTML pages; and with DEBUG on (``make run``), unknown
API paths and bugs answer JSON too."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.conftest import stop
from tests.e2e.conftest import serve


@pytest.fixture
def server(production_env: dict[str, str]) -> Iterator[str]:
    proc, base = serve({**production_env, "WEB_CONCURRENCY": "1"})
    try:
        yield base
    finally:
        stop(proc)


def raw(base: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def openai_error(status: int, headers: dict[str, str], body: bytes, expected: int, code: str) -> None:
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert b"<html" not in body


@pytest.mark.live
def test_an_oversized_url_is_a_json_414(server: str) -> None:
    request = b"GET /v1/models/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    openai_error(*raw(server, request), 414, "uri_too_long")


@pytest.mark.live
def test_an_oversized_header_is_a_json_431(server: str) -> None:
    request = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n"
    openai_error(*raw(server, request), 431, "request_header_fields_too_large")


@pytest.mark.live
def test_too_many_headers_is_a_json_431(server: str) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(120))
    request = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n"
    openai_error(*raw(server, request), 431, "request_header_fields_too_large")


@pytest.mark.live
def test_a_malformed_request_is_a_json_400(server: str) -> None:
    openai_error(*raw(server, b"GET /v1/models HTTP/9.9\r\nHost: x\r\n\r\n"), 400, "bad_request")


@pytest.fixture
def debug_server(production_env: dict[str, str]) -> Iterator[str]:
    proc, base = serve({**production_env, "WEB_CONCURRENCY": "1", "DEBUG": "1"})
    try:
        yield base
    finally:
        stop(proc)


@pytest.mark.live
@pytest.mark.parametrize("path", ["/v1", "/v1/nope", "/api/v1/chat/completions/extra"])
def test_with_debug_on_unknown_api_paths_are_json(debug_server: str, path: str) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    status, headers, body = raw(debug_server, request)
    openai_error(status, headers, body, 404, "not_found")
    assert b"URLconf" not in body and b"urlpatterns" not in body
