"""gunicorn's response head and first body bytes in one send.

gunicorn sends a response's status line and headers with one ``sendall`` and each body
chunk with another, so a JSON answer costs two syscalls here and two reads in nginx,
and a stream's first chunk waits behind its headers. :class:`OneWriteResponse` holds the
head back until the first body bytes (or the end of a body-less response) and sends both
at once; everything else is gunicorn's own ``Response``.

A stream's end goes the same way: the bytes a relay marks with :func:`final` (the usage
chunk and ``[DONE]``) go out with the chunked encoding's terminator, in one send instead of
two, and nginx reads the stream's end once.

Installed by ``config/gunicorn.py`` in each worker, guarded like ``config/greenio.py``:
if gunicorn's ``Response`` no longer has the shape this was written against, nothing is
replaced and a warning says so (one send more per response, still correct).
"""

from __future__ import annotations

import inspect
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

# What OneWriteResponse relies on: the methods it wraps (with their parameters), and
# ``create``'s default response class, read from the module global at each request.
_SHAPE = {
    "send_headers": ("self",),
    "_emit_body": ("self", "data"),
    "close": ("self",),
    "sendfile": ("self", "respiter"),
}


# The bytes a stream's relay will yield last, per greenlet (threading.local is greenlet-local
# under gevent's patching, thread-local elsewhere).
_last = threading.local()


def final(data: bytes) -> bytes:
    """Mark ``data`` as the last bytes a streamed response yields, and return it.

    The response writing it sends the chunked terminator with it. Matched by identity (a
    bytes object passes through Django untouched), so a layer that re-frames or replaces
    the bytes only loses the saving; elsewhere (no gunicorn, or this not installed) a no-op.
    """
    _last.data = data
    return data


class _Capture:
    """Stands in for the socket while gunicorn writes the head, and keeps the bytes."""

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


def response_class(base: Any) -> Any:
    """A subclass of gunicorn's ``Response`` that sends its head with its first body bytes."""

    class OneWriteResponse(base):
        headers_sent: bool
        sock: Any
        chunked: bool
        _held_head: bytes | None = None
        _ended = False  # the chunked terminator went out with the final() bytes

        def send_headers(self) -> None:
            # gunicorn's own formatting, written into a capture instead of the socket.
            if self.headers_sent or self._held_head is not None:
                return
            sock, capture = self.sock, _Capture()
            self.sock = capture
            try:
                super().send_headers()
            finally:
                self.sock = sock
            self.headers_sent = False  # not on the wire yet: an error can still become a 500
            self._held_head = capture.data

        def _take_head(self) -> bytes | None:
            head, self._held_head = self._held_head, None
            return head

        def _emit_body(self, data: bytes) -> None:
            # Framed here for every chunk, as gunicorn's util.write_chunk does, in one
            # formatting step instead of its encode and join: a stream relays thousands.
            if self.chunked:
                if self._ended:
                    log.error("onewrite: body bytes after a stream's final() bytes were dropped")
                    return
                last = getattr(_last, "data", None) is data
                data = b"%X\r\n%s\r\n" % (len(data), data)
                if last:
                    _last.data = None
                    data += b"0\r\n\r\n"
                    self._ended = True
            head = self._take_head()
            if head is None:
                self.sock.sendall(data)
                return
            self.sock.sendall(head + data)
            self.headers_sent = True

        def _flush_head(self) -> None:
            head = self._take_head()
            if head is not None:
                self.sock.sendall(head)
                self.headers_sent = True

        def sendfile(self, respiter: Any) -> Any:
            # The file goes out by sendfile(2), straight from the kernel: the head first.
            self.send_headers()
            self._flush_head()
            return super().sendfile(respiter)

        def close(self) -> None:
            self.send_headers()  # a body-less response, or one whose body was all dropped
            self._flush_head()
            if not self._ended:
                super().close()
                return
            # The terminator is on the wire: gunicorn's close must not send another, and
            # should_close() reads ``chunked`` after (a kept-alive connection stays so).
            self.chunked = False
            try:
                super().close()
            finally:
                self.chunked = True

    return OneWriteResponse


def install() -> bool:
    """Make gunicorn's HTTP/1 responses send head and body together; False (with a
    warning) when gunicorn's ``Response`` changed shape and nothing was replaced."""
    try:
        from gunicorn.http import wsgi  # type: ignore[import-untyped]

        base = wsgi.Response
        for name, params in _SHAPE.items():
            method = getattr(base, name, None)
            if not callable(method) or tuple(inspect.signature(method).parameters) != params:
                raise TypeError(f"gunicorn.http.wsgi.Response.{name} is missing or takes other parameters")
        if tuple(inspect.signature(wsgi.create).parameters)[:6] != (
            "req",
            "sock",
            "client",
            "server",
            "cfg",
            "response_class",
        ):
            raise TypeError("gunicorn.http.wsgi.create no longer takes response_class")
        if getattr(base, "_one_write", False):
            return True  # already installed in this process
        replacement = response_class(base)
        setattr(replacement, "_one_write", True)  # noqa: B010
        wsgi.Response = replacement
    except Exception as exc:  # a changed gunicorn: one send more per response, never a failed boot
        log.warning(
            "onewrite: gunicorn's Response changed shape (%s); response heads go in their own send. "
            "Pin the gunicorn version requirements.txt was tested with, or update config/onewrite.py.",
            exc,
        )
        return False
    return True
