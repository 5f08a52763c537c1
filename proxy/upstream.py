"""Stage 5, call: the one pooled HTTP transport per process that every adapter uses.

Created lazily, after gunicorn forks its workers (and after gevent has patched sockets),
never per request: connection reuse is most of the latency budget.

``send`` hands a request straight to the transport. ``httpx.Client.send`` would add
its auth, redirect, cookie-jar and event-hook layers on every call; upstream calls need
none of them (no redirects are followed, no cookies kept), and py-spy put those layers
at about a tenth of a worker's CPU per request.

The transport is Tollway's (``UpstreamTransport``, a public ``httpx.BaseTransport``) over
its own pool (``Pool``): httpcore's connections, with O(1) bookkeeping. Both use only
httpcore's public API, and only once ``pool_shape_problem`` has found it as expected: if a
release changed it, the process logs a warning and uses httpx's own ``HTTPTransport``
(slower, same behaviour) rather than failing at the first call.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import logging
import os
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, MutableMapping
from functools import lru_cache
from typing import Any

import h11
import httpcore
import httpx
from django.conf import settings

from proxy.chunked import ChunkedBody, whole_chunks

log = logging.getLogger(__name__)

_transport: httpx.BaseTransport | None = None
_transport_pid = 0
_lock = threading.Lock()

USER_AGENT = "tollway"
KEEPALIVE_EXPIRY = 30.0  # seconds an idle upstream connection is kept
# How long, and how much, a body closed before its end is read on to save its connection.
FINISH_SECONDS = 0.05
FINISH_BYTES = 65536

# What the pool uses of httpcore's public API: names, and the methods called on each.
_HTTPCORE_NEEDS: dict[str, tuple[str, ...]] = {
    "HTTPConnection": ("handle_request", "is_idle", "has_expired", "is_closed", "close"),
    "SyncBackend": ("connect_tcp", "connect_unix_socket", "sleep"),
    "Request": (),
    "Response": (),
    "URL": (),
    "Origin": (),
    "PoolTimeout": (),
    "UnsupportedProtocol": (),
    "WriteError": (),
}
_HTTPCORE_CONNECTION_ARGS = ("origin", "ssl_context", "keepalive_expiry", "network_backend")
_STREAM_METHODS = ("read", "write", "close", "start_tls", "get_extra_info")


def pool_shape_problem() -> str | None:
    """What in httpcore is not as the pool expects, or None: checked once per process."""
    for name, methods in _HTTPCORE_NEEDS.items():
        found = getattr(httpcore, name, None)
        if found is None:
            return f"httpcore.{name} is missing"
        for method in methods:
            if not callable(getattr(found, method, None)):
                return f"httpcore.{name}.{method} is missing"
    try:
        params = inspect.signature(httpcore.HTTPConnection).parameters
    except (TypeError, ValueError):
        return "httpcore.HTTPConnection's signature cannot be read"
    if missing := [name for name in _HTTPCORE_CONNECTION_ARGS if name not in params]:
        return f"httpcore.HTTPConnection takes no {', '.join(missing)}"
    stream = getattr(httpcore, "NetworkStream", None)
    if stream is not None and (missing := [m for m in _STREAM_METHODS if not hasattr(stream, m)]):
        return f"httpcore.NetworkStream has no {', '.join(missing)}"
    return None


def transport() -> httpx.BaseTransport:
    global _transport, _transport_pid
    if _transport is None or _transport_pid != os.getpid():
        with _lock:
            if _transport is None or _transport_pid != os.getpid():
                _transport = _new_transport()
                _transport_pid = os.getpid()
    return _transport


def _new_transport() -> httpx.BaseTransport:
    conf = settings.TOLLWAY
    max_connections, max_keepalive = int(conf["UPSTREAM_MAX_CONNECTIONS"]), int(conf["UPSTREAM_MAX_KEEPALIVE"])
    problem = pool_shape_problem()
    if problem is None:
        return UpstreamTransport(
            Pool(
                ssl_context=httpx.create_ssl_context(trust_env=False),
                max_connections=max_connections,
                max_keepalive=max_keepalive,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            )
        )
    log.warning(
        "upstream pool: %s (httpcore %s); using httpx's own HTTPTransport instead, which works "
        "but costs more CPU per call. Pin the httpcore version requirements.txt was tested with.",
        problem,
        getattr(httpcore, "__version__", "?"),
    )
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_keepalive, keepalive_expiry=KEEPALIVE_EXPIRY
    )
    return httpx.HTTPTransport(trust_env=False, limits=limits)


def pool() -> Pool | None:
    """This process's pool; None when the fallback transport is in use."""
    found = transport()
    return found.pool if isinstance(found, UpstreamTransport) else None


