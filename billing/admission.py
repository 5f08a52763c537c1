"""Admission: rate limits and budget reservations, atomic across every process and replica.

One Redis Lua script checks and takes everything a request needs in one round trip:
requests and tokens per minute and concurrent requests (per key and per tenant), and a
reservation of the request's maximum cost against the tenant's monthly budget, the key's
monthly budget and, for a prepaid tenant, its credit balance. Settling turns the
reservation into the actual cost; a failure releases it; the sweeper bills reservations
whose worker died. Both are idempotent per request id: a reservation is released once.

Money in Redis is integer micro-dollars, rounded up, so a reservation never holds less
than the cost. Postgres stays the truth: the ledger and the credit ledger. Spend
counters are rebuilt from them whenever Redis lacks them (a flush, a restart, expiry).

When Redis is unreachable (``TOLLWAY["LIMITS_ON_REDIS_ERROR"]``):
* rate limits fail open, logged (``"open"``), or the request is refused with 503 (``"closed"``);
* budgets fall back to a Postgres row lock on the tenant's account and a ``Reservation``
  row (``"postgres"``), or the request is refused with 503 (``"closed"``).
The embedded default (no Redis at all) always uses the Postgres path for budgets and
counts rate limits per worker process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from redis.exceptions import RedisError

from billing import alerts  # issue 21: spend alerts from the settle path
from billing.ledger import give_back_connection
from billing.models import Account, CreditEntry, Reservation, UsageRecord
from config.cache import TieredCache
from config.errors import ErrorCode, QuotaExceeded, RateLimited, UpstreamError

log = logging.getLogger(__name__)

MICRO = Decimal("0.000001")
DEADLINES = "tw:resv:deadlines"
_WINDOW = 60  # seconds: limits are per minute, in fixed windows aligned to the minute
_COUNTER_TTL = 45 * 24 * 3600  # a month's counters outlive the month

# The clock; tests replace it (as DRF's SimpleRateThrottle.timer).
clock: Callable[[], float] = time.time

# A counter rebuild holds its tenant's lock this long at most; waiters poll this often.
REBUILD_LOCK_SECONDS = 10.0
REBUILD_POLL_SECONDS = 0.02

# After Redis fails, admission uses the fallback for this long before trying Redis again.
REDIS_RETRY_SECONDS = 5.0
_redis_down_until = 0.0


def to_micro(amount: Decimal) -> int:
    """USD to integer micro-dollars, rounded up: a reservation never holds too little."""
    return math.ceil(amount / MICRO)


def from_micro(value: int) -> Decimal:
    return (Decimal(value) * MICRO).quantize(MICRO)


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    concurrent: int | None = None


@dataclass(frozen=True)
class Ask:
    """What one request asks of its tenant's and key's limits."""

    request_id: str
    tenant_id: int
    api_key_id: int | None
    tenant_limits: Limits
    key_limits: Limits
    tokens: int  # the estimated prompt plus the most output it may produce
    amount: Decimal  # the most it can cost, reserved until it settles
    tenant_budget: Decimal | None
    key_budget: Decimal | None
    timezone: str
    record: dict[str, Any]  # what the sweeper needs to bill it if the worker dies

    @property
    def has_money_cap(self) -> bool:
        return self.tenant_budget is not None or self.key_budget is not None or account_of(self.tenant_id).prepaid


@dataclass
class Admission:
    """A taken reservation, and the rate-limit headers to send."""

    request_id: str
    mode: str  # "redis", "postgres" or "none"
    tenant_id: int
    api_key_id: int | None
    month: str
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False


# --- accounts (prepaid or not), cached like keys and routes ---------------------------


@dataclass(frozen=True)
class AccountSnapshot:
    """How a tenant pays and what its plan adds to list price: read on every call, so cached."""

    prepaid: bool
    markup_percent: Decimal = Decimal(0)
    model_markups: tuple[tuple[int, Decimal], ...] = ()

    def markup_for(self, model_pk: int) -> Decimal:
        for pk, markup in self.model_markups:
            if pk == model_pk:
                return markup
        return self.markup_percent


def _load_account(tenant_id: str) -> AccountSnapshot:
    account = Account.objects.filter(tenant_id=int(tenant_id)).select_related("plan").first()
    if account is None:
        return AccountSnapshot(prepaid=False)
    plan = account.plan
    if plan is None:
        return AccountSnapshot(prepaid=account.prepaid)
    return AccountSnapshot(
        prepaid=account.prepaid,
        markup_percent=plan.markup_percent,
        model_markups=tuple(plan.model_markups.values_list("model_id", "markup_percent")),
    )


accounts: TieredCache[AccountSnapshot] = TieredCache("tw:acct", _load_account)


def account_of(tenant_id: int) -> AccountSnapshot:
    return accounts.get(str(tenant_id)) or AccountSnapshot(prepaid=False)


# --- months -----------------------------------------------------------------------------


def month_bounds(tz_name: str, at: float) -> tuple[str, datetime, datetime]:
    """The tenant's billing month containing ``at``: its label and its UTC start and end."""
    tz = zoneinfo.ZoneInfo(tz_name)
    local = datetime.fromtimestamp(at, tz)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return f"{start:%Y-%m}", start.astimezone(UTC), end.astimezone(UTC)


