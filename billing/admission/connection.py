"""Admission's one way to Redis, and its one decision of whether Redis is down: both from
``config.redis``, the client and health state every Redis user shares (short timeouts,
a shared back-off, one probe after it).

Only a connection or timeout error (and Redis saying it cannot serve right now: loading,
read-only after a failover, busy with a script) means Redis is down. An error in a script
is a bug: the request gets a 500, and nobody's limits are switched off (``outage``).

Admission adds one thing: after this worker has seen Redis down, it must catch up before
it trusts the counters again (``counters.recover``), so it remembers that it has not.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import BusyLoadingError, ReadOnlyError, RedisError, ResponseError

from config import redis as shared

log = logging.getLogger("billing.admission")

_recovered = True  # False from an outage seen until counters.recover() ran
# Replies that mean "cannot serve now", not "your script is wrong".
_UNAVAILABLE_REPLIES = ("BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY")


def client() -> Any:
    """The Redis client admission uses: this process's shared one."""
    return shared.client()


def outage(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis cannot be reached or cannot serve now (else: a bug)."""
    if isinstance(exc, (*shared.OUTAGE_ERRORS, BusyLoadingError, ReadOnlyError)):
        return True
    if isinstance(exc, ResponseError):
        return str(exc).startswith(_UNAVAILABLE_REPLIES)
    return False


def down() -> bool:
    """Whether this worker is backing off Redis now (the shared health state)."""
    global _recovered
    if shared.available():
        return False
    _recovered = False
    return True


def mark_down(exc: BaseException, policy: str) -> None:
    """An outage error reached admission: back off (shared) and catch up afterwards."""
    global _recovered
    if _recovered:
        log.error("admission: Redis unreachable (%r); policy %s until it answers", exc, policy)
    _recovered = False
    shared.failed(exc)


def recovered() -> bool:
    """Whether this worker has caught up since the last outage it saw (``counters.recover``)."""
    return _recovered


def mark_recovered() -> None:
    global _recovered
    _recovered = True


def reset() -> None:
    """Forget any outage (tests)."""
    global _recovered
    _recovered = True
    shared.reset()


__all__ = ["RedisError", "client", "down", "mark_down", "outage", "recovered", "reset"]
