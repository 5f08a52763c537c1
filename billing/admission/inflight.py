"""This worker's calls in flight, and its keeper: what makes reservations survive a Redis
that lost its memory.

Each worker remembers the Redis reservations of its calls in flight (``add`` at
admission, ``forget`` at settle) and the settles Redis could not take (``retry_later``).
Its keeper, a background thread (a greenlet under gunicorn's gevent worker), reads the
server's boot mark (``tw:boot``) every quarter of ``REDIS_REREGISTER_SECONDS``:

* a Redis restarted without persistence has no boot mark: the first to notice sets a new
  one, with a companion key that lives ``REDIS_REREGISTER_SECONDS``;
* a worker that sees a new boot mark registers again every call it has in flight
  (``reregister.lua``, a no-op for a reservation Redis still has);
* a counter rebuild waits while the companion key lives (``wait_for_reregistration``),
  so by the time anything is admitted against the rebuilt counters, every live worker has
  put its reservations back.

The bound that remains: a worker stalled for longer than ``REDIS_REREGISTER_SECONDS``
(CPU starved, or cut off from Redis alone) re-registers late, and until then admission
may take up to that worker's reservations in flight beyond the budget.

The keeper also probes Redis after an outage (through ``config.redis``, whose back-off
it shares), catches the worker up once Redis answers (``counters.recover``), and retries
the settles Redis could not take.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import connection as db_connection

from billing.admission import connection, keys, scripts

log = logging.getLogger("billing.admission")

BOOT_FRESH = keys.BOOT + ":fresh"


@dataclass(frozen=True)
class InFlight:
    """What re-registering a call's reservation needs."""

    request_id: str
    tenant_id: int
    api_key_id: int | None
    amount: int  # micro-dollars
    tokens: int
    deadline: float
    record: str  # JSON
    key_tokens: str  # the token windows it counted in
    tenant_tokens: str


@dataclass(frozen=True)
class Unsettled:
    """A settle Redis could not take; retried when Redis answers."""

    request_id: str
    tenant_id: int
    api_key_id: int | None
    month: str
    cost: int  # micro-dollars
    tokens: int
    counted: bool


_lock = threading.Lock()
_calls: dict[str, InFlight] = {}
_unsettled: dict[str, Unsettled] = {}
_listed: set[int] = set()  # tenants this worker put in TENANTS_WITH_RESERVATIONS since the boot it knows
_boot: bytes | None = None
_keeper: threading.Thread | None = None
_keeper_pid = 0
_keeper_epoch = 0  # reset() ends the running keeper (tests); the next admission starts one
_keeper_started = -1  # the epoch of the keeper last started


def grace() -> float:
    return float(settings.TOLLWAY["REDIS_REREGISTER_SECONDS"])


def worker() -> str:
    from billing.spool import worker_id  # billing.spool imports this package

    return worker_id()


def add(call: InFlight) -> None:
    with _lock:
        _calls[call.request_id] = call
        first = call.tenant_id not in _listed
        _listed.add(call.tenant_id)
    if first:  # once per tenant per boot: the sweeper finds the tenant's deadlines through it
        connection.client().sadd(keys.TENANTS_WITH_RESERVATIONS, call.tenant_id)


def forget(request_id: str) -> None:
    """The call settles: from now on the keeper never puts its reservation back."""
    with _lock:
        _calls.pop(request_id, None)
        _unsettled.pop(request_id, None)


def retry_later(settle: Unsettled) -> None:
    with _lock:
        _unsettled[settle.request_id] = settle


def in_flight() -> list[InFlight]:
    with _lock:
        return list(_calls.values())


def reset() -> None:
    """Forget everything, and stop the keeper until the next admission (tests)."""
    global _boot, _keeper_epoch
    _keeper_epoch += 1
    with _lock:
        _calls.clear()
        _unsettled.clear()
        _listed.clear()
        _boot = None


# --- the boot mark --------------------------------------------------------------------------


def boot_mark() -> bytes:
    """Redis's boot mark, set now (with its companion) if Redis has none: it lost its memory."""
    client = connection.client()
    value = client.get(keys.BOOT)
    if value is None:
        token = uuid.uuid4().hex
        if client.set(keys.BOOT, token, nx=True):
            client.set(BOOT_FRESH, token, px=max(int(grace() * 1000), 1))
            log.warning("admission: Redis has no boot mark (restarted without its data?); calls in flight re-register")
        value = client.get(keys.BOOT) or token.encode()
    return bytes(value)


