"""Admission's one way to Redis, and its one decision of whether Redis is down.

Only a connection or timeout error (and Redis saying it cannot serve right now: loading,
read-only after a failover, busy with a script) means Redis is down. An error in a script
is a bug: the request gets a 500, and nobody's limits are switched off (``outage``).

After an outage, this worker skips Redis for ``REDIS_RETRY_SECONDS`` at most, so requests
do not each pay a timeout; the worker's keeper (``billing.admission.inflight``) probes
Redis in the background and ends the back-off as soon as Redis answers.

When ``config/redis.py`` (a shared health state for every Redis user) exists, ``client``,
``down`` and ``mark_down`` are what switch to it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import BusyLoadingError, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("billing.admission")

REDIS_RETRY_SECONDS = 5.0
_down_until = 0.0
_recovered = True  # False from an outage until counters.recover() ran
# Replies that mean "cannot serve now", not "your script is wrong".
_UNAVAILABLE_REPLIES = ("BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY")


def client() -> Any:
    """The Redis client admission uses (django-redis's pool for the default cache)."""
    from django_redis import get_redis_connection

    return get_redis_connection("default")


def outage(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis cannot be reached or cannot serve now (else: a bug)."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | BusyLoadingError | ReadOnlyError):
        return True
    if isinstance(exc, ResponseError):
        return str(exc).startswith(_UNAVAILABLE_REPLIES)
    return False


def down() -> bool:
    return time.monotonic() < _down_until


def mark_down(exc: BaseException, policy: str) -> None:
    global _down_until, _recovered
    _recovered = False
    if not down():
        log.error("admission: Redis unreachable (%r); policy %s for up to %ss", exc, policy, REDIS_RETRY_SECONDS)
    _down_until = time.monotonic() + REDIS_RETRY_SECONDS


def mark_up() -> None:
    global _down_until
    if down():
        log.warning("admission: Redis answers again")
    _down_until = 0.0


def recovered() -> bool:
    """Whether this worker has caught up since its last outage (``counters.recover``)."""
    return _recovered


def mark_recovered() -> None:
    global _recovered
    _recovered = True


def reset() -> None:
    """Forget any outage (tests)."""
    global _down_until, _recovered
    _down_until = 0.0
    _recovered = True


__all__ = ["RedisError", "client", "down", "mark_down", "mark_up", "outage", "reset"]
