"""Stage 5, call: the one pooled ``httpx.Client`` per process that every adapter uses.

Created lazily, after gunicorn forks its workers (and after gevent has patched sockets),
never per request: connection reuse is most of the latency budget.
"""

from __future__ import annotations

import os
import threading

import httpx
from django.conf import settings

_client: httpx.Client | None = None
_client_pid = 0
_lock = threading.Lock()


def client() -> httpx.Client:
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        with _lock:
            if _client is None or _client_pid != os.getpid():
                conf = settings.TOLLWAY
                _client = httpx.Client(
                    timeout=httpx.Timeout(
                        connect=conf["UPSTREAM_CONNECT_TIMEOUT"],
                        # Every adapter call sets its provider's own limits (adapters.base.post).
                        read=conf["UPSTREAM_FIRST_BYTE_TIMEOUT"],
                        write=conf["UPSTREAM_CONNECT_TIMEOUT"],
                        pool=conf["UPSTREAM_CONNECT_TIMEOUT"],
                    ),
                    limits=httpx.Limits(
                        max_connections=int(conf["UPSTREAM_MAX_CONNECTIONS"]),
                        max_keepalive_connections=int(conf["UPSTREAM_MAX_KEEPALIVE"]),
                        keepalive_expiry=30,
                    ),
                    follow_redirects=False,
                    trust_env=False,
                )
                _client_pid = os.getpid()
    return _client