def _httpcore_errors() -> list[tuple[type[Exception], type[httpx.RequestError]]]:
    """httpcore's errors and httpx's for each, most specific first (as httpx maps them)."""
    pairs = [
        ("TimeoutException", httpx.TimeoutException),
        ("ConnectTimeout", httpx.ConnectTimeout),
        ("ReadTimeout", httpx.ReadTimeout),
        ("WriteTimeout", httpx.WriteTimeout),
        ("PoolTimeout", httpx.PoolTimeout),
        ("NetworkError", httpx.NetworkError),
        ("ConnectError", httpx.ConnectError),
        ("ReadError", httpx.ReadError),
        ("WriteError", httpx.WriteError),
        ("ProxyError", httpx.ProxyError),
        ("UnsupportedProtocol", httpx.UnsupportedProtocol),
        ("ProtocolError", httpx.ProtocolError),
        ("LocalProtocolError", httpx.LocalProtocolError),
        ("RemoteProtocolError", httpx.RemoteProtocolError),
    ]
    found = [(getattr(httpcore, name), mapped) for name, mapped in pairs if hasattr(httpcore, name)]
    # A subclass before its base, so the first match is the most specific.
    return sorted(found, key=lambda pair: -len(pair[0].__mro__))


_ERRORS = _httpcore_errors()


def _mapped(exc: Exception, request: httpx.Request) -> Exception:
    for source, target in _ERRORS:
        if isinstance(exc, source):
            return target(str(exc), request=request)
    return exc


class UpstreamTransport(httpx.BaseTransport):
    """An ``httpx.BaseTransport`` over ``Pool``: what ``httpx.HTTPTransport`` does (an httpx
    request to httpcore's, httpcore's errors to httpx's), through public APIs only."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            status, headers, body, extensions = self.pool.handle_request(core_request, request)
        except Exception as exc:
            mapped = _mapped(exc, request)
            if mapped is exc:
                raise
            raise mapped from exc
        return httpx.Response(status_code=status, headers=headers, stream=body, extensions=extensions)

    def close(self) -> None:
        self.pool.close()


class Pool:
    """The per-process upstream pool: HTTP/1.1 connections, one request each at a time.

    httpcore's own pool re-examines every connection on every request and every response
    close (and polls each idle socket). At 1,000 streams per worker that pass was an
    eighth of the worker's CPU in py-spy (encode/httpcore#1035). Here each step is O(1):

    - idle connections wait on a stack per origin; a call takes the most recently used
      one, the likeliest to be alive, and polls that one socket only: one the server
      closed or whose keep-alive ran out is closed and the next is tried;
    - at most ``max_keepalive`` connections stay idle; one beyond that closes when its
      response does, and the oldest idle ones are closed once their keep-alive has run out;
    - at most ``max_connections`` are open; a call beyond that waits up to the request's
      ``pool`` timeout, then fails with ``httpcore.PoolTimeout``.

    ``UpstreamTransport`` serves httpx's requests through it and maps httpcore's errors.
    """

    def __init__(
        self, *, ssl_context: ssl.SSLContext, max_connections: int, max_keepalive: int, keepalive_expiry: float
    ) -> None:
        self._ssl_context = ssl_context
        self._max_keepalive = max_keepalive
        self._keepalive_expiry = keepalive_expiry
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        # Keyed by (scheme, host, port): httpcore's Origin is not hashable.
        self._idle: dict[tuple[bytes, bytes, int], collections.deque[tuple[float, httpcore.HTTPConnection]]] = {}
        self._idle_count = 0
        self._backend = _CorkedBackend()

    @property
    def idle_count(self) -> int:
        return self._idle_count

    def handle_request(
        self, request: httpcore.Request, origin_request: httpx.Request
    ) -> tuple[int, list[tuple[bytes, bytes]], _Body, MutableMapping[str, Any]]:
        """Send ``request``: its status, headers, body (handing the connection back when
        closed) and extensions. ``origin_request`` is what the body's errors name."""
        if request.url.scheme not in (b"http", b"https"):
            raise httpcore.UnsupportedProtocol(f"Request URL has an unsupported protocol '{request.url.scheme!r}'.")
        timeouts = request.extensions.get("timeout", {})
        if not self._slots.acquire(timeout=timeouts.get("pool")):
            raise httpcore.PoolTimeout("No upstream connection became free in time.")
        connection = None
        try:
            connection = self._checkout(request.url.origin)
            response = connection.handle_request(request)
        except BaseException:
            if connection is not None:
                connection.close()
            self._slots.release()
            raise
        assert isinstance(response.stream, Iterable)  # the sync connection's body
        chunked = any(
            name.lower() == b"transfer-encoding" and value.lower().endswith(b"chunked")
            for name, value in response.headers
        )
        body = _Body(response.stream, self, request, connection, origin_request, chunked=chunked)
        return response.status, response.headers, body, response.extensions

    def _checkout(self, origin: httpcore.Origin) -> httpcore.HTTPConnection:
        while True:
            connection = None
            with self._lock:
                stack = self._idle.get(_key(origin))
                stale = self._expire(stack) if stack else []
                if stack:
                    _, connection = stack.pop()
                    self._idle_count -= 1
            for old in stale:
                old.close()
            if connection is None:
                break
            if connection.is_idle() and not connection.has_expired():
                return connection
            connection.close()
        return httpcore.HTTPConnection(
            origin=origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=self._keepalive_expiry,
            network_backend=self._backend,  # type: ignore[arg-type]  # duck-typed NetworkBackend
        )

    def _checkin(self, origin: httpcore.Origin, connection: httpcore.HTTPConnection) -> None:
        """Back from a finished response: kept idle if reusable and there is room."""
        self._slots.release()
        with self._lock:
            stack = self._idle.setdefault(_key(origin), collections.deque())
            stale = self._expire(stack)
            keep = connection.is_idle() and self._idle_count < self._max_keepalive
            if keep:
                stack.append((time.monotonic(), connection))
                self._idle_count += 1
        if not keep:
            stale.append(connection)
        for old in stale:
            old.close()

    def _expire(self, stack: collections.deque[tuple[float, httpcore.HTTPConnection]]) -> list[httpcore.HTTPConnection]:
        """Under the lock: the idle connections past their keep-alive, taken off the bottom
        of ``stack``, where the oldest sit."""
        cutoff = time.monotonic() - self._keepalive_expiry
        stale = []
        while stack and stack[0][0] < cutoff:
            stale.append(stack.popleft()[1])
        self._idle_count -= len(stale)
        return stale

    def close(self) -> None:
        with self._lock:
            idle = [connection for stack in self._idle.values() for _, connection in stack]
            self._idle.clear()
            self._idle_count = 0
        for connection in idle:
            connection.close()


