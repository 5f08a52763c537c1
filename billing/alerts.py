"""Spend alerts: thresholds of the monthly budget (50/80/100 % by default) and a low prepaid
balance, each sent once per threshold per month, by e-mail and webhook.

Checked on the settle path without adding a database write to a call that crosses
nothing: the settle script already moves the Redis spend counter, and returns it (the Postgres
fallback sums the month instead); :func:`spend_settled` compares before and after against the
thresholds, cached with the budget like the account snapshot (process memory, then Redis).
Only a crossing enqueues ``billing.spend_alert``, whose insert is unique on (tenant, month,
threshold), so calls that cross together send one alert between them.

A request refused for budget also marks the tenant as refusing (the dashboard's banner) and
counts as reaching 100 %, since a reservation keeps spend from ever quite reaching the budget.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction

from config import redis
from config.cache import TieredCache
from config.errors import QuotaExceeded

log = logging.getLogger(__name__)

LOW_BALANCE = "low_balance"
REFUSING_SECONDS = 600
MICRO = Decimal("0.000001")


def thresholds_clean(value: Any) -> list[int]:
    """Percentages of the budget, 1 to 1000, each once, ascending; ValueError names the fix."""
    if value in (None, ""):
        return []
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError("Give the thresholds as a list of whole percentages, e.g. [50, 80, 100].")
    if len(value) > 10 or any(not 1 <= v <= 1000 for v in value):
        raise ValueError("Up to 10 thresholds, each from 1 to 1000 (percent of the monthly budget).")
    return sorted(set(value))


@dataclass(frozen=True)
class AlertConfig:
    """What the settle path needs to spot a crossing; cached, so a warm call reads nothing."""

    budget: Decimal | None
    thresholds: tuple[int, ...]
    low_balance: Decimal | None
    contacts: str  # who can raise the budget, for the over-budget error
    timezone: str = "UTC"


def _load(tenant_id: str) -> AlertConfig | None:
    from billing.models import BillingProfile
    from tenants.models import Membership, Tenant

    tenant = Tenant.objects.filter(pk=int(tenant_id)).first()
    if tenant is None:
        return None
    profile = BillingProfile.objects.filter(tenant=tenant).first()
    owners = list(
        Membership.objects.filter(tenant=tenant, role=Membership.Role.OWNER)
        .exclude(user__email="")
        .values_list("user__email", flat=True)[:3]
    )
    who = []
    if owners:
        who.append(f"the tenant's owner ({', '.join(owners)})")
    if tenant.billing_email:
        who.append(f"its billing contact ({tenant.billing_email})")
    return AlertConfig(
        budget=tenant.monthly_budget_usd,
        thresholds=tuple(
            (profile.alert_thresholds if profile and profile.alert_thresholds else None)
            or settings.TOLLWAY["SPEND_ALERT_THRESHOLDS"]
        ),
        low_balance=profile.low_balance_usd if profile else None,
        contacts=" or ".join(who) or "the tenant's owner (in the dashboard's members) or the platform's billing team",
        timezone=tenant.timezone,
    )


configs: TieredCache[AlertConfig] = TieredCache("tw:alertcfg", _load)


def crossed(*, before: Decimal, after: Decimal, budget: Decimal, thresholds: tuple[int, ...]) -> list[int]:
    """The thresholds that ``before → after`` crossed: spend below the line before, at or above it after."""
    return [p for p in thresholds if before < budget * p / 100 <= after]


def spend_settled(
    *,
    tenant_id: int,
    month: str,
    spent_after: Decimal | None,
    cost: Decimal,
    credit_after: Decimal | None,
    reached: bool = False,
) -> None:
    """Called once a call's cost has joined the spend (and credit) counters; enqueues an
    alert for each threshold this call crossed. Reads only cached state.

    With ``reached`` (the Postgres path, whose month sum may already hold concurrent calls'
    rows, so no one call sees the crossing), every threshold at or below the spend counts,
    once per process; the unique insert keeps it to one alert."""
    if cost <= 0 or (spent_after is None and credit_after is None):
        return  # nothing counted (a tenant with no budget and no credit has no counters)
    config = configs.get(str(tenant_id))
    if config is None:
        return
    hits: list[tuple[str, Decimal, Decimal]] = []
    if config.budget and spent_after is not None:
        before = Decimal(-1) if reached else spent_after - cost
        for p in crossed(before=before, after=spent_after, budget=config.budget, thresholds=config.thresholds):
            hits.append((str(p), spent_after, config.budget * p / 100))
    low = config.low_balance
    if low is not None and credit_after is not None and credit_after < low and (reached or low <= credit_after + cost):
        hits.append((LOW_BALANCE, credit_after, low))
    for threshold, spend, limit in hits:
        if reached and not _first_here(tenant_id, month, threshold):
            continue
        _enqueue(tenant_id=tenant_id, month=month, threshold=threshold, spend=spend, limit=limit)


_sent_here: set[tuple[int, str, str]] = set()


def _first_here(tenant_id: int, month: str, threshold: str) -> bool:
    """Whether this process has not enqueued this alert yet (the Postgres path's guard)."""
    key = (tenant_id, month, threshold)
    if key in _sent_here:
        return False
    if len(_sent_here) > 100_000:
        _sent_here.clear()
    _sent_here.add(key)
    return True


def spend_settled_redis(*, tenant_id: int, month: str, result: Any, cost: Decimal) -> None:
    """From the settle script's answer: settled, then the tenant's spend and credit after
    (micro-dollars, or ``x`` where Redis holds no such counter)."""
    if not isinstance(result, list | tuple) or len(result) < 3:
        return

    def usd(raw: Any) -> Decimal | None:
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return None if text == "x" else Decimal(int(text)) * MICRO

    # The counters moved by the cost in whole micro-dollars, rounded up (billing.admission.to_micro).
    counted = Decimal(math.ceil(cost / MICRO)) * MICRO
    spend_settled(
        tenant_id=tenant_id, month=month, spent_after=usd(result[1]), cost=counted, credit_after=usd(result[2])
    )


def spend_settled_postgres(*, tenant_id: int, month: str, cost: Decimal) -> None:
    """The Postgres fallback (Redis is down, or the embedded default): sum the month, as its
    admission just did, only when the tenant has something to alert on."""
    if cost <= 0:
        return
    config = configs.get(str(tenant_id))
    if config is None or (not config.budget and config.low_balance is None):
        return
    from django.db.models import Sum

    from billing.admission import account_of, credit_balance
    from billing.invoicing import period_of
    from billing.models import UsageRecord

    bounds = period_of(tz_name=config.timezone, label=month)
    rows = UsageRecord.objects.filter(tenant_id=tenant_id, created_at__gte=bounds.start, created_at__lt=bounds.end)
    spent = rows.aggregate(s=Sum("cost"))["s"] or Decimal(0)
    credit = credit_balance(tenant_id) if config.low_balance is not None and account_of(tenant_id).prepaid else None
    spend_settled(tenant_id=tenant_id, month=month, spent_after=spent, cost=cost, credit_after=credit, reached=True)


def _enqueue(*, tenant_id: int, month: str, threshold: str, spend: Decimal, limit: Decimal) -> None:
    from billing import tasks

    try:
        tasks.spend_alert.delay(
            tenant_id=tenant_id, month=month, threshold=threshold, spend=str(spend), limit=str(limit)
        )
    except Exception as exc:  # a broker outage must not fail a call that was served
        log.error("alerts: could not enqueue %s alert for tenant %s: %r", threshold, tenant_id, exc)


# --- refusals ------------------------------------------------------------------------------


def _refusing_key(tenant_id: int) -> str:
    return f"tw:refusing:t{tenant_id}"


def quota_refused(error: QuotaExceeded, *, tenant_id: int, month: str) -> QuotaExceeded:
    """A call was refused for budget or credit: say who can raise it, mark the tenant as
    refusing (the dashboard's banner), and count a tenant budget refusal as reaching 100 %."""
    what = error.limit
    config = configs.get(str(tenant_id))
    try:
        if redis.cache_ready():
            cache.set(_refusing_key(tenant_id), what or "budget", REFUSING_SECONDS)
    except Exception as exc:  # the banner is a nicety; the refusal must still be answered
        log.warning("alerts: could not mark tenant %s as refusing: %r", tenant_id, exc)
    budget_hit = what == "tenant_budget" and config is not None and config.budget and 100 in config.thresholds
    if (
        budget_hit
        and config is not None
        and config.budget
        and redis.cache_ready()
        and cache.add(f"tw:alert:{tenant_id}:{month}:100", 1, 3456000)
    ):
        _enqueue(tenant_id=tenant_id, month=month, threshold="100", spend=config.budget, limit=config.budget)
    if config is None:
        return error
    action = "top up the credit" if what == "credit" else "raise the budget"
    error.message = f"{error.message} Who can {action}: {config.contacts}."
    return error


def refusing(tenant_id: int) -> str | None:
    """``tenant_budget``, ``key_budget`` or ``credit`` if calls were refused in the last ten minutes."""
    if not redis.cache_ready():
        return None
    try:
        value = cache.get(_refusing_key(tenant_id))
    except Exception:
        return None
    return str(value) if value else None


# --- sending -------------------------------------------------------------------------------


def spend_alert_send(*, tenant_id: int, month: str, threshold: str, spend: Decimal, limit: Decimal) -> bool:
    """Record the alert once (unique per tenant, month and threshold) with its webhook event,
    then e-mail the billing address. Returns False when it was already sent."""
    from billing import webhooks
    from billing.models import Delivery, SpendAlert
    from tenants.models import Tenant

    tenant = Tenant.objects.get(pk=tenant_id)
    try:
        with transaction.atomic():
            SpendAlert.objects.create(tenant=tenant, month=month, threshold=threshold, spend_usd=spend, limit_usd=limit)
            low = threshold == LOW_BALANCE
            webhooks.event_record(
                type="balance.low" if low else "spend.threshold",
                tenant_id=tenant_id,
                data={
                    "object": "spend_alert",
                    "tenant": tenant.slug,
                    "month": month,
                    "threshold": threshold,
                    "spend_usd" if not low else "balance_usd": str(spend.quantize(MICRO)),
                    "limit_usd": str(limit.quantize(MICRO)),
                },
            )
    except IntegrityError:
        return False  # another crosser sent it
    if not tenant.billing_email:
        return True
    from django.core.mail import send_mail

    if threshold == LOW_BALANCE:
        subject = f"{tenant.name}: prepaid credit below ${limit:.2f}"
        body = (
            f"The prepaid balance of {tenant.name} is ${spend:.2f}, below ${limit:.2f}. Top up to keep calls flowing."
        )
    else:
        subject = f"{tenant.name}: {threshold}% of this month's budget used"
        body = (
            f"{tenant.name} has spent ${spend:.2f} in {month}: {threshold}% of its ${limit * 100 / int(threshold):.2f} "
            "monthly budget. At 100% calls are refused until the budget is raised or the month ends."
        )
    ok, detail = True, "sent"
    try:
        send_mail(subject, body, None, [tenant.billing_email])
    except (OSError, ValueError) as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"[:500]
    Delivery.objects.create(
        channel=Delivery.Channel.EMAIL,
        tenant=tenant,
        what=f"alert {threshold}",
        target=tenant.billing_email,
        attempt=1,
        ok=ok,
        detail=detail,
    )
    return True