# --- Redis keys -----------------------------------------------------------------------


def _keys(ask_tenant: int, ask_key: int | None, month: str, minute: int, request_id: str) -> list[str]:
    t, k = f"t{ask_tenant}", f"k{ask_key or 0}"
    return [
        f"tw:rl:{k}:{minute}:req",
        f"tw:rl:{k}:{minute}:tok",
        f"tw:rl:{t}:{minute}:req",
        f"tw:rl:{t}:{minute}:tok",
        f"tw:cc:{k}",
        f"tw:cc:{t}",
        f"tw:spent:{t}:{month}",
        f"tw:spent:{k}:{month}",
        f"tw:resv:{t}",
        f"tw:resv:{k}",
        f"tw:credit:{t}",
        f"tw:resv:req:{request_id}",
        DEADLINES,
        f"tw:init:{t}:{month}",
        f"tw:init:{k}:{month}",
    ]


_ADMIT = """
local function num(k) return tonumber(redis.call('GET', k) or '0') end
local tokens, amount = tonumber(ARGV[7]), tonumber(ARGV[8])
local t_budget, k_budget, prepaid = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11] == '1'
if ARGV[16] == '1' then
  if (t_budget >= 0 or prepaid) and redis.call('EXISTS', KEYS[14]) == 0 then return {'init'} end
  if k_budget >= 0 and redis.call('EXISTS', KEYS[15]) == 0 then return {'init'} end
end
local windows = {
  {KEYS[1], tonumber(ARGV[1]), 1, 'key_requests'}, {KEYS[2], tonumber(ARGV[2]), tokens, 'key_tokens'},
  {KEYS[3], tonumber(ARGV[3]), 1, 'tenant_requests'}, {KEYS[4], tonumber(ARGV[4]), tokens, 'tenant_tokens'}}
for _, w in ipairs(windows) do
  local used = num(w[1])
  if w[2] > 0 and used + w[3] > w[2] then return {'rate', w[4], tostring(w[2]), tostring(used)} end
end
local k_cc, t_cc = tonumber(ARGV[5]), tonumber(ARGV[6])
if k_cc > 0 and num(KEYS[5]) + 1 > k_cc then
  return {'rate', 'key_concurrent', tostring(k_cc), tostring(num(KEYS[5]))} end
if t_cc > 0 and num(KEYS[6]) + 1 > t_cc then
  return {'rate', 'tenant_concurrent', tostring(t_cc), tostring(num(KEYS[6]))} end
if t_budget >= 0 and num(KEYS[7]) + num(KEYS[9]) + amount > t_budget then
  return {'quota', 'tenant_budget', tostring(t_budget - num(KEYS[7]) - num(KEYS[9]))} end
if k_budget >= 0 and num(KEYS[8]) + num(KEYS[10]) + amount > k_budget then
  return {'quota', 'key_budget', tostring(k_budget - num(KEYS[8]) - num(KEYS[10]))} end
if prepaid and num(KEYS[11]) - num(KEYS[9]) - amount < 0 then
  return {'quota', 'credit', tostring(num(KEYS[11]) - num(KEYS[9]))} end
local ttl = tonumber(ARGV[12])
local counts = {}
for i, w in ipairs(windows) do
  counts[i] = tostring(redis.call('INCRBY', w[1], w[3]))
  redis.call('EXPIRE', w[1], ttl)
end
local hold = tonumber(ARGV[17])
for _, k in ipairs({KEYS[5], KEYS[6]}) do redis.call('INCR', k); redis.call('EXPIRE', k, hold) end
for _, k in ipairs({KEYS[9], KEYS[10]}) do redis.call('INCRBY', k, amount); redis.call('EXPIRE', k, hold) end
redis.call('HSET', KEYS[12], 'amount', amount, 'tokens', tokens, 'k_tok', KEYS[2], 't_tok', KEYS[4],
  'k_cc', KEYS[5], 't_cc', KEYS[6], 't_resv', KEYS[9], 'k_resv', KEYS[10], 'record', ARGV[15])
redis.call('EXPIRE', KEYS[12], hold)
redis.call('ZADD', KEYS[13], ARGV[13], ARGV[14])
return {'ok', counts[1], counts[2], counts[3], counts[4]}
"""

