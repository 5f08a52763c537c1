"""The money counters in Redis, and how they never drift from Postgres.

Postgres is the truth: the ledger, the credit ledger, and the reservations admitted while
Redis was unreachable. Redis keeps, per tenant, the month's spend of the tenant and of
each key and the prepaid balance, so admission needs no query.

**Generations.** Each tenant has a counter generation in Redis (``tw:{t<id>}:gen``), and
each counter carries the generation it was built at (``…:built``). Admission trusts a
counter only at the current generation; otherwise its script answers ``init`` and the
counter is rebuilt from Postgres first. Anything that may have missed the counters
*invalidates* the tenant (a new generation), so it cannot be forgotten:

* admission through the Postgres fallback, and every settle made without Redis (the
  Postgres path, a tenant without a budget while Redis was down, a settle whose script
  failed, a reservation the sweeper billed), call :func:`mark_stale`. The mark is kept in
  this worker's memory, and durably as a ``StaleCounters`` row (once per tenant every few
  seconds; only ever while Redis fails, never on a healthy call);
* as soon as Redis answers again, the worker invalidates the tenants it marked
  (:func:`flush_stale`, from its keeper and before its next admission);
* the sweeper (every minute) invalidates the tenants of every ``StaleCounters`` row and
  deletes the rows it handled: a worker that died before it could is covered too;
* a change to the account or the credit ledger invalidates at once (:func:`invalidate`).

**Rebuilds without a lost update.** A rebuild opens a *pending* total per counter
(``rebuild_begin.lua``), sums the ledger, and writes sum + pending (``rebuild_end.lua``).
Every settle from the opening on adds to the pending total, so a ledger row committed
after the sum is still counted; a row both summed and pending counts twice, on the safe
side, until the next rebuild. One request per tenant rebuilds (a short Redis lock); the
others wait for it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from billing.admission import connection as redis_connection
from billing.admission import inflight, keys, scripts
from billing.admission.accounts import credit_balance
from billing.admission.reservation import Ask
from billing.admission.units import COUNTER_TTL, MICRO, to_micro
from billing.ledger import give_back_connection
from billing.models import Reservation, StaleCounters, UsageRecord

log = logging.getLogger("billing.admission")

# A counter rebuild holds its tenant's lock this long at most; waiters poll this often.
REBUILD_LOCK_SECONDS = 10.0
REBUILD_POLL_SECONDS = 0.02
PENDING_SECONDS = 120  # a rebuild's pending totals outlive any rebuild
# A tenant already marked is marked durably again after this long (a long outage).
REMARK_SECONDS = 5.0
# The sweeper leaves a fresh mark to the worker that made it, this long.
RECONCILE_AFTER_SECONDS = 10.0

_lock = threading.Lock()
_stale: dict[int, float] = {}  # tenant -> when this worker last marked it durably (monotonic)


# --- marking and invalidating ------------------------------------------------------------


def mark_stale(tenant_id: int) -> None:
    """Admission or a settle ran without Redis for ``tenant_id``: its Redis counters may
    miss it. Remembered here and in Postgres; the counters are invalidated when Redis answers."""
    if not settings.REDIS_URL:
        return  # no Redis counters to keep in step (the embedded default)
    with _lock:
        last = _stale.get(tenant_id)
        due = last is None or time.monotonic() - last > REMARK_SECONDS
        _stale[tenant_id] = time.monotonic() if due else last  # type: ignore[assignment]  # last is set when not due
    if due:
        _mark_durably(tenant_id)


def _mark_durably(tenant_id: int) -> None:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO billing_stalecounters (tenant_id, generation, since) VALUES (%s, 1, %s) "
                "ON CONFLICT (tenant_id) DO UPDATE SET generation = billing_stalecounters.generation + 1",
                [tenant_id, timezone.now()],
            )
    except DatabaseError as exc:  # Postgres is down too: this worker's own mark still holds
        log.error("admission: could not record stale counters of tenant %s: %r", tenant_id, exc)


def stale_tenants() -> list[int]:
    with _lock:
        return list(_stale)


def invalidate(tenant_id: int) -> None:
    """Make every Redis money counter of ``tenant_id`` stale: rebuilt before it is used."""
    scripts.INVALIDATE(keys={"generation": keys.generation(tenant_id)})


def flush_stale() -> None:
    """Invalidate the tenants this worker marked, now that Redis answers. Raises RedisError."""
    if not _stale:
        return
    for tenant_id in stale_tenants():
        invalidate(tenant_id)
        with _lock:
            _stale.pop(tenant_id, None)
        log.warning("admission: counters of tenant %s invalidated after running without Redis", tenant_id)


_recover_lock = threading.Lock()


def recover() -> None:
    """After an outage, before this worker trusts Redis again: invalidate the tenants it
    marked, and those every other worker marked durably (a worker may come back before
    the one that marked a tenant does). A read of a few rows, only after an outage.
    Raises RedisError (or DatabaseError) if it cannot; it is tried again."""
    if redis_connection.recovered():
        return
    with _recover_lock:
        if redis_connection.recovered():
            return
        flush_stale()
        try:
            marked = list(StaleCounters.objects.values_list("tenant_id", flat=True))
        except DatabaseError as exc:  # Postgres is down too: this worker's own marks are flushed
            log.error("admission: could not read the stale counters after an outage: %r", exc)
            marked = []
        for tenant_id in marked:
            invalidate(tenant_id)
        redis_connection.mark_recovered()


def reconcile() -> int:
    """The sweeper's half: invalidate every tenant marked durably (and not just now), then
    drop its mark, unless it was marked again meanwhile. Returns the tenants handled."""
    handled = 0
    cutoff = timezone.now() - timedelta(seconds=RECONCILE_AFTER_SECONDS)
    for tenant_id, generation in StaleCounters.objects.filter(since__lte=cutoff).values_list("tenant_id", "generation"):
        invalidate(tenant_id)
        StaleCounters.objects.filter(tenant_id=tenant_id, generation=generation).delete()
        handled += 1
    return handled


def forget_counters(tenant_id: int) -> None:
    """The account or the credit ledger changed: rebuild the tenant's counters before the
    next admission."""
    if settings.REDIS_URL:
        try:
            invalidate(tenant_id)
        except redis_connection.RedisError as exc:
            log.error("admission: could not reset counters for tenant %s: %r", tenant_id, exc)
            mark_stale(tenant_id)


def reset() -> None:
    """Forget this worker's marks (tests)."""
    with _lock:
        _stale.clear()