def wait_for_reregistration() -> None:
    """Before counters are rebuilt: if Redis just lost its memory, wait until every live
    worker's keeper has seen it and put its calls in flight back."""
    boot_mark()
    left = connection.client().pttl(BOOT_FRESH)
    if left and left > 0:
        time.sleep(min(left / 1000, grace()))
    if _boot != boot_mark():  # this worker's own calls, without waiting for its keeper
        keep_once()


def reregister(calls: list[InFlight]) -> int:
    hold = int(settings.TOLLWAY["RESERVATION_SECONDS"]) + 3600
    me, put_back = worker(), 0
    client = connection.client()
    for call in calls:
        t, k = call.tenant_id, keys.key_subject(call.api_key_id)
        put_back += scripts.REREGISTER(
            keys={
                "reservation": keys.reservation(t, call.request_id),
                "deadlines": keys.deadlines(t),
                "tenant_resv": keys.held(t, "t"),
                "key_resv": keys.held(t, k),
                "tenant_cc": keys.concurrent(t, "t"),
                "key_cc": keys.concurrent(t, k),
                "key_tok": call.key_tokens,
                "tenant_tok": call.tenant_tokens,
            },
            args={
                "amount": call.amount,
                "tokens": call.tokens,
                "deadline": f"{call.deadline:.3f}",
                "request_id": call.request_id,
                "record": call.record,
                "hold_ttl": hold,
                "worker": me,
            },
        )
    for tenant_id in {call.tenant_id for call in calls}:
        client.sadd(keys.TENANTS_WITH_RESERVATIONS, tenant_id)
    return int(put_back)


# --- the keeper -----------------------------------------------------------------------------


def keep_once() -> None:
    """One round of the keeper. Raises RedisError if Redis cannot be reached."""
    global _boot
    from billing.admission import counters, flow  # both import this module

    boot = boot_mark()  # Redis answers (the shared health state has seen it)
    counters.recover()  # before this worker's requests trust Redis again
    if boot != _boot:
        with _lock:  # settles wait: none can slip between the snapshot and its re-registration
            calls = list(_calls.values())
            _listed.clear()
            put_back = reregister(calls) if calls else 0
            _listed.update(call.tenant_id for call in calls)
            _boot = boot
        if put_back:
            log.warning("admission: re-registered %s reservations in flight after a Redis restart", put_back)
    counters.flush_stale()
    with _lock:
        retries = list(_unsettled.values())
    for u in retries:
        flow.settle_redis(u)


def _keep_forever(epoch: int) -> None:
    while epoch == _keeper_epoch:
        try:
            keep_once()
        except connection.RedisError as exc:
            if connection.outage(exc):
                connection.mark_down(exc, settings.TOLLWAY["LIMITS_ON_REDIS_ERROR"])
            else:
                log.exception("admission keeper: Redis refused a command")
        except Exception:
            log.exception("admission keeper: round failed")
        finally:
            with contextlib.suppress(Exception):
                db_connection.close()  # the recovery's read: back to the pool
        time.sleep(grace() / 4)
        if epoch != _keeper_epoch:
            return


# Whether the keeper still runs is asked at most once a second: under gevent,
# ``Thread.is_alive`` takes a lock, and py-spy put it at 1 % of a call's CPU.
_LIVENESS_EVERY = 1.0
_keeper_seen_alive = 0.0


def ensure_keeper() -> None:
    """Start this process's keeper, once (again after a fork, or within a second of its end)."""
    global _keeper, _keeper_pid, _keeper_started, _keeper_seen_alive
    keeper = _keeper
    if keeper is not None and _keeper_started == _keeper_epoch and _keeper_pid == os.getpid():
        now = time.monotonic()
        if now - _keeper_seen_alive < _LIVENESS_EVERY:
            return
        if keeper.is_alive():
            _keeper_seen_alive = now
            return
    with _lock:
        if _keeper is None or _keeper_pid != os.getpid() or not _keeper.is_alive() or _keeper_started != _keeper_epoch:
            _keeper_pid, _keeper_started = os.getpid(), _keeper_epoch
            _keeper = threading.Thread(
                target=_keep_forever,
                args=(_keeper_epoch,),
                name=f"tollway-admission-keeper-{_keeper_epoch}",
                daemon=True,
            )
            _keeper.start()
