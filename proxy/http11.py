"""Stage 5's wire: one HTTP/1.1 exchange at a time on a kept-alive upstream connection.

httpcore and h11 turn every request and response into events, each through a state
machine, validators and wrappers: sending a call and reading its answer through them cost
about ten times the CPU of the exchange itself (docs/decisions/0030). Tollway's upstream
calls are all alike (a POST with a JSON body, answered with a fixed-length or chunked
body), so this module writes the request in one send and parses the response head in one
pass, as strictly as h11 does: a malformed status line, header, length or chunk is a
protocol error, every size is bounded, and a connection is reused only after a response
that ended exactly where its framing said (RFC 9112).

Errors are httpx's (``httpx.ConnectError``, ``ReadTimeout``, ``RemoteProtocolError``...),
which the adapters already handle; ``proxy.upstream`` attaches the request to them.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
from collections.abc import Iterator, MutableMapping
from typing import Any

import httpx

from config import greenio
from proxy.chunked import ChunkedBody

MAX_HEAD = 64 * 1024  # a response's status line and headers (h11 allows 16 KiB per event)
READ_SIZE = 65536

_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?")
_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_NO_BODY = (204, 304)

Timeouts = MutableMapping[str, Any]


def _bad(what: str) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(what)


class Connection:
    """One upstream connection: a request, then its response's body, then the next."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""  # read past what has been consumed
        self.reusable = False  # the last response ended cleanly and the server keeps the connection
        self.closed = False
        self._timeout: float | None = -1.0  # what the socket was last set to

    @classmethod
    def open(cls, scheme: bytes, host: str, port: int, ssl_context: ssl.SSLContext, timeouts: Timeouts) -> Connection:
        connect = timeouts.get("connect")
        try:
            sock = socket.create_connection((host, port), timeout=connect)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "timed out connecting") from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == b"https":
                sock = ssl_context.wrap_socket(sock, server_hostname=host)  # the handshake, under connect's timeout
        except TimeoutError as exc:
            sock.close()
            raise httpx.ConnectTimeout(str(exc) or "timed out in the TLS handshake") from exc
        except OSError as exc:  # ssl.SSLError is one
            sock.close()
            raise httpx.ConnectError(str(exc)) from exc
        return cls(sock)

    def usable(self) -> bool:
        """Whether an idle connection may carry a request: open, with nothing unread. A
        server that closed it (or sent anything unasked) has made it readable."""
        if self.closed or not self.reusable or self.buffer:
            return False
        try:
            return not greenio.readable_now(self.sock)
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        self.closed, self.reusable = True, False
        with contextlib.suppress(OSError):
            self.sock.close()

    # --- the request ---------------------------------------------------------------------

    def send(self, data: bytes, timeouts: Timeouts) -> OSError | None:
        """Send the whole request; the error if the server stopped taking it. A server may
        answer (a 413, say) and hang up before reading all of it: the caller then reads
        the answer before giving up, as httpcore does."""
        self.reusable = False
        self._set_timeout(timeouts.get("write"))
        try:
            self.sock.sendall(data)
        except TimeoutError as exc:
            self.close()
            raise httpx.WriteTimeout(str(exc) or "timed out sending the request") from exc
        except OSError as exc:
            return exc
        return None

    # --- the response --------------------------------------------------------------------

    def _set_timeout(self, timeout: float | None) -> None:
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout

    def read(self, timeouts: Timeouts) -> bytes:
        """The socket's next bytes (b"" once the server closed). The read timeout is looked
        up per read: the stream sets its idle limit once the body starts."""
        self._set_timeout(timeouts.get("read"))
        try:
            return self.sock.recv(READ_SIZE)
        except TimeoutError as exc:
            self.close()
            raise httpx.ReadTimeout(str(exc) or "timed out reading the response") from exc
        except OSError as exc:
            self.close()
            raise httpx.ReadError(str(exc)) from exc

    def response_head(self, timeouts: Timeouts, method: bytes) -> Head:
        """The next final response's status, reason and headers (interim 1xx skipped), and
        how its body is framed."""
        while True:
            head = self._head(timeouts)
            if head.status >= 200:
                break
            if head.status == 101:
                raise _bad("the upstream switched protocols, which Tollway never asks for")
        head.frame(method)
        return head

    def _head(self, timeouts: Timeouts) -> Head:
        buffer = self.buffer
        start = 0
        while True:
            end = buffer.find(b"\r\n\r\n", max(start - 3, 0))
            if end > MAX_HEAD or (end < 0 and len(buffer) > MAX_HEAD):
                raise _bad("the response head is too long")
            if end >= 0:
                break
            start = len(buffer)
            data = self.read(timeouts)
            if not data:
                self.close()
                raise _bad(
                    "Server disconnected without sending a response." if not buffer else "the response head was cut"
                )
            buffer += data
        self.buffer = buffer[end + 4 :]
        return Head.parse(buffer[:end])

    def body(self, head: Head, timeouts: Timeouts) -> Iterator[bytes]:
        """The body's bytes as they arrive. At its end the connection is reusable if the
        response allowed it and nothing came after it."""
        if head.length is not None:
            yield from self._fixed(head.length, timeouts)
        elif head.chunked:
            yield from self._chunked(timeouts)
        else:
            yield from self._until_close(timeouts)
            return
        self.reusable = head.keep_alive and not self.buffer

    def _fixed(self, length: int, timeouts: Timeouts) -> Iterator[bytes]:
        left = length
        if self.buffer and left:
            piece, self.buffer = self.buffer[:left], self.buffer[left:]
            left -= len(piece)
            yield piece
        while left:
            data = self.read(timeouts)
            if not data:
                self.close()
                raise _bad(
                    f"peer closed connection without sending complete message body (received "
                    f"{length - left} bytes, expected {length})"
                )
            if len(data) > left:
                data, self.buffer = data[:left], data[left:]
            left -= len(data)
            yield data

    def _chunked(self, timeouts: Timeouts) -> Iterator[bytes]:
        body = ChunkedBody(lambda: self.read(timeouts), self.buffer)
        self.buffer = b""
        try:
            yield from body
        except httpx.RemoteProtocolError:
            self.close()
            raise
        self.buffer = body.rest

    def _until_close(self, timeouts: Timeouts) -> Iterator[bytes]:
        if self.buffer:
            data, self.buffer = self.buffer, b""
            yield data
        while data := self.read(timeouts):
            yield data
        self.close()