# --- rebuilding ---------------------------------------------------------------------------


def _total(qs: Any, column: str) -> Decimal:
    return qs.aggregate(s=Sum(column))["s"] or Decimal(0)


def rebuild(ask: Ask, month: str, start: datetime, end: datetime, prepaid: bool) -> bool:
    """The tenant's money counters (and the key's), recomputed from Postgres. False if the
    tenant was invalidated again meanwhile (rebuild again)."""
    tenant_id = ask.tenant_id
    # After Redis lost its memory, give every worker the time to put back its calls in
    # flight before admitting against the counters (billing.admission.inflight).
    inflight.wait_for_reregistration()
    counters: list[tuple[str, int]] = []  # (counter key, sign): +1 a spend, -1 a balance
    counters.append((keys.spent(tenant_id, "t", month), 1))
    if ask.api_key_id is not None:
        counters.append((keys.spent(tenant_id, keys.key_subject(ask.api_key_id), month), 1))
    if prepaid:
        counters.append((keys.credit(tenant_id), -1))
    built_at = _text(
        scripts.REBUILD_BEGIN(
            keys={"generation": keys.generation(tenant_id)},
            args={"ttl": PENDING_SECONDS},
            keys_tail=[keys.pending(c) for c, _ in counters],
        )
    )
    # Summed after the pending totals opened: nothing settled from here on can be missed.
    month_rows = UsageRecord.objects.filter(tenant_id=tenant_id, created_at__gte=start, created_at__lt=end)
    held = Reservation.objects.filter(tenant_id=tenant_id)  # admitted by the Postgres fallback, in flight
    values = [to_micro(_total(month_rows, "cost") + _total(held, "amount_usd"))]
    if ask.api_key_id is not None:
        values.append(
            to_micro(
                _total(month_rows.filter(api_key_id=ask.api_key_id), "cost")
                + _total(held.filter(api_key_id=ask.api_key_id), "amount_usd")
            )
        )
    if prepaid:
        # Rounding the balance down keeps the check on the safe side.
        values.append(math.floor((credit_balance(tenant_id) - _total(held, "amount_usd")) / MICRO))
    tail_keys: list[str] = []
    tail_args: list[Any] = []
    for (counter, sign), value in zip(counters, values, strict=True):
        tail_keys += [counter, keys.built(counter), keys.pending(counter)]
        tail_args += [max(min(value, scripts.LUA_INT_MAX), -scripts.LUA_INT_MAX), sign]
    done = scripts.REBUILD_END(
        keys={"generation": keys.generation(tenant_id)},
        args={"built_at": built_at, "ttl": COUNTER_TTL},
        keys_tail=tail_keys,
        args_tail=tail_args,
    )
    if done:
        log.info("admission: rebuilt counters of tenant %s, %s, generation %s", tenant_id, month, built_at)
    return bool(done)


def admit_after_rebuild(
    ask: Ask, month: str, start: datetime, end: datetime, prepaid: bool, run: Callable[[], list[str]]
) -> list[str]:
    """Admission once the counters are back, with one rebuild per tenant at a time.

    After a flush or an invalidation, every request in flight finds the counters stale at
    once. Each rebuild sums the month's ledger, so one request per tenant takes a short
    Redis lock and rebuilds; the others poll until the counters are there. If the
    rebuilder dies, its lock expires and the next waiter rebuilds.
    """
    client = redis_connection.client()
    lock = keys.rebuild_lock(ask.tenant_id)
    give_up = time.monotonic() + 2 * REBUILD_LOCK_SECONDS
    while True:
        if client.set(lock, ask.request_id, nx=True, px=int(REBUILD_LOCK_SECONDS * 1000)):
            try:
                # The lock may be free because a rebuild just ended, after this request
                # last found the counters missing: look again before summing the ledger.
                result = run()
                if result[0] != "init":
                    return result
                rebuild(ask, month, start, end, prepaid)
            finally:
                scripts.UNLOCK(keys={"lock": lock}, args={"holder": ask.request_id})
        elif time.monotonic() > give_up:  # the lock outlived any rebuild: do it unlocked
            rebuild(ask, month, start, end, prepaid)
        else:
            give_back_connection()  # the rebuilder needs one from the same pool
            time.sleep(REBUILD_POLL_SECONDS)
        result = run()
        if result[0] != "init":
            return result


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
