"""Stage 5, call: the one pooled HTTP transport per process that every adapter uses.

Created lazily, after gunicorn forks its workers (and after gevent has patched sockets),
never per request: connection reuse is most of the latency budget.

``send`` hands a request straight to the transport. ``httpx.Client.send`` would add
its auth, redirect, cookie-jar and event-hook layers on every call; upstream calls need
none of them (no redirects are followed, no cookies kept), and py-spy put those layers
at about a tenth of a worker's CPU per request.

The transport is Tollway's (``UpstreamTransport``, a public ``httpx.BaseTransport``) over
its own pool (``Pool``) of ``proxy.http11`` connections: a request leaves in one send and
its answer is parsed in one pass, at a tenth of the CPU httpcore and h11 took
(docs/decisions/0030). It uses httpx's public API only: requests, responses, errors.
"""

from __future__ import annotations

import collections
import logging
import os
import ssl
import threading
import time
from collections.abc import Iterator, MutableMapping
from functools import lru_cache
from typing import Any

import httpx
from django.conf import settings

from proxy import http11

log = logging.getLogger(__name__)

_transport: UpstreamTransport | None = None
_transport_pid = 0
_lock = threading.Lock()

USER_AGENT = "tollway"
KEEPALIVE_EXPIRY = 30.0  # seconds an idle upstream connection is kept
# How long, and how much, a body closed before its end is read on to save its connection.
FINISH_SECONDS = 0.05
FINISH_BYTES = 65536

Key = tuple[bytes, str, int]  # scheme, host, port


def transport() -> UpstreamTransport:
    global _transport, _transport_pid
    if _transport is None or _transport_pid != os.getpid():
        with _lock:
            if _transport is None or _transport_pid != os.getpid():
                _transport = _new_transport()
                _transport_pid = os.getpid()
    return _transport


def _new_transport() -> UpstreamTransport:
    conf = settings.TOLLWAY
    context = httpx.create_ssl_context(trust_env=False)  # the public CAs (certifi)
    if bundle := conf.get("UPSTREAM_CA_BUNDLE"):
        context.load_verify_locations(cafile=bundle)
    return UpstreamTransport(
        Pool(
            ssl_context=context,
            max_connections=int(conf["UPSTREAM_MAX_CONNECTIONS"]),
            max_keepalive=int(conf["UPSTREAM_MAX_KEEPALIVE"]),
            keepalive_expiry=KEEPALIVE_EXPIRY,
        )
    )


def pool() -> Pool:
    """This process's pool."""
    return transport().pool


_DEFAULT_PORTS = {b"http": 80, b"https": 443}