# KEYS: reservation hash, deadlines, tenant spent, key spent, tenant credit
# ARGV: request id, actual micro-dollars, actual tokens, count the spend (1/0)
# Returns: {settled 1/0, tenant spent after (micro-dollars or 'x'), credit after (or 'x')}
_SETTLE = """
local actual, count = tonumber(ARGV[2]), ARGV[4] == '1'
-- issue 21 (spend alerts): spend() returns the tenant's spend and credit after, 'x' if unknown
local function spend()
  local spent, credit = 'x', 'x'
  if not count then return {spent, credit} end
  if redis.call('EXISTS', KEYS[3]) == 1 then spent = tostring(redis.call('INCRBY', KEYS[3], actual)) end
  if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('INCRBY', KEYS[4], actual) end
  if redis.call('EXISTS', KEYS[5]) == 1 then credit = tostring(redis.call('DECRBY', KEYS[5], actual)) end
  return {spent, credit}
end
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then local after = spend(); return {0, after[1], after[2]} end
local h = redis.call('HGETALL', KEYS[1])
local r = {}
for i = 1, #h, 2 do r[h[i]] = h[i + 1] end
local amount = tonumber(r['amount'])
for _, k in ipairs({r['t_resv'], r['k_resv']}) do
  if tonumber(redis.call('GET', k) or '0') >= amount then
    redis.call('DECRBY', k, amount)
  else
    redis.call('SET', k, 0)
  end
end
for _, k in ipairs({r['k_cc'], r['t_cc']}) do
  if tonumber(redis.call('GET', k) or '0') > 0 then redis.call('DECR', k) end
end
local correction = tonumber(ARGV[3]) - tonumber(r['tokens'])
for _, k in ipairs({r['k_tok'], r['t_tok']}) do
  if redis.call('EXISTS', k) == 1 then redis.call('INCRBY', k, correction) end
end
redis.call('DEL', KEYS[1])
local after = spend()
return {1, after[1], after[2]}
"""

# KEYS: value key, flag key; ARGV: value, ttl
_INIT = """
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
return 1
"""

# KEYS: lock; ARGV: holder. Deletes the lock only if this holder still has it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _redis() -> Any:
    from django_redis import get_redis_connection

    return get_redis_connection("default")


_scripts: dict[str, Any] = {}


def _script(name: str, source: str) -> Any:
    if name not in _scripts:
        _scripts[name] = _redis().register_script(source)
    return _scripts[name]


# --- admission -------------------------------------------------------------------------