class Head:
    """A response's status line and headers, and its body's framing."""

    __slots__ = ("chunked", "headers", "http10", "keep_alive", "length", "reason", "status")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], http10: bool) -> None:
        self.status, self.reason, self.headers, self.http10 = status, reason, headers, http10
        self.length: int | None = None
        self.chunked = False
        self.keep_alive = not http10

    @classmethod
    def parse(cls, raw: bytes) -> Head:
        lines = raw.split(b"\r\n")
        found = _STATUS.fullmatch(lines[0])
        if found is None:
            raise _bad(f"illegal status line {lines[0][:80]!r}")
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or _NAME.fullmatch(name) is None:
                # A line starting with whitespace is an obsolete folded header: refused, as h11 does.
                raise _bad(f"illegal header line {line[:80]!r}")
            value = value.strip(b" \t")
            if b"\r" in value or b"\n" in value or b"\0" in value:
                raise _bad(f"illegal header value for {name[:40]!r}")
            headers.append((name, value))
        return cls(int(found.group(2)), found.group(3) or b"", headers, found.group(1) == b"0")

    def frame(self, method: bytes) -> None:
        """How the body is delimited (RFC 9112 §6.3), and whether the connection survives."""
        lengths: list[bytes] = []
        codings: list[bytes] = []
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"content-length":
                lengths.append(value)
            elif lower == b"transfer-encoding":
                codings.extend(c.strip().lower() for c in value.split(b","))
            elif lower == b"connection" and b"close" in value.lower():
                self.keep_alive = False
        if method == b"HEAD" or self.status in _NO_BODY or self.status < 200:
            self.length = 0
        elif codings:
            if codings[-1] != b"chunked" or self.http10:
                self.keep_alive = False  # read to the close
            else:
                self.chunked = True
                if lengths:
                    self.keep_alive = False  # both framings: trust chunked, never the connection
        elif lengths:
            values = {v.strip() for length in lengths for v in length.split(b",")}
            if len(values) != 1 or not (value := values.pop()).isdigit() or len(value) > 18:
                raise _bad("illegal Content-Length")
            self.length = int(value)
        else:
            self.keep_alive = False  # delimited by the close


def request_bytes(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A request's head and body, as one buffer for one send."""
    lines = [b"%s %s HTTP/1.1" % (method, target)]
    for name, value in headers:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            raise httpx.LocalProtocolError(f"illegal header {name[:40]!r}")
        lines.append(name + b": " + value)
    lines.append(b"")
    lines.append(body)
    return b"\r\n".join(lines)
