"""The circuit breaker: deployments that keep failing are ejected for a while, across replicas.

State is one Redis hash per deployment (``tw:cb:<pk>``), so every replica sees the same
circuit:

* **closed**: traffic flows. Each failure counts; a success resets the count.
  ``CIRCUIT_FAILURES`` consecutive failures open the circuit. One transient error never
  does (One API #292 disabled a channel on a single "overloaded").
* **open**: the deployment is skipped until ``open_until``, which is
  ``CIRCUIT_EJECT_SECONDS`` times its ejection count (capped at ``CIRCUIT_EJECT_MAX_SECONDS``),
  so a deployment that keeps failing is left alone longer each time.
* **half-open**: after ``open_until``, exactly one request may probe it: the one that wins
  ``SET NX`` on ``tw:cb:<pk>:probe``. Its success closes the circuit and forgets the
  ejections; its failure ejects the deployment again at once.

Reading the state of a model's deployments is one pipelined round trip; a success writes
only when there is something to reset. A deployment read as clean (no failures, never
ejected) is remembered in the process for ``CIRCUIT_READ_CACHE_SECONDS`` (1 s), so a
healthy request path usually pays no Redis read at all: another replica's ejection is seen
here within that time, and this process's own failures at once.

If Redis fails, every circuit reads as closed (traffic still flows, retries still
exclude what failed); while the worker backs off Redis (``config.redis``), the circuit
does not ask it at all. The embedded default has no Redis, and no circuit breaking.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError

from config import redis

log = logging.getLogger(__name__)

# The clock: wall time, since replicas share ``open_until``. Tests may replace it.
clock: Callable[[], float] = time.time

# Deployments last read as clean: pk -> monotonic time the reading goes stale.
_clean_until: dict[int, float] = {}


def _key(pk: int) -> str:
    return f"tw:cb:{pk}"


def _probe_key(pk: int) -> str:
    return f"tw:cb:{pk}:probe"


@dataclass(frozen=True)
class Health:
    """A deployment's circuit as last read."""

    fails: int = 0
    open_until: float = 0.0

    def ejected(self, now: float) -> bool:
        return self.open_until > now

    def half_open(self, now: float) -> bool:
        return 0 < self.open_until <= now

    @property
    def dirty(self) -> bool:
        """A success has something to reset."""
        return self.fails > 0 or self.open_until > 0


CLOSED = Health()

# KEYS: hash, probe; ARGV: now, threshold, base seconds, max seconds, status, latency ms
_FAILURE = """
local now = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'last_status', ARGV[5], 'last_latency_ms', ARGV[6], 'last_at', ARGV[1])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until > now then return {'open', tostring(open_until)} end
if open_until == 0 then
  local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
  if fails < tonumber(ARGV[2]) then return {'closed', tostring(fails)} end
end
local ejections = redis.call('HINCRBY', KEYS[1], 'ejections', 1)
local until_ = now + math.min(tonumber(ARGV[3]) * ejections, tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'open_until', tostring(until_), 'fails', 0)
redis.call('DEL', KEYS[2])
return {'opened', tostring(until_)}
"""

