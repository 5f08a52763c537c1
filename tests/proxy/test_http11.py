"""The upstream wire (proxy.http11), against a raw loopback server: each framing an
upstream may use is read to its end, a connection is reused only when its response ended
where its framing said and the server keeps it, and a malformed head is a protocol error
that costs the connection, never a misread body."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from proxy import upstream
from tests.rawhttp import RawServer

TIMEOUT = {"connect": 5, "read": 5, "write": 5, "pool": 5}


@pytest.fixture(autouse=True)
def fresh_transport(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(upstream, "_transport", None)
    yield
    if upstream._transport is not None:
        upstream._transport.close()


def call(server: RawServer) -> httpx.Response:
    response = upstream.post(server.url, content=b'{"a": 1}', headers={}, timeout=dict(TIMEOUT))
    try:
        response.read()
    finally:
        response.close()
    return response


@pytest.mark.parametrize(
    ("answer", "body", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", b"hello", True),
        (b"HTTP/1.1 200 OK\r\ncontent-length:5\r\nX-Empty:\r\n\r\nhello", b"hello", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", b"ok", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", b"ok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
        # both framings: the chunked one is read, and the connection never trusted
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"ok",
            False,
        ),
    ],
    ids=["length", "repeated-length", "no-space", "no-content", "continue-first", "chunked", "close", "http10", "both"],
)
def test_each_framing_is_read_to_its_end(answer: bytes, body: bytes, reused: bool) -> None:
    server = RawServer(pieces=[answer])

    responses = [call(server) for _ in range(3)]

    assert [r.content for r in responses] == [body] * 3
    assert responses[0].status_code in (200, 204)
    assert server.accepted == (1 if reused else 3)


def test_a_body_delimited_by_the_close_is_read_until_it() -> None:
    server = RawServer(pieces=[b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall ", b"of it"], hang_up=True)

    assert call(server).content == b"all of it"
    assert call(server).content == b"all of it"
    assert server.accepted == 2


def test_headers_and_status_reach_the_caller() -> None:
    server = RawServer(
        pieces=[b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nX-A: b c\r\nContent-Length: 0\r\n\r\n"]
    )

    response = call(server)

    assert response.status_code == 429
    assert response.headers["retry-after"] == "3" and response.headers["x-a"] == "b c"
    assert response.reason_phrase == "Too Many Requests"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", "illegal status line"),
        (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "illegal status line"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n", "illegal header line"),
        (b"HTTP/1.1 200 OK\r\nNo colon\r\nContent-Length: 0\r\n\r\n", "illegal header line"),
        (b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 0\r\n\r\n", "illegal header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok", "illegal Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok", "illegal Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok", "illegal Content-Length"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "switched protocols"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", "head is too long"),
    ],
)
def test_a_malformed_head_is_a_protocol_error_and_costs_the_connection(answer: bytes, error: str) -> None:
    server = RawServer(pieces=[answer])

    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError, match=error) as raised:
            call(server)
        assert raised.value.request.url == server.url, "the error names the request, as httpx's own do"

    assert server.accepted == 2
    assert upstream.pool().idle_count == 0


def test_a_body_shorter_than_its_length_is_a_protocol_error() -> None:
    server = RawServer(pieces=[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], hang_up=True)

    with pytest.raises(httpx.RemoteProtocolError, match="received 5 bytes, expected 10"):
        call(server)
    assert upstream.pool().idle_count == 0


def test_a_server_that_hangs_up_without_answering_is_a_protocol_error() -> None:
    server = RawServer(pieces=[b""], hang_up=True)

    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        call(server)


def test_a_stall_before_the_head_is_a_read_timeout() -> None:
    server = RawServer(pieces=[b"", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], pause=1)

    with pytest.raises(httpx.ReadTimeout):
        upstream.post(server.url, content=b"{}", headers={}, timeout={**TIMEOUT, "read": 0.2})
    assert upstream.pool().idle_count == 0


def test_a_header_that_would_split_the_request_is_refused_before_sending() -> None:
    server = RawServer()

    with pytest.raises(httpx.LocalProtocolError):
        upstream.post(server.url, content=b"{}", headers={"X-A": "1\r\nX-Injected: 2"}, timeout=dict(TIMEOUT))
    assert server.accepted == 0
