"""Streamed upstream bodies read off the socket (proxy.chunked, proxy.http11): the same
data and the same errors as h11, however the network splits the bytes, and the connection
reused afterwards only when the message ended where its framing said."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy import upstream
from proxy.chunked import ChunkedBody
from tests.rawhttp import RawServer

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
TIMEOUT = {"connect": 5, "read": 5, "write": 5, "pool": 5}


def chunk(data: bytes, extension: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n" % (len(data), extension, data)


def reads(raw: bytes, sizes: list[int]) -> Iterator[bytes]:
    """``raw`` cut where ``sizes`` say, then the rest, then the peer's close (b"")."""
    pos = 0
    for size in sizes:
        if pos < len(raw):
            yield raw[pos : pos + size]
            pos += size
    if pos < len(raw):
        yield raw[pos:]
    while True:
        yield b""


def decode(raw: bytes, sizes: list[int], leading: bytes = b"") -> tuple[bytes, ChunkedBody]:
    source = reads(raw, sizes)
    body = ChunkedBody(lambda: next(source), leading)
    return b"".join(body), body


@given(
    pieces=st.lists(st.binary(min_size=1, max_size=300), max_size=12),
    sizes=st.lists(st.integers(min_value=1, max_value=64), max_size=80),
    trailers=st.sampled_from([b"", b"X-Usage: 12\r\n", b"A: 1\r\nB: 2\r\n"]),
    after=st.sampled_from([b"", b"HTTP/1.1 200 OK\r\n"]),
)
def test_any_split_gives_the_data_and_ends_at_the_last_chunk(
    pieces: list[bytes], sizes: list[int], trailers: bytes, after: bytes
) -> None:
    last = b"0;done\r\n" + trailers + b"\r\n"
    raw = b"".join(chunk(piece, b";n=1" if i % 2 else b"") for i, piece in enumerate(pieces)) + last

    data, body = decode(raw + after, sizes)

    assert data == b"".join(pieces)
    assert body.tail == last, "the message ends after its trailers' empty line"
    # what came in the same read as the end is kept for the connection, not lost
    assert after.startswith(body.rest), "nothing is read past the end of the message"


def test_what_came_with_the_headers_is_read_first() -> None:
    data, body = decode(chunk(b" two") + b"0\r\n\r\n", [3], leading=chunk(b"one"))
    assert (data, body.tail, body.rest) == (b"one two", b"0\r\n\r\n", b"")


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"zz\r\nab\r\n0\r\n\r\n", "illegal chunk header"),
        (b"0x2\r\nab\r\n0\r\n\r\n", "illegal chunk header"),
        (b" 2\r\nab\r\n0\r\n\r\n", "illegal chunk header"),
        (b"2\r\nabXY0\r\n\r\n", "no CRLF after a chunk's data"),
        (b"4\r\nab", "incomplete chunked read"),
        (b"2\r\nab\r\n", "incomplete chunked read"),
        (b"0\r\nX: 1\r\n", "incomplete chunked read"),
        (b"1" * 20_000, "chunk header too long"),
    ],
)
def test_a_malformed_or_cut_body_is_a_protocol_error(raw: bytes, error: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError, match=error):
        decode(raw, [7])