# KEYS: hash, probe; ARGV: now, status, latency ms
_SUCCESS = """
redis.call('HSET', KEYS[1], 'fails', 0, 'last_status', ARGV[2], 'last_latency_ms', ARGV[3], 'last_at', ARGV[1])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until > 0 and tonumber(ARGV[1]) >= open_until then
  redis.call('HDEL', KEYS[1], 'open_until')
  redis.call('HSET', KEYS[1], 'ejections', 0)
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""

_scripts: dict[str, Any] = {}


def _enabled() -> bool:
    return redis.available()


def _redis() -> Any:
    return redis.client()


def _script(name: str, source: str) -> Any:
    if name not in _scripts:
        _scripts[name] = _redis().register_script(source)
    return _scripts[name]


def _redis_failed(exc: RedisError, what: str) -> None:
    # An outage was noted by the client (config.redis) and is logged there, once.
    if not isinstance(exc, redis.OUTAGE_ERRORS):
        log.error("circuit: Redis refused a command while %s: %r", what, exc)


def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def states(pks: Iterable[int]) -> dict[int, Health]:
    """The circuit of each deployment, in one round trip (none while all are remembered
    clean); closed for all if Redis fails."""
    pks = list(pks)
    if not pks or not _enabled():
        return {pk: CLOSED for pk in pks}
    now = time.monotonic()
    unknown = [pk for pk in pks if _clean_until.get(pk, 0.0) <= now]
    if not unknown:
        return {pk: CLOSED for pk in pks}
    try:
        pipe = _redis().pipeline(transaction=False)
        for pk in unknown:
            pipe.hmget(_key(pk), "fails", "open_until")
        rows = pipe.execute()
    except RedisError as exc:
        _redis_failed(exc, "reading")
        return {pk: CLOSED for pk in pks}
    read = {pk: Health(int(_float(fails)), _float(until)) for pk, (fails, until) in zip(unknown, rows, strict=True)}
    keep = float(settings.TOLLWAY["CIRCUIT_READ_CACHE_SECONDS"])
    for pk, health in read.items():
        if keep > 0 and not health.dirty:
            _clean_until[pk] = now + keep
    return {pk: read.get(pk, CLOSED) for pk in pks}


def forget_local() -> None:
    """Drop what this process remembers about clean deployments (tests)."""
    _clean_until.clear()


def acquire_probe(pk: int) -> bool:
    """Whether this request is the one probe of a half-open deployment (SET NX)."""
    if not _enabled():
        return True
    lease = max(1, int(settings.TOLLWAY["CIRCUIT_EJECT_SECONDS"]))
    try:
        return bool(_redis().set(_probe_key(pk), "1", nx=True, ex=lease))
    except RedisError as exc:
        _redis_failed(exc, "taking a probe")
        return True


def record_failure(pk: int, *, status: int | None, latency_ms: int) -> str:
    """Count a failure; returns "closed", "open" or "opened" (this failure ejected it)."""
    _clean_until.pop(pk, None)  # no longer clean: read it afresh next time
    if not _enabled():
        return "closed"
    conf = settings.TOLLWAY
    try:
        state, _ = _script("failure", _FAILURE)(
            keys=[_key(pk), _probe_key(pk)],
            args=[
                repr(clock()),
                conf["CIRCUIT_FAILURES"],
                conf["CIRCUIT_EJECT_SECONDS"],
                conf["CIRCUIT_EJECT_MAX_SECONDS"],
                status or 0,
                latency_ms,
            ],
        )
    except RedisError as exc:
        _redis_failed(exc, "counting a failure")
        return "closed"
    state = state.decode() if isinstance(state, bytes) else str(state)
    if state == "opened":
        log.warning("circuit: deployment %s ejected after repeated failures", pk)
    return state


def record_success(pk: int, health: Health, *, status: int, latency_ms: int) -> None:
    """Reset the failure count and close a half-open circuit; a no-op when already clean."""
    if not health.dirty or not _enabled():
        return
    try:
        closed = _script("success", _SUCCESS)(keys=[_key(pk), _probe_key(pk)], args=[repr(clock()), status, latency_ms])
    except RedisError as exc:
        _redis_failed(exc, "recording a success")
        return
    if closed:
        log.info("circuit: deployment %s closed after a healthy probe", pk)


def snapshot(pk: int) -> dict[str, str]:
    """Everything known about a deployment's circuit, for the admin ({} if nothing)."""
    if not redis.enabled():
        return {}
    try:
        raw = _redis().hgetall(_key(pk))
    except RedisError as exc:
        _redis_failed(exc, "reading for the admin")
        return {"error": "Redis unreachable"}
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def describe(pk: int, now: float | None = None) -> str:
    """One line for the admin: state, consecutive failures, ejected until, last status and latency."""
    data = snapshot(pk)
    if "error" in data:
        return data["error"]
    now = clock() if now is None else now
    health = Health(int(_float(data.get("fails"))), _float(data.get("open_until")))
    if health.ejected(now):
        state = f"OPEN until {time.strftime('%H:%M:%S', time.gmtime(health.open_until))} UTC"
    elif health.half_open(now):
        state = "HALF-OPEN (next request probes)"
    else:
        state = "closed"
    parts = [state, f"{health.fails} consecutive failures", f"ejections {data.get('ejections', '0')}"]
    if data.get("last_status") is not None:
        parts.append(f"last status {data['last_status']} in {data.get('last_latency_ms', '?')} ms")
    return "; ".join(parts)
