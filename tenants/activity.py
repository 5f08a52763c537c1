"""``last_used_at`` without a database write per request.

Each worker notes a key's use at most once per ``LAST_USED_THROTTLE_SECONDS``. With
Redis the note is a hash field, and the Celery task ``tenants.tasks.flush_last_used``
writes the batch to Postgres every minute; without Redis (the embedded default) the
throttled note is written straight to the database, as it is while Redis is backing off
after an outage (``config.redis``).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q
from django.utils import timezone
from redis.exceptions import RedisError

from config import redis
from tenants.models import ApiKey

log = logging.getLogger(__name__)

REDIS_HASH = "tw:key-last-used"
_noted: dict[int, float] = {}


def _redis():  # type: ignore[no-untyped-def]  # redis-py's client is untyped here
    return redis.client()


def key_used(api_key_pk: int) -> None:
    now = time.monotonic()
    if now - _noted.get(api_key_pk, -1e9) < settings.TOLLWAY["LAST_USED_THROTTLE_SECONDS"]:
        return
    _noted[api_key_pk] = now
    if redis.available():
        try:
            _redis().hset(REDIS_HASH, str(api_key_pk), f"{time.time():.3f}")
            return
        except RedisError as exc:  # last_used_at is not worth failing a request over
            log.warning("could not note use of key %s in Redis: %r", api_key_pk, exc)
            if not isinstance(exc, redis.OUTAGE_ERRORS):
                return
    # No Redis, or Redis is down: the throttled note goes straight to the database.
    try:
        _write({api_key_pk: timezone.now()})
    except DatabaseError as exc:  # nor a database outage: the ledger matters, this does not
        log.warning("could not note use of key %s: %r", api_key_pk, exc)


def flush() -> int:
    """Move the noted uses from Redis to Postgres. Returns how many keys were updated."""
    if not redis.enabled():
        return 0
    pipe = _redis().pipeline(transaction=True)
    pipe.hgetall(REDIS_HASH)
    pipe.delete(REDIS_HASH)
    noted, _ = pipe.execute()
    return _write({int(pk): datetime.fromtimestamp(float(ts), tz=UTC) for pk, ts in noted.items()})


def _write(uses: dict[int, datetime]) -> int:
    # .update() sends no signals, so the auth cache is not evicted by mere use.
    updated = 0
    for pk, when in uses.items():
        updated += ApiKey.objects.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=when), pk=pk).update(
            last_used_at=when
        )
    return updated


def forget_local() -> None:
    _noted.clear()
