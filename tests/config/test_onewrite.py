"""config/onewrite.py: a response's head goes out with its first body bytes, and every
response is byte for byte what gunicorn's own ``Response`` sends."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn import util  # type: ignore[import-untyped]
from gunicorn.http import wsgi  # type: ignore[import-untyped]

from config import onewrite

GunicornResponse = wsgi.Response


class Wire:
    """A socket that records each send."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))


def answer(cls: type, status: str, headers: list[tuple[str, str]], body: list[bytes], *, method: str = "GET") -> Wire:
    """What gunicorn puts on the wire for one response, as its worker drives it."""
    wire = Wire()
    request = SimpleNamespace(version=(1, 1), method=method, should_close=lambda: False)
    response = cls(request, wire, SimpleNamespace(protocol="http"))
    response.start_response(status, headers)
    for item in body:
        response.write(item)
    response.close()
    return wire


@pytest.fixture(autouse=True)
def same_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(util, "http_date", lambda *args: "Fri, 27 Nov 2026 23:00:00 GMT")


ONE_WRITE = onewrite.response_class(GunicornResponse)
JSON = [("Content-Type", "application/json"), ("Content-Length", "11")]
SSE = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
CASES = {
    "a JSON answer": ("200 OK", JSON, [b'{"ok":true}'], "GET"),
    "a stream": ("200 OK", SSE, [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"], "GET"),
    "a HEAD": ("200 OK", JSON, [b'{"ok":true}'], "HEAD"),
    "a 204": ("204 No Content", [], [b""], "DELETE"),
    "an empty stream": ("200 OK", SSE, [], "GET"),
}


@pytest.mark.parametrize("case", CASES)
def test_every_response_is_byte_for_byte_what_gunicorn_sends(case: str) -> None:
    status, headers, body, method = CASES[case]
    ours = answer(ONE_WRITE, status, headers, body, method=method)
    theirs = answer(GunicornResponse, status, headers, body, method=method)
    assert b"".join(ours.sends) == b"".join(theirs.sends)
    assert len(ours.sends) <= len(theirs.sends)


def test_a_json_answer_is_one_send_instead_of_two() -> None:
    wire = answer(ONE_WRITE, "200 OK", JSON, [b'{"ok":true}'])
    assert len(wire.sends) == 1
    assert wire.sends[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert wire.sends[0].endswith(b'\r\n\r\n{"ok":true}')
    assert len(answer(GunicornResponse, "200 OK", JSON, [b'{"ok":true}']).sends) == 2


def test_a_streams_head_goes_out_with_its_first_chunk_and_each_later_chunk_alone() -> None:
    wire = answer(ONE_WRITE, "200 OK", SSE, [b"data: 1\n\n", b"data: 2\n\n"])
    assert wire.sends[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding: chunked\r\n" in wire.sends[0]
    assert wire.sends[0].endswith(b"Cache-Control: no-cache\r\n\r\n9\r\ndata: 1\n\n\r\n")
    assert wire.sends[1:] == [b"9\r\ndata: 2\n\n\r\n", b"0\r\n\r\n"]


@pytest.mark.parametrize("sendfile", [True, False], ids=["sendfile", "reads"])
def test_a_file_response_sends_its_head_before_the_file(tmp_path: Path, sendfile: bool) -> None:
    # Given a download (a Batch API output file): gunicorn sends it with sendfile(2)
    path = tmp_path / "output.jsonl"
    path.write_bytes(b'{"custom_id":"r0"}\n' * 100)
    ours, client = socket.socketpair()
    request = SimpleNamespace(version=(1, 1), method="GET", should_close=lambda: False)
    response = ONE_WRITE(
        request, ours, SimpleNamespace(protocol="http", is_ssl=False, sendfile=None if sendfile else False)
    )
    response.start_response("200 OK", [("Content-Type", "application/jsonl"), ("Content-Length", "1900")])
    with path.open("rb") as file:
        response.write_file(wsgi.FileWrapper(file))
    response.close()
    ours.close()
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    # Then the client reads the head, then the file
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == path.read_bytes()


def test_until_the_first_body_bytes_nothing_is_sent_so_an_error_can_still_be_a_500() -> None:
    wire = Wire()
    request = SimpleNamespace(version=(1, 1), method="GET", should_close=lambda: False)
    response = ONE_WRITE(request, wire, SimpleNamespace(protocol="http"))
    response.start_response("200 OK", SSE)
    response.send_headers()
    response.send_headers()
    assert wire.sends == []
    assert response.headers_sent is False  # gunicorn's worker answers 500 only while this is False
    response.write(b"data: 1\n\n")
    assert response.headers_sent is True
    assert len(wire.sends) == 1


def test_installed_gunicorn_builds_its_responses_from_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wsgi, "Response", GunicornResponse)  # restored after the test
    assert onewrite.install() is True
    assert wsgi.Response is not GunicornResponse
    assert onewrite.install() is True  # twice in one process: still one subclass
    assert wsgi.Response.__mro__[1] is GunicornResponse
    wire = answer(wsgi.Response, "200 OK", JSON, [b'{"ok":true}'])
    assert len(wire.sends) == 1


def test_a_gunicorn_whose_response_changed_shape_keeps_its_own(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Changed(GunicornResponse):  # type: ignore[misc, valid-type]
        def send_headers(self, extra: Any = None) -> None:  # a new parameter in a release
            super().send_headers()

    monkeypatch.setattr(wsgi, "Response", Changed)
    with caplog.at_level(logging.WARNING, logger="config.onewrite"):
        assert onewrite.install() is False
    assert wsgi.Response is Changed
    assert "send_headers" in caplog.text and "own send" in caplog.text


def test_a_streams_final_bytes_go_out_with_the_chunked_end_and_the_connection_stays_open() -> None:
    # Given a stream whose relay marks its last bytes (the usage chunk and [DONE])
    body = [b"data: 1\n\n", onewrite.final(b"data: [DONE]\n\n")]
    wire = Wire()
    request = SimpleNamespace(version=(1, 1), method="GET", should_close=lambda: False)
    response = ONE_WRITE(request, wire, SimpleNamespace(protocol="http"))
    response.start_response("200 OK", SSE)
    for item in body:
        response.write(item)
    response.close()
    # Then the end rides with them: one send fewer, the same bytes as gunicorn's
    assert wire.sends[1:] == [b"E\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"]
    assert b"".join(wire.sends) == b"".join(answer(GunicornResponse, "200 OK", SSE, body).sends)
    assert response.should_close() is False  # the keep-alive connection serves the next call


def test_equal_bytes_that_are_not_the_marked_ones_do_not_end_the_stream() -> None:
    onewrite.final(b"data: [DONE]\n\n")
    same_text = b"".join([b"data: [DONE]", b"\n\n"])  # equal, but another object
    wire = answer(ONE_WRITE, "200 OK", SSE, [same_text, b"data: more\n\n"])
    assert wire.sends[-1] == b"0\r\n\r\n"
    assert b"data: more" in wire.sends[-2]


def test_bytes_after_the_final_ones_are_dropped_not_sent_after_the_end(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="config.onewrite"):
        wire = answer(ONE_WRITE, "200 OK", SSE, [onewrite.final(b"data: [DONE]\n\n"), b"data: late\n\n"])
    assert wire.sends[-1].endswith(b"0\r\n\r\n")
    assert not any(b"late" in sent for sent in wire.sends)
    assert "dropped" in caplog.text
