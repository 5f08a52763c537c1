"""Bounded concurrency for batch lines, across every worker: a tenant's lines, and the
lines on one deployment, each hold one of a fixed number of slots while they run.

A slot is a cache key taken with ``add`` (Redis ``SET NX``; atomic in the local-memory
cache too) and leased: a worker killed while holding one frees it when the lease lapses.
If the cache cannot be reached the line runs without a slot (logged): a Redis outage
slows nothing and stops nothing, and live traffic never waits on these slots.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05


def lease_seconds() -> int:
    # The longest a line can hold a slot: a whole upstream call, with retries, and a margin.
    conf = settings.TOLLWAY
    return int(conf["UPSTREAM_TOTAL_TIMEOUT"] + conf["RETRY_BUDGET_SECONDS"] + 60)


@contextmanager
def hold(name: str, limit: int) -> Iterator[None]:
    """Hold one of ``limit`` slots called ``name`` for the block, waiting for a free one."""
    token = uuid.uuid4().hex
    lease = lease_seconds()
    while True:
        for n in random.sample(range(limit), limit):  # no slot is everyone's first try
            key = f"tw:batchslot:{name}:{n}"
            taken = cache.add(key, token, timeout=lease)
            if taken is None:  # the cache failed (django-redis with IGNORE_EXCEPTIONS)
                log.warning("batches: cannot take a %s slot (cache unreachable); running without one", name)
                yield
                return
            if taken:
                try:
                    yield
                finally:
                    if cache.get(key) == token:
                        cache.delete(key)
                return
        time.sleep(POLL_SECONDS * (1 + random.random()))