class _CorkedStream:
    """Writes wait for the next read, so a request's headers and body leave in one send
    rather than two (h11 writes them apart): a syscall less per call on both ends.

    httpcore's ``NetworkStream`` interface, by duck typing: subclassing it would make this
    module fail to import if a release moved the class."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._pending: list[bytes] = []
        self._timeout: float | None = None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._pending.append(buffer)
            self._timeout = timeout

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # As httpcore does: the server may have answered (a 413, say) and hung up.
        with contextlib.suppress(httpcore.WriteError):
            self._flush()
        return self._inner.read(max_bytes, timeout)

    def _flush(self) -> None:
        if self._pending:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending = []
            self._inner.write(data, self._timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> _CorkedStream:
        self._flush()
        return _CorkedStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _CorkedBackend:
    """httpcore's ``SyncBackend``, its TCP streams corked; a wrapper, not a subclass, for
    the same reason as ``_CorkedStream``."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, *args: Any, **kwargs: Any) -> _CorkedStream:
        return _CorkedStream(self._inner.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.connect_unix_socket(*args, **kwargs)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _key(origin: httpcore.Origin) -> tuple[bytes, bytes, int]:
    return origin.scheme, origin.host, origin.port


class _Body(httpx.SyncByteStream):
    """A response body that hands its connection back to the pool when closed, and raises
    httpx's errors (as ``httpx.HTTPTransport``'s body does) for httpcore's.

    A chunked body (a stream) is read by ``proxy.chunked`` when httpcore's connection is as
    expected: the HTTP/1.1 connection, its h11 state at the start of the body, holding
    whole chunks only. Otherwise, or if a release changed those parts, httpcore reads it.

    A caller that stops reading before the end (an SSE stream is done at ``[DONE]``, before
    the closing chunk) would cost the connection: closing then reads on for a moment, so
    the connection ends the response cleanly and can be reused, or closes if it cannot.
    """

    def __init__(
        self,
        stream: Iterable[bytes],
        pool: Pool,
        request: httpcore.Request,
        connection: httpcore.HTTPConnection,
        origin_request: httpx.Request,
        *,
        chunked: bool = False,
    ) -> None:
        self._stream = stream
        self._origin_request = origin_request
        self._pool = pool
        self._request = request
        self._connection: httpcore.HTTPConnection | None = connection
        self._complete = False
        self._chunked = chunked
        self._reading: Iterator[bytes] | None = None
        self.direct = False  # read by proxy.chunked, not by h11

    def __iter__(self) -> Iterator[bytes]:
        # Not ``yield from``: a caller dropping this iterator must not close httpcore's,
        # which would close the connection before close() can save it. The body's own
        # iterator is kept on the instance for the same reason.
        self._reading = self._read_directly() or iter(self._stream)
        while True:
            try:
                data = next(self._reading)
            except StopIteration:
                self._complete = True
                return
            except Exception as exc:
                self.close()
                mapped = _mapped(exc, self._origin_request)
                if mapped is exc:
                    raise
                raise mapped from exc
            except BaseException:
                self.close()
                raise
            yield data

    def _read_directly(self) -> Iterator[bytes] | None:
        """The chunked body read off the socket, or None where h11 must read it."""
        connection = getattr(self._stream, "_connection", None)
        state = getattr(connection, "_h11_state", None)
        network = getattr(connection, "_network_stream", None)
        if (
            not self._chunked
            or not isinstance(state, h11.Connection)
            or state.their_state is not h11.SEND_BODY
            or not callable(getattr(network, "read", None))
        ):
            return None
        leading, closed = state.trailing_data
        if closed or not whole_chunks(leading):
            return None
        self.direct = True
        return self._chunks(state, network, leading, int(getattr(connection, "READ_NUM_BYTES", 65536)))

    def _chunks(self, state: h11.Connection, network: Any, leading: bytes, size: int) -> Iterator[bytes]:
        extensions = self._request.extensions

        def read() -> bytes:
            # The read timeout is looked up per read: the stream sets it once the body
            # starts, and _finish() shortens it.
            return bytes(network.read(size, extensions.get("timeout", {}).get("read")))

        body = ChunkedBody(read, leading)
        yield from body
        # h11 reads the last chunk and its trailers, after the whole chunks it still holds:
        # the message has ended for it too, and httpcore reuses the connection.
        assert body.tail is not None
        state.receive_data(body.tail)
        try:
            while not isinstance(event := state.next_event(), h11.EndOfMessage):
                if event is h11.NEED_DATA:
                    raise httpcore.RemoteProtocolError("the chunked body did not end where it was read to end")
        except h11.RemoteProtocolError as exc:
            raise httpcore.RemoteProtocolError(str(exc)) from exc

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if not self._complete and not connection.is_closed():
                self._finish()
            if hasattr(self._stream, "close"):
                self._stream.close()  # a body still not read to its end closes the connection
        finally:
            self._pool._checkin(self._request.url.origin, connection)

    def _finish(self) -> None:
        # httpcore reads the read timeout afresh for each pass over the body.
        self._request.extensions["timeout"] = {**self._request.extensions.get("timeout", {}), "read": FINISH_SECONDS}
        left = FINISH_BYTES
        try:
            # A body read directly goes on where it stopped; h11 knows where it stands.
            for data in self._reading if self.direct and self._reading is not None else self._stream:
                left -= len(data)
                if left < 0:
                    return
        except Exception:  # noqa: S110  # timed out or failed: httpcore has closed the connection
            pass


@lru_cache(maxsize=256)
def _url(url: str) -> httpx.URL:
    return httpx.URL(url)  # parsed once per upstream URL, not per call


def post(url: str, *, content: bytes, headers: dict[str, str], timeout: dict[str, float]) -> httpx.Response:
    """POST ``content`` and return the response with its body not yet read.

    ``timeout`` is httpx's per-request timeout dict (connect, read, write, pool); the
    caller may change its ``read`` later, since httpcore reads it when the body is read.
    """
    request = httpx.Request(
        "POST",
        _url(url),
        content=content,
        headers={"User-Agent": USER_AGENT, **headers},
        extensions={"timeout": timeout},
    )
    response = transport().handle_request(request)
    response.request = request
    return response
