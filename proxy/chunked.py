"""A chunked upstream body (a stream), read straight off the socket.

h11 turns each chunk into an event through a state machine, a reader object, a receive
buffer and httpcore's wrappers around each: at 2,000 streams, yappi put reading the body
through them at a fifth of a worker's CPU. Here the framing (RFC 9112 §7.1) is parsed in
one loop, as strictly as h11 does. ``proxy.http11`` reads every chunked body with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import httpx

_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*")  # h11's chunk header
_HEX = b"0123456789abcdefABCDEF"
MAX_LINE = 16 * 1024  # a chunk header, or the trailer section, as h11 bounds its events


def _bad(what: str) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(f"malformed chunked body: {what}")


def _size(line: bytes) -> int:
    if 0 < len(line) <= 20 and not line.strip(_HEX):  # bare hex digits: nearly every chunk
        return int(line, 16)
    found = _SIZE.fullmatch(line)
    if found is None:
        raise _bad(f"illegal chunk header {line[:40]!r}")
    return int(found.group(1), 16)


class ChunkedBody:
    """The data of a chunked body, as it arrives: what one read brought, however many
    chunks it held, as one piece (a relay sends it on in one write), and never held back
    while the next read waits. ``read()`` returns the socket's next bytes (b"" when the
    peer closed). Once iterated to its end, ``tail`` holds the raw
    last chunk and its trailers, and ``rest`` whatever was read after them (the start of
    a response the server should not have sent)."""

    def __init__(self, read: Callable[[], bytes], leading: bytes = b"") -> None:
        self._read = read
        self._leading = leading
        self.tail: bytes | None = None
        self.rest = b""

    def __iter__(self) -> Iterator[bytes]:
        read = self._read
        buf, pos = self._leading, 0
        self._leading = b""
        held: list[bytes] = []  # data read but not yet handed on: all of one read goes as one piece
        try:
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:  # a chunk header still to come
                    if len(buf) - pos > MAX_LINE:
                        raise _bad("chunk header too long")
                    if held:  # never hold data while waiting for more
                        yield held[0] if len(held) == 1 else b"".join(held)
                        held = []
                    buf, pos = buf[pos:] + _more(read), 0
                    continue
                size = _size(buf[pos:eol])
                if size == 0:  # the last chunk: its trailers, up to the empty line
                    if held:
                        yield held[0] if len(held) == 1 else b"".join(held)
                        held = []
                    buf, trailers = buf[pos:], eol + 2 - pos
                    while (end := _trailers_end(buf, trailers)) < 0:
                        if len(buf) > MAX_LINE:
                            raise _bad("trailers too long")
                        buf += _more(read)
                    self.tail, self.rest = buf[:end], buf[end:]
                    return
                pos = eol + 2
                while size:  # the chunk's data, handed on as it comes
                    if pos == len(buf):
                        if held:
                            yield held[0] if len(held) == 1 else b"".join(held)
                            held = []
                        buf, pos = _more(read), 0
                    piece = buf[pos : pos + size]
                    pos += len(piece)
                    size -= len(piece)
                    held.append(piece)
                while len(buf) - pos < 2:
                    if held:
                        yield held[0] if len(held) == 1 else b"".join(held)
                        held = []
                    buf, pos = buf[pos:] + _more(read), 0
                if buf[pos : pos + 2] != b"\r\n":
                    raise _bad("no CRLF after a chunk's data")
                pos += 2
        except httpx.RemoteProtocolError:
            if held:  # what came before the malformed part is the provider's: hand it on first
                yield held[0] if len(held) == 1 else b"".join(held)
            raise


def _more(read: Callable[[], bytes]) -> bytes:
    data = read()
    if not data:
        raise httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body (incomplete chunked read)"
        )
    return data


def _trailers_end(buf: bytes, start: int) -> int:
    """Just past the empty line that ends the trailer section beginning at ``start``;
    -1 while it has not all come."""
    if buf[start : start + 2] == b"\r\n":
        return start + 2
    end = buf.find(b"\r\n\r\n", start)
    return end + 4 if end >= 0 else -1
