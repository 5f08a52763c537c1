"""A two-tier read-through cache for the hot path: process memory, then Redis, then the loader.

Why two tiers: with warm caches, authenticating a key or resolving a model must not touch
Postgres (docs/architecture.md, "The request path"). The in-process tier answers most requests without even a
Redis round trip; it is trusted for ``LOCAL_CACHE_SECONDS`` only, which bounds how long a
revocation takes to reach another replica. Writes call :meth:`TieredCache.invalidate`,
which deletes the shared entry at once.

The shared tier is used only when Redis is configured. In the embedded default each
worker process has its own local-memory cache, so a shared tier would go stale across
workers; there the local tier falls straight through to the database.

While Redis is backing off after an outage (``config.redis``), the shared tier is
skipped: reads go to the database. An invalidation that cannot reach Redis is kept and
sent again as soon as Redis answers, so a revoked key does not live on in Redis for
``SHARED_CACHE_SECONDS`` after an outage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from django.conf import settings
from django.core.cache import cache
from prometheus_client import Counter

from config import metrics, redis

T = TypeVar("T")

_MISSING = "__tollway_missing__"
LOOKUPS = Counter("tollway_cache_lookups_total", "Hot-path cache lookups", ["cache", "tier"])
_MAX_LOCAL_ENTRIES = 50_000
# How long a caller waits for another's read of the same key before reading it itself.
_FOLLOW_SECONDS = 5.0


def _shared_enabled() -> bool:
    return redis.enabled()


class TieredCache(Generic[T]):
    """Read-through cache of ``loader(key)`` results; ``None`` results are cached too.

    One read per key at a time: when a key's local copy expires under load (every
    ``LOCAL_CACHE_SECONDS``), the first caller reads it and the others wait for that read,
    instead of each asking Redis (a 2,000-stream burst had hundreds of greenlets open
    Redis connections for the same key every second)."""

    def __init__(self, namespace: str, loader: Callable[[str], T | None]) -> None:
        self.namespace = namespace
        self.loader = loader
        self._local: dict[str, tuple[float, T | None]] = {}
        self._lock = threading.Lock()
        self._reading: dict[str, threading.Event] = {}
        self._local_hits = metrics.PendingCounter(LOOKUPS.labels(namespace, "local"))
        # Shared keys whose deletion Redis did not take (it was down): deleted once it answers.
        self._pending: set[str] = set()

    def _shared_key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    def get(self, key: str) -> T | None:
        hit = self._local.get(key)
        if hit is not None and hit[0] > time.monotonic():
            self._local_hits.inc()
            return hit[1]
        with self._lock:
            reading = self._reading.get(key)
            if reading is None:
                self._reading[key] = done = threading.Event()
        if reading is not None:  # another caller is reading this key: take its answer
            reading.wait(_FOLLOW_SECONDS)
            hit = self._local.get(key)
            if hit is not None and hit[0] > time.monotonic():
                self._local_hits.inc()
                return hit[1]
            return self._read(key)  # its read failed or is stuck: read it ourselves
        try:
            return self._read(key)
        finally:
            with self._lock:
                del self._reading[key]
            done.set()

    def _read(self, key: str) -> T | None:
        now = time.monotonic()
        value = self._fetch(key)
        if len(self._local) >= _MAX_LOCAL_ENTRIES:
            self._local.clear()
        self._local[key] = (now + settings.TOLLWAY["LOCAL_CACHE_SECONDS"], value)
        return value

    def _fetch(self, key: str) -> T | None:
        if not _shared_enabled() or not redis.available():
            LOOKUPS.labels(self.namespace, "database").inc()
            return self.loader(key)
        if self._pending:
            self._delete_shared(list(self._pending))
        shared_key = self._shared_key(key)
        stored = cache.get(shared_key)
        if stored is not None:
            LOOKUPS.labels(self.namespace, "redis").inc()
            return None if stored == _MISSING else stored
        LOOKUPS.labels(self.namespace, "database").inc()
        value = self.loader(key)
        ttl = settings.TOLLWAY["SHARED_CACHE_SECONDS"]
        # A miss is kept briefly, so a forged key id cannot make every request hit Postgres.
        cache.set(shared_key, _MISSING if value is None else value, ttl if value is not None else min(ttl, 30))
        return value

    def invalidate(self, keys: Iterable[str]) -> None:
        """Forget ``keys`` here and in the shared tier; other processes follow within
        ``LOCAL_CACHE_SECONDS``."""
        keys = list(keys)
        for key in keys:
            self._local.pop(key, None)
        if keys and _shared_enabled():
            self._delete_shared([self._shared_key(key) for key in keys])

    def _delete_shared(self, shared_keys: list[str]) -> None:
        # django-redis answers None, not a count, when it ignored an outage.
        done = redis.available() and cache.delete_many(shared_keys) is not None  # type: ignore[func-returns-value]  # django-redis returns the count
        with self._lock:
            if done:
                self._pending.difference_update(shared_keys)
            else:
                self._pending.update(shared_keys)

    def clear_local(self) -> None:
        self._local.clear()