class UpstreamTransport(httpx.BaseTransport):
    """An ``httpx.BaseTransport`` over ``Pool``: an httpx request in, an httpx response
    out, httpx's errors (with the request attached) for anything that fails."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{url.scheme}://'.", request=request
            )
        key = (scheme, url.raw_host.decode("ascii"), url.port or _DEFAULT_PORTS[scheme])
        method = request.method.encode("ascii")
        try:
            wire = http11.request_bytes(method, url.raw_path, request.headers.raw, request.read())
            head, body = self.pool.exchange(key, wire, method, request)
        except httpx.RequestError as exc:
            exc.request = request
            raise
        return httpx.Response(
            status_code=head.status,
            headers=head.headers,
            stream=body,
            extensions={"http_version": b"HTTP/1.0" if head.http10 else b"HTTP/1.1", "reason_phrase": head.reason},
        )

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
      ``pool`` timeout, then fails with ``httpx.PoolTimeout``.
    """

    def __init__(
        self, *, ssl_context: ssl.SSLContext, max_connections: int, max_keepalive: int, keepalive_expiry: float
    ) -> None:
        self._ssl_context = ssl_context
        self._max_keepalive = max_keepalive
        self._keepalive_expiry = keepalive_expiry
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._idle: dict[Key, collections.deque[tuple[float, http11.Connection]]] = {}
        self._idle_count = 0

    @property
    def idle_count(self) -> int:
        return self._idle_count

    def exchange(self, key: Key, wire: bytes, method: bytes, request: httpx.Request) -> tuple[http11.Head, _Body]:
        """Send ``wire`` (a whole request) on a pooled connection: the response's head, and
        its body, which hands the connection back when closed."""
        timeouts: MutableMapping[str, Any] = request.extensions.get("timeout", {})
        if not self._slots.acquire(timeout=timeouts.get("pool")):
            raise httpx.PoolTimeout("No upstream connection became free in time.")
        connection = None
        try:
            connection = self._checkout(key, timeouts)
            failed = connection.send(wire, timeouts)
            try:
                head = connection.response_head(timeouts, method)
            except httpx.RequestError:
                if failed is not None:  # it stopped reading and said nothing: the send failed
                    raise httpx.WriteError(str(failed)) from failed
                raise
            if failed is not None:
                head.keep_alive = False  # it answered without reading the whole request
        except BaseException:
            if connection is not None:
                connection.close()
            self._slots.release()
            raise
        return head, _Body(connection, head, self, key, request)

    def _checkout(self, key: Key, timeouts: MutableMapping[str, Any]) -> http11.Connection:
        while True:
            connection = None
            with self._lock:
                stack = self._idle.get(key)
                stale = self._expire(stack) if stack else []
                if stack:
                    _, connection = stack.pop()
                    self._idle_count -= 1
            for old in stale:
                old.close()
            if connection is None:
                break
            if connection.usable():
                return connection
            connection.close()
        return http11.Connection.open(key[0], key[1], key[2], self._ssl_context, timeouts)

    def _checkin(self, key: Key, connection: http11.Connection) -> None:
        """Back from a finished response: kept idle if reusable and there is room."""
        self._slots.release()
        with self._lock:
            stack = self._idle.setdefault(key, collections.deque())
            stale = self._expire(stack)
            keep = connection.reusable and not connection.closed and self._idle_count < self._max_keepalive
            if keep:
                stack.append((time.monotonic(), connection))
                self._idle_count += 1
        if not keep:
            stale.append(connection)
        for old in stale:
            old.close()

    def _expire(self, stack: collections.deque[tuple[float, http11.Connection]]) -> list[http11.Connection]:
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


class _Body(httpx.SyncByteStream):
    """A response body that hands its connection back to the pool when closed, its errors
    httpx's with the request attached.

    A caller that stops reading before the end (an SSE stream is done at ``[DONE]``, before
    the closing chunk) would cost the connection: closing then reads on for a moment, so
    the connection ends the response cleanly and can be reused, or closes if it cannot.
    """

    def __init__(
        self, connection: http11.Connection, head: http11.Head, pool: Pool, key: Key, request: httpx.Request
    ) -> None:
        self._connection: http11.Connection | None = connection
        self._head = head
        self._pool = pool
        self._key = key
        self._request = request
        # The adapters may change its ``read`` (the idle limit of a stream): read per read.
        self._timeouts: MutableMapping[str, Any] = request.extensions.setdefault("timeout", {})
        self._reading: Iterator[bytes] | None = None
        self._complete = False

    def __iter__(self) -> Iterator[bytes]:
        connection = self._connection
        if self._reading is not None:
            raise httpx.StreamConsumed()
        if connection is None:
            raise httpx.StreamClosed()
        # Kept on the instance: close() reads on from where the caller stopped.
        self._reading = reading = connection.body(self._head, self._timeouts)
        while True:
            try:
                data = next(reading)
            except StopIteration:
                self._complete = True
                return
            except httpx.RequestError as exc:
                exc.request = self._request
                self.close()
                raise
            except BaseException:
                self.close()
                raise
            yield data

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if not self._complete and not connection.closed:
                self._finish(connection)
        finally:
            self._pool._checkin(self._key, connection)

    def _finish(self, connection: http11.Connection) -> None:
        self._timeouts["read"] = FINISH_SECONDS
        left = FINISH_BYTES
        reading = self._reading or connection.body(self._head, self._timeouts)
        try:
            for data in reading:
                left -= len(data)
                if left < 0:
                    break
            else:
                return  # the body ended: the connection may be reused
        except Exception:  # noqa: S110  # timed out or failed: the connection closed itself
            pass
        connection.close()


@lru_cache(maxsize=256)
def _url(url: str) -> httpx.URL:
    return httpx.URL(url)  # parsed once per upstream URL, not per call


def post(url: str, *, content: bytes, headers: dict[str, str], timeout: dict[str, float]) -> httpx.Response:
    """POST ``content`` and return the response with its body not yet read.

    ``timeout`` is httpx's per-request timeout dict (connect, read, write, pool); the
    caller may change its ``read`` later: the body looks it up for each read.
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