@pytest.fixture
def fresh_transport(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(upstream, "_transport", None)
    yield
    if upstream._transport is not None:
        upstream._transport.close()


def stream(url: str) -> bytes:
    response = upstream.post(url, content=b"{}", headers={}, timeout=dict(TIMEOUT))
    try:
        return b"".join(response.stream)  # type: ignore[arg-type]
    finally:
        response.close()


EVENTS = [b'data: {"n": %d}\n\n' % n for n in range(5)]


@pytest.mark.parametrize(
    "pieces",
    [
        [HEAD, *[chunk(event) for event in EVENTS], b"0\r\n\r\n"],  # as a provider sends them
        [HEAD + chunk(EVENTS[0]), *[chunk(event) for event in EVENTS[1:]], b"0\r\n\r\n"],
        # cut mid-header, mid-data and mid-CRLF, trailers at the end
        [
            HEAD,
            chunk(EVENTS[0])[:1],
            chunk(EVENTS[0])[1:9],
            chunk(EVENTS[0])[9:-1],
            chunk(EVENTS[0])[-1:] + b"".join(chunk(event) for event in EVENTS[1:]),
            b"0\r\nX-Usage: 1\r\n",
            b"\r\n",
        ],
    ],
    ids=["one-chunk-per-send", "first-chunk-with-the-headers", "cut-anywhere-with-trailers"],
)
def test_a_stream_read_to_its_end_keeps_its_connection(fresh_transport: None, pieces: list[bytes]) -> None:
    server = RawServer(pieces=pieces, pause=0.01)

    for _ in range(3):
        assert stream(server.url) == b"".join(EVENTS)

    assert server.accepted == 1, "the message ended where its framing said: each call reused the connection"


def test_headers_with_half_a_chunk_are_read_on(fresh_transport: None) -> None:
    first = chunk(EVENTS[0])
    server = RawServer(pieces=[HEAD + first[:6], first[6:] + chunk(EVENTS[1]), b"0\r\n\r\n"], pause=0.01)

    for _ in range(2):
        assert stream(server.url) == EVENTS[0] + EVENTS[1]

    assert server.accepted == 1


def test_bytes_after_the_end_of_a_message_cost_the_connection(fresh_transport: None) -> None:
    # Nothing was asked for after the response: whatever follows it is not trusted.
    server = RawServer(pieces=[HEAD + chunk(EVENTS[0]) + b"0\r\n\r\nHTTP/1.1 200 OK\r\n"], pause=0.01)

    for _ in range(2):
        assert stream(server.url) == EVENTS[0]

    assert server.accepted == 2


def test_a_malformed_stream_is_an_httpx_error_and_its_connection_is_dropped(fresh_transport: None) -> None:
    server = RawServer(pieces=[HEAD, chunk(EVENTS[0]), b"zz\r\nab\r\n0\r\n\r\n"], pause=0.01)
    response = upstream.post(server.url, content=b"{}", headers={}, timeout=dict(TIMEOUT))

    with pytest.raises(httpx.RemoteProtocolError, match="illegal chunk header"):
        response.read()
    response.close()

    assert upstream.pool().idle_count == 0


def test_a_stream_cut_by_the_server_is_an_httpx_error(fresh_transport: None) -> None:
    server = RawServer(pieces=[HEAD, chunk(EVENTS[0])], hang_up=True)
    response = upstream.post(server.url, content=b"{}", headers={}, timeout=dict(TIMEOUT))

    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        response.read()
    response.close()

    assert upstream.pool().idle_count == 0


def test_the_chunks_one_read_brought_are_handed_on_as_one_piece_before_the_next_read() -> None:
    # Given reads that bring two whole chunks, then half of one, then its rest and the end
    served = [chunk(b"a") + chunk(b"bc"), chunk(b"defg")[:5], chunk(b"defg")[5:] + b"0\r\n\r\n"]
    log: list[str] = []

    def read() -> bytes:
        log.append("read")
        return served.pop(0)

    # Then each read's data is handed on whole, and before the next read waits
    for piece in ChunkedBody(read):
        log.append(piece.decode())

    assert log == ["read", "abc", "read", "de", "read", "fg"]


@pytest.mark.parametrize(
    ("bad", "handed_on"),
    [(b"zz\r\n", b"a"), (b"4\r\nbcdeX\r\n", b"abcde")],
    ids=["illegal chunk header", "no CRLF after the data"],
)
def test_the_chunks_before_a_malformed_one_in_the_same_read_are_handed_on_before_the_error(
    bad: bytes, handed_on: bytes
) -> None:
    # Given a read whose whole chunk is followed by a malformed one
    served = [chunk(b"a") + bad]
    pieces: list[bytes] = []

    # Then the data read before the fault is handed on (relayed, and counted if the stream
    # is billed from its text), as it was chunk by chunk, and only then is the body a
    # protocol error
    with pytest.raises(httpx.RemoteProtocolError):
        for piece in ChunkedBody(lambda: served.pop(0)):
            pieces.append(piece)
    assert b"".join(pieces) == handed_on
