"""Stage 5, call: the one pooled HTTP transport per process that every adapter uses.

Created lazily, after gunicorn forks its workers (and after gevent has patched sockets),
never per request: connection reuse is most of the latency budget.

``send`` hands a request straight to httpx's transport. ``httpx.Client.send`` would add
its auth, redirect, cookie-jar and event-hook layers on every call; upstream calls need
none of them (no redirects are followed, no cookies kept), and py-spy put those layers
at about a tenth of a worker's CPU per request.

The pool is httpcore's, with its bookkeeping made linear (``LinearPool``).
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from typing import Any

import httpcore
import httpx
from django.conf import settings

_transport: httpx.HTTPTransport | None = None
_transport_pid = 0
_lock = threading.Lock()

USER_AGENT = "tollway"


def transport() -> httpx.HTTPTransport:
    global _transport, _transport_pid
    if _transport is None or _transport_pid != os.getpid():
        with _lock:
            if _transport is None or _transport_pid != os.getpid():
                conf = settings.TOLLWAY
                _transport = httpx.HTTPTransport(
                    limits=httpx.Limits(
                        max_connections=int(conf["UPSTREAM_MAX_CONNECTIONS"]),
                        max_keepalive_connections=int(conf["UPSTREAM_MAX_KEEPALIVE"]),
                        keepalive_expiry=30,
                    ),
                    trust_env=False,
                )
                pool = _transport._pool
                assert type(pool) is httpcore.ConnectionPool, type(pool)  # httpx built what we expect
                pool.__class__ = LinearPool  # same state, the one method below replaced
                _transport_pid = os.getpid()
    return _transport


class LinearPool(httpcore.ConnectionPool):
    """httpcore 1.0.9's pool, with the pass it runs twice per request made linear.

    Its ``_assign_requests_to_connections`` walks the pool once per connection (O(n²)),
    and polls the socket of every idle connection to see if the server closed it: with
    32 requests in flight per worker that was a tenth of the worker's CPU, and with
    1,000 streams per worker it was most of it (encode/httpcore#1035, still open). Here:

    - one walk drops closed connections and finds the idle ones;
    - at most ``max_keepalive_connections`` idle ones are kept, oldest closed first (the
      original compares the total count, so under load it closes idle ones it should keep);
    - an idle connection's socket is polled only when it is about to be reused, and a
      closed or expired one is dropped then, so a request never goes out on it;
    - each queued request gets its own connection (HTTP/1.1: one request per connection).
    """

    def _assign_requests_to_connections(self) -> list[Any]:
        closing: list[Any] = []
        live: list[Any] = []
        idle: list[Any] = []
        for connection in self._connections:
            if connection.is_closed():
                continue
            live.append(connection)
            if connection.is_idle():
                idle.append(connection)
        surplus = len(idle) - self._max_keepalive_connections
        if surplus > 0:
            doomed = set(idle[:surplus])
            closing.extend(idle[:surplus])
            idle = idle[surplus:]
            live = [c for c in live if c not in doomed]
        self._connections = live

        for pool_request in [r for r in self._requests if r.is_queued()]:
            origin = pool_request.request.url.origin
            chosen = None
            for connection in idle:
                if not connection.can_handle_request(origin):
                    continue
                if connection.has_expired():  # keep-alive ran out, or the server hung up
                    closing.append(connection)
                    continue
                chosen = connection
                break
            for connection in closing:
                if connection in idle:
                    idle.remove(connection)
                    self._connections.remove(connection)
            if chosen is not None:
                idle.remove(chosen)
            elif len(self._connections) < self._max_connections:
                chosen = self.create_connection(origin)
                self._connections.append(chosen)
            elif idle:  # full: make room by closing an idle connection to another origin
                victim = idle.pop(0)
                self._connections.remove(victim)
                closing.append(victim)
                chosen = self.create_connection(origin)
                self._connections.append(chosen)
            else:
                continue  # stays queued until a connection frees up
            pool_request.assign_to_connection(chosen)
        return closing


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