def admit(ask: Ask) -> Admission:
    """Take what ``ask`` needs, or raise RateLimited / QuotaExceeded. Never half-takes."""
    now = clock()
    month, start, end = month_bounds(ask.timezone, now)
    if not settings.REDIS_URL:
        _local_rate_limits(ask, now)
        return _admit_postgres(ask, month, start, end) if ask.has_money_cap else _none(ask, month)
    global _redis_down_until
    try:
        if time.monotonic() < _redis_down_until:
            raise RedisError("marked down after a recent failure")
        return _admit_redis(ask, now, month, start, end)
    except RedisError as exc:
        policy = settings.TOLLWAY["LIMITS_ON_REDIS_ERROR"]
        if time.monotonic() >= _redis_down_until:
            # Stop waiting on a dead Redis for a while: every request would pay its timeouts.
            _redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
            log.error("admission: Redis unreachable (%r); policy %s for %ss", exc, policy, REDIS_RETRY_SECONDS)
        if policy == "closed":
            raise UpstreamError(
                "Tollway cannot check limits right now; retry shortly.", code=ErrorCode.LIMITS_UNAVAILABLE, status=503
            ) from None
        # Rate limits fail open; budgets keep holding through Postgres row locks.
        return _admit_postgres(ask, month, start, end) if ask.has_money_cap else _none(ask, month)


def _none(ask: Ask, month: str) -> Admission:
    return Admission(ask.request_id, "none", ask.tenant_id, ask.api_key_id, month)


