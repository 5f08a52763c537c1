"""Bounded concurrency for batch lines, across every worker: a tenant's lines, and the
lines on one deployment, each hold one of a fixed number of slots while they run.

A slot is a cache key taken with ``add`` (Redis ``SET NX``; atomic in the local-memory
cache too), leased for ``BATCH_LEASE_SECONDS`` and renewed by the runner holding it
(:func:`renew`, with the batch's own lease): a worker killed while holding slots frees
them when the lease lapses. If the cache cannot be reached the line runs without a slot
(logged): a Redis outage stops no batch, and live traffic never waits on these slots.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05
_held: dict[str, str] = {}  # this process's slots: key -> token, renewed by renew()
_lock = threading.Lock()


def lease_seconds() -> int:
    return max(1, round(float(settings.TOLLWAY["BATCH_LEASE_SECONDS"])))


def renew() -> None:
    """Extend the lease of every slot this process holds."""
    with _lock:
        keys = list(_held)
    for key in keys:
        cache.touch(key, lease_seconds())


@contextmanager
def hold(name: str, limit: int) -> Iterator[None]:
    """Hold one of ``limit`` slots called ``name`` for the block, waiting for a free one."""
    token = uuid.uuid4().hex
    while True:
        for n in random.sample(range(limit), limit):  # no slot is everyone's first try
            key = f"tw:batchslot:{name}:{n}"
            taken = cache.add(key, token, timeout=lease_seconds())
            if taken is None:  # the cache failed (django-redis with IGNORE_EXCEPTIONS)
                log.warning("batches: cannot take a %s slot (cache unreachable); running without one", name)
                yield
                return
            if taken:
                with _lock:
                    _held[key] = token
                try:
                    yield
                finally:
                    with _lock:
                        _held.pop(key, None)
                    if cache.get(key) == token:
                        cache.delete(key)
                return
        time.sleep(POLL_SECONDS * (1 + random.random()))
