"""Admission and settling: which path a request takes (Redis, the Postgres fallback, or
none), and what a Redis failure means.

* Redis answers: ``redis_path``.
* Redis is down (a connection or timeout error, ``connection.outage``): rate limits fail
  open, logged (policy ``"open"``), and budgets hold through the Postgres fallback; or
  everything is refused with 503 (``"closed"``). The tenant's counters are marked stale.
* Anything else from Redis (a script error) is a bug: logged with its traceback, this
  request answers 500 ``internal_error``, and Redis stays in use for everyone else.
"""

from __future__ import annotations

import contextlib
import logging
from decimal import Decimal

from django.conf import settings
from django.db.models import Sum

from billing import alerts  # issue 21: spend alerts from the settle path
from billing.admission import connection, counters, inflight, local, postgres_path, redis_path
from billing.admission.reservation import Admission, Ask
from billing.admission.scripts import ScriptArgumentError
from billing.admission.units import from_micro, month_bounds, now, to_micro
from billing.models import Reservation
from config.errors import ErrorCode, InternalError, UpstreamError

log = logging.getLogger("billing.admission")


def admit(ask: Ask) -> Admission:
    """Take what ``ask`` needs, or raise RateLimited / QuotaExceeded. Never half-takes."""
    at = now()
    month, start, end = month_bounds(ask.timezone, at)
    if not settings.REDIS_URL:
        local.rate_limits(ask, at)
        return postgres_path.admit(ask, month, start, end) if ask.has_money_cap else _none(ask, month)
    policy = settings.TOLLWAY["LIMITS_ON_REDIS_ERROR"]
    if not connection.down():
        inflight.ensure_keeper()
        try:
            counters.recover()
            counters.flush_stale()
            return redis_path.admit(ask, at, month, start, end)
        except connection.RedisError as exc:
            if not connection.outage(exc):
                log.exception("admission: Redis refused request %s (a bug, not an outage)", ask.request_id)
                raise InternalError(ask.request_id) from None
            connection.mark_down(exc, policy)
        except ScriptArgumentError:
            log.exception("admission: request %s would pass a script a value it cannot take", ask.request_id)
            raise InternalError(ask.request_id) from None
    if policy == "closed":
        raise UpstreamError(
            "Tollway cannot check limits right now; retry shortly.", code=ErrorCode.LIMITS_UNAVAILABLE, status=503
        ) from None
    # Rate limits fail open; budgets keep holding through Postgres row locks.
    return postgres_path.admit(ask, month, start, end) if ask.has_money_cap else _none(ask, month)


def _none(ask: Ask, month: str) -> Admission:
    return Admission(ask.request_id, "none", ask.tenant_id, ask.api_key_id, month)


def settle(admission: Admission, *, cost: Decimal, tokens: int, counted: bool) -> None:
    """Turn the reservation into the actual ``cost``. ``counted`` says this call's ledger
    row was just written, so its cost joins the spend counters. Idempotent."""
    if admission.settled:
        return
    admission.settled = True
    settle_any(
        admission.request_id,
        admission.tenant_id,
        admission.api_key_id,
        admission.month,
        admission.mode,
        cost=cost,
        tokens=tokens,
        counted=counted,
    )


def release(admission: Admission) -> None:
    """The call failed before anything billable happened: give the reservation back."""
    settle(admission, cost=Decimal(0), tokens=0, counted=False)


def settle_any(
    request_id: str,
    tenant_id: int,
    api_key_id: int | None,
    month: str,
    mode: str,
    *,
    cost: Decimal,
    tokens: int,
    counted: bool,
) -> None:
    if mode == "postgres":
        Reservation.objects.filter(request_id=request_id).delete()
        if counted:  # issue 21: spend alerts on the Postgres path
            alerts.spend_settled_postgres(tenant_id=tenant_id, month=month, cost=cost)
            counters.mark_stale(tenant_id)
        return
    if mode != "redis":
        if counted:  # admitted without Redis, no reservation: Redis's counters missed it
            counters.mark_stale(tenant_id)
        return
    inflight.forget(request_id)
    unsettled = inflight.Unsettled(request_id, tenant_id, api_key_id, month, to_micro(cost), tokens, counted)
    if connection.down():
        _not_now(unsettled, "Redis is down")
        return
    try:
        after = redis_path.settle(
            request_id, tenant_id, api_key_id, month, cost=unsettled.cost, tokens=tokens, counted=counted
        )
    except (connection.RedisError, ScriptArgumentError) as exc:
        if isinstance(exc, connection.RedisError) and connection.outage(exc):
            connection.mark_down(exc, settings.TOLLWAY["LIMITS_ON_REDIS_ERROR"])
            _not_now(unsettled, repr(exc))
        else:
            log.exception("admission: settle of %s failed (a bug, not an outage)", request_id)
            if counted:
                counters.mark_stale(tenant_id)
        return
    if counted:  # issue 21: spend alerts, from the counters the script just moved (no query)
        alerts.spend_settled_redis(tenant_id=tenant_id, month=month, result=after, cost=cost)


def _not_now(unsettled: inflight.Unsettled, why: str) -> None:
    """The ledger row is written; the keeper settles the reservation when Redis answers
    (or the sweeper, should this worker die). Its cost missed the counters meanwhile."""
    log.error("admission: settle of %s deferred (%s)", unsettled.request_id, why)
    if unsettled.counted:
        counters.mark_stale(unsettled.tenant_id)
    inflight.retry_later(unsettled)


def settle_redis(unsettled: inflight.Unsettled) -> None:
    """A deferred settle, retried by the keeper. Raises RedisError if Redis still fails."""
    redis_path.settle(
        unsettled.request_id,
        unsettled.tenant_id,
        unsettled.api_key_id,
        unsettled.month,
        cost=unsettled.cost,
        tokens=unsettled.tokens,
        counted=unsettled.counted,
    )
    inflight.forget(unsettled.request_id)


def reserved_total(tenant_id: int) -> Decimal:
    """What the tenant's in-flight requests hold right now, in Redis and in Postgres."""
    from billing.admission import keys

    held = Reservation.objects.filter(tenant_id=tenant_id).aggregate(s=Sum("amount_usd"))["s"] or Decimal(0)
    if settings.REDIS_URL and not connection.down():
        with contextlib.suppress(connection.RedisError):
            held += from_micro(int(connection.client().get(keys.held(tenant_id, "t")) or 0))
    return held


def reservation_forget(*, request_id: str, tenant_id: int, api_key_id: int | None) -> None:
    """Give back a reservation a dead worker left for ``request_id``, before the same
    request is run again under that id (a Batch API line resumed after its worker was
    killed): the new attempt takes its own, and the old one must not stay held until the
    sweeper. Never bills: a row the dead attempt wrote stands, and the new one is not added."""
    if settings.REDIS_URL:
        # Not counted, so no month's counter moves: the reservation key alone is released.
        settle_any(request_id, tenant_id, api_key_id, "", "redis", cost=Decimal(0), tokens=0, counted=False)
    Reservation.objects.filter(request_id=request_id).delete()