def _admit_redis(ask: Ask, now: float, month: str, start: datetime, end: datetime) -> Admission:
    minute = int(now // _WINDOW)
    keys = _keys(ask.tenant_id, ask.api_key_id, month, minute, ask.request_id)
    prepaid = account_of(ask.tenant_id).prepaid
    deadline = now + settings.TOLLWAY["RESERVATION_SECONDS"]
    argv = [
        ask.key_limits.rpm or 0,
        ask.key_limits.tpm or 0,
        ask.tenant_limits.rpm or 0,
        ask.tenant_limits.tpm or 0,
        ask.key_limits.concurrent or 0,
        ask.tenant_limits.concurrent or 0,
        ask.tokens,
        to_micro(ask.amount),
        -1 if ask.tenant_budget is None else to_micro(ask.tenant_budget),
        -1 if ask.key_budget is None or ask.api_key_id is None else to_micro(ask.key_budget),
        1 if prepaid else 0,
        _WINDOW * 2,
        f"{deadline:.3f}",
        ask.request_id,
        json.dumps(ask.record),
        1 if ask.has_money_cap else 0,
        int(settings.TOLLWAY["RESERVATION_SECONDS"]) + 3600,
    ]
    script = _script("admit", _ADMIT)
    result = [_text(x) for x in script(keys=keys, args=argv)]
    if result[0] == "init":
        result = _admit_after_rebuild(ask, month, start, end, keys, prepaid, lambda: script(keys=keys, args=argv))
    if result[0] == "rate":
        raise _rate_error(result[1], int(result[2]), int(result[3]), ask, now)
    if result[0] == "quota":
        raise _quota_error(result[1], from_micro(max(int(float(result[2])), 0)))
    if result[0] != "ok":
        raise RuntimeError(f"admission script answered {result!r}")
    counts = [int(x) for x in result[1:5]]
    return Admission(ask.request_id, "redis", ask.tenant_id, ask.api_key_id, month, headers=_headers(ask, counts, now))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _admit_after_rebuild(
    ask: Ask, month: str, start: datetime, end: datetime, keys: list[str], prepaid: bool, run: Callable[[], Any]
) -> list[str]:
    """Admission once the counters are back, with one rebuild per tenant at a time.

    After a flush, every request in flight finds the counters missing at once. Each
    rebuild sums the month's ledger, so one request per tenant takes a short Redis lock
    and rebuilds; the others poll until the counters are there. If the rebuilder dies,
    its lock expires and the next waiter rebuilds.
    """
    lock = f"tw:rebuild:t{ask.tenant_id}:{month}"
    give_up = time.monotonic() + 2 * REBUILD_LOCK_SECONDS
    while True:
        if _redis().set(lock, ask.request_id, nx=True, px=int(REBUILD_LOCK_SECONDS * 1000)):
            try:
                _rebuild(ask, month, start, end, keys, prepaid)
            finally:
                _script("unlock", _UNLOCK)(keys=[lock], args=[ask.request_id])
        elif time.monotonic() > give_up:  # the lock outlived any rebuild: do it unlocked
            _rebuild(ask, month, start, end, keys, prepaid)
        else:
            give_back_connection()  # the rebuilder needs one from the same pool
            time.sleep(REBUILD_POLL_SECONDS)
        result = [_text(x) for x in run()]
        if result[0] != "init":
            return result


def _rebuild(ask: Ask, month: str, start: datetime, end: datetime, keys: list[str], prepaid: bool) -> None:
    """Counters Redis lacks, recomputed from the ledgers in Postgres."""
    script = _script("init", _INIT)
    month_rows = UsageRecord.objects.filter(tenant_id=ask.tenant_id, created_at__gte=start, created_at__lt=end)
    tenant_spent = month_rows.aggregate(s=Sum("cost"))["s"] or Decimal(0)
    script(keys=[keys[6], keys[13]], args=[to_micro(tenant_spent), _COUNTER_TTL])
    if ask.api_key_id is not None:
        key_spent = month_rows.filter(api_key_id=ask.api_key_id).aggregate(s=Sum("cost"))["s"] or Decimal(0)
        script(keys=[keys[7], keys[14]], args=[to_micro(key_spent), _COUNTER_TTL])
    if prepaid:
        # Rounding the balance down keeps the check on the safe side.
        balance = credit_balance(ask.tenant_id)
        _redis().set(keys[10], math.floor(balance / MICRO), nx=True, ex=_COUNTER_TTL)
    log.info("admission: rebuilt counters for tenant %s, %s", ask.tenant_id, month)


def credit_balance(tenant_id: int) -> Decimal:
    credits = CreditEntry.objects.filter(tenant_id=tenant_id).aggregate(s=Sum("amount_usd"))["s"] or Decimal(0)
    spent = UsageRecord.objects.filter(tenant_id=tenant_id).aggregate(s=Sum("cost"))["s"] or Decimal(0)
    return credits - spent


def forget_counters(tenant_id: int) -> None:
    """Drop a tenant's cached credit balance, so the next admission rebuilds it."""
    if settings.REDIS_URL:
        try:
            _redis().delete(f"tw:credit:t{tenant_id}")
            for flag in _redis().scan_iter(f"tw:init:t{tenant_id}:*"):
                _redis().delete(flag)
        except RedisError as exc:
            log.error("admission: could not reset counters for tenant %s: %r", tenant_id, exc)


# --- the Postgres path ----------------------------------------------------------------


def _admit_postgres(ask: Ask, month: str, start: datetime, end: datetime) -> Admission:
    """Budgets held by a row lock on the tenant's account, with the reservation in Postgres."""
    with transaction.atomic():
        account = Account.objects.select_for_update().filter(tenant_id=ask.tenant_id).first()
        if account is None:
            Account.objects.get_or_create(tenant_id=ask.tenant_id)
            account = Account.objects.select_for_update().get(tenant_id=ask.tenant_id)
        month_rows = UsageRecord.objects.filter(tenant_id=ask.tenant_id, created_at__gte=start, created_at__lt=end)
        held = Reservation.objects.filter(tenant_id=ask.tenant_id)

        def total(qs: Any, column: str) -> Decimal:
            return qs.aggregate(s=Sum(column))["s"] or Decimal(0)

        if ask.tenant_budget is not None:
            left = ask.tenant_budget - total(month_rows, "cost") - total(held, "amount_usd")
            if ask.amount > left:
                raise _quota_error("tenant_budget", max(left, Decimal(0)))
        if ask.key_budget is not None and ask.api_key_id is not None:
            left = (
                ask.key_budget
                - total(month_rows.filter(api_key_id=ask.api_key_id), "cost")
                - total(held.filter(api_key_id=ask.api_key_id), "amount_usd")
            )
            if ask.amount > left:
                raise _quota_error("key_budget", max(left, Decimal(0)))
        if account.prepaid:
            left = credit_balance(ask.tenant_id) - total(held, "amount_usd")
            if ask.amount > left:
                raise _quota_error("credit", max(left, Decimal(0)))
        Reservation.objects.create(
            request_id=ask.request_id,
            tenant_id=ask.tenant_id,
            api_key_id=ask.api_key_id,
            month=month,
            amount_usd=ask.amount,
            record=ask.record,
            deadline=datetime.fromtimestamp(clock() + settings.TOLLWAY["RESERVATION_SECONDS"], UTC),
        )
    return Admission(ask.request_id, "postgres", ask.tenant_id, ask.api_key_id, month)


# --- settling --------------------------------------------------------------------------


def settle(admission: Admission, *, cost: Decimal, tokens: int, counted: bool) -> None:
    """Turn the reservation into the actual ``cost``. ``counted`` says this call's ledger
    row was just written, so its cost joins the spend counters. Idempotent."""
    if admission.settled:
        return
    admission.settled = True
    _settle(
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


def _settle(
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
        return
    if mode != "redis":
        return
    try:
        after = _script("settle", _SETTLE)(
            keys=[
                f"tw:resv:req:{request_id}",
                DEADLINES,
                f"tw:spent:t{tenant_id}:{month}",
                f"tw:spent:k{api_key_id or 0}:{month}",
                f"tw:credit:t{tenant_id}",
            ],
            args=[request_id, to_micro(cost), tokens, 1 if counted else 0],
        )
    except RedisError as exc:
        # The sweeper settles it later from the deadline set; the ledger row is already written.
        log.error("admission: settle of %s failed: %r", request_id, exc)
        return
    if counted:  # issue 21: spend alerts, from the counters the script just moved (no query)
        alerts.spend_settled_redis(tenant_id=tenant_id, month=month, result=after, cost=cost)


# --- rate limits without Redis (the embedded default) --------------------------------

_local_lock = threading.Lock()
_local_counts: dict[tuple[str, int], int] = {}


def _local_rate_limits(ask: Ask, now: float) -> None:
    """Per-process fixed windows: the embedded default's stand-in for the Redis script."""
    minute = int(now // _WINDOW)
    subjects = [
        (f"k{ask.api_key_id}:req", ask.key_limits.rpm, 1, "key_requests"),
        (f"k{ask.api_key_id}:tok", ask.key_limits.tpm, ask.tokens, "key_tokens"),
        (f"t{ask.tenant_id}:req", ask.tenant_limits.rpm, 1, "tenant_requests"),
        (f"t{ask.tenant_id}:tok", ask.tenant_limits.tpm, ask.tokens, "tenant_tokens"),
    ]
    with _local_lock:
        for name, limit, inc, what in subjects:
            used = _local_counts.get((name, minute), 0)
            if limit and used + inc > limit:
                raise _rate_error(what, limit, used, ask, now)
        if len(_local_counts) > 100_000:
            _local_counts.clear()
        for name, _, inc, _ in subjects:
            _local_counts[(name, minute)] = _local_counts.get((name, minute), 0) + inc


# --- answers ---------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s"


def _headers(ask: Ask, counts: list[int], now: float) -> dict[str, str]:
    reset = _duration(_WINDOW - now % _WINDOW)
    headers: dict[str, str] = {}
    for kind, (key_limit, key_used), (tenant_limit, tenant_used) in (
        ("requests", (ask.key_limits.rpm, counts[0]), (ask.tenant_limits.rpm, counts[2])),
        ("tokens", (ask.key_limits.tpm, counts[1]), (ask.tenant_limits.tpm, counts[3])),
    ):
        # Report whichever limit binds more tightly.
        options = [
            (limit - used, limit) for limit, used in ((key_limit, key_used), (tenant_limit, tenant_used)) if limit
        ]
        if options:
            remaining, limit = min(options)
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(remaining, 0))
            headers[f"x-ratelimit-reset-{kind}"] = reset
    return headers


_SUBJECTS = {
    "key_requests": ("requests", "requests per minute (RPM) for this key"),
    "key_tokens": ("tokens", "tokens per minute (TPM) for this key"),
    "tenant_requests": ("requests", "requests per minute (RPM) for this tenant"),
    "tenant_tokens": ("tokens", "tokens per minute (TPM) for this tenant"),
    "key_concurrent": ("requests", "concurrent requests for this key"),
    "tenant_concurrent": ("requests", "concurrent requests for this tenant"),
}


def _rate_error(what: str, limit: int, used: int, ask: Ask, now: float) -> RateLimited:
    kind, label = _SUBJECTS[what]
    concurrent = what.endswith("concurrent")
    wait = 1 if concurrent else math.ceil(_WINDOW - now % _WINDOW)
    requested = ask.tokens if kind == "tokens" else 1
    return RateLimited(
        f"Rate limit reached on {label}: limit {limit}, used {used}, requested {requested}. "
        f"Please try again in {wait}s.",
        type=kind,
        headers={"Retry-After": str(wait)},
    )


_QUOTAS = {
    "tenant_budget": "This tenant's monthly budget is used up",
    "key_budget": "This API key's monthly budget is used up",
    "credit": "This tenant's prepaid credit is used up",
}


def _quota_error(what: str, left: Decimal) -> QuotaExceeded:
    error = QuotaExceeded(
        f"{_QUOTAS[what]}: ${left.quantize(MICRO)} is left, less than this request could cost. "
        "Raise the budget, top up credit, or lower max_tokens."
    )
    error.limit = what  # issue 21: which limit, for billing.alerts
    return error


# --- the sweeper -----------------------------------------------------------------------


def sweep(now: float | None = None, batch: int = 500) -> int:
    """Bill every reservation whose deadline has passed (its worker died), from the
    reservation's own estimate, and release it. Returns how many were billed."""
    from billing.ledger import usage_record_from_reservation

    now = clock() if now is None else now
    billed = 0
    if settings.REDIS_URL:
        redis = _redis()
        for raw in redis.zrangebyscore(DEADLINES, "-inf", now, start=0, num=batch):
            request_id = _text(raw)
            record_json = redis.hget(f"tw:resv:req:{request_id}", "record")
            if record_json is None:
                redis.zrem(DEADLINES, request_id)
                continue
            record = json.loads(record_json)
            cost, inserted = usage_record_from_reservation(request_id=request_id, record=record)
            month, _, _ = month_bounds(record["timezone"], datetime.fromisoformat(record["created_at"]).timestamp())
            _settle(
                request_id,
                record["tenant_id"],
                record["api_key_id"],
                month,
                "redis",
                cost=cost,
                tokens=record["input_tokens"] + record["output_tokens"],
                counted=inserted,
            )
            billed += int(inserted)
    for reservation in Reservation.objects.filter(deadline__lte=datetime.fromtimestamp(now, UTC))[:batch]:
        _, inserted = usage_record_from_reservation(request_id=reservation.request_id, record=reservation.record)
        reservation.delete()
        billed += int(inserted)
    return billed


def reserved_total(tenant_id: int) -> Decimal:
    """What the tenant's in-flight requests hold right now, in Redis and in Postgres."""
    held = Reservation.objects.filter(tenant_id=tenant_id).aggregate(s=Sum("amount_usd"))["s"] or Decimal(0)
    if settings.REDIS_URL:
        with contextlib.suppress(RedisError):
            held += from_micro(int(_redis().get(f"tw:resv:t{tenant_id}") or 0))
    return held


def reservation_forget(*, request_id: str, tenant_id: int, api_key_id: int | None) -> None:
    """Give back a reservation a dead worker left for ``request_id``, before the same
    request is run again under that id (a Batch API line resumed after its worker was
    killed): the new attempt takes its own, and the old one must not stay held until the
    sweeper. Never bills: a row the dead attempt wrote stands, and the new one is not added."""
    if settings.REDIS_URL:
        try:
            _settle(request_id, tenant_id, api_key_id, "", "redis", cost=Decimal(0), tokens=0, counted=False)
        except RedisError as exc:
            log.warning("admission: could not forget reservation %s: %r", request_id, exc)
    Reservation.objects.filter(request_id=request_id).delete()
