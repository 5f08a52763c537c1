"""Stage 5, call: the one pooled HTTP transport per process that every adapter uses.

Created lazily, after gunicorn forks its workers (and after gevent has patched sockets),
never per request: connection reuse is most of the latency budget.

``send`` hands a request straight to httpx's transport. ``httpx.Client.send`` would add
its auth, redirect, cookie-jar and event-hook layers on every call; upstream calls need
none of them (no redirects are followed, no cookies kept), and py-spy put those layers
at about a tenth of a worker's CPU per request.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache

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
                _transport_pid = os.getpid()
    return _transport


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
