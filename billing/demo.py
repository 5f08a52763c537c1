"""Three past months of usage for the demo: ``manage.py seeddemo --history`` (``make demo``).

So that a fresh install can try the month close in its first minutes, this writes what a
real quarter leaves behind, for two demo tenants:

* ``demo`` on the plan *Demo Growth*: list price + 20 %, with a $25 monthly minimum;
* ``demo-prepaid`` on *Demo Prepaid*: list price + 10 %, prepaid, with a top-up at the
  start of every month;
* a mid-month price change: gpt-4.1 cost $10 / $40 per Mtok until the 15th of last month,
  and the current price from then on, so last month's invoice has two gpt-4.1 lines;
* a few thousand ledger rows, priced by the real pricing code (``billing.pricing``) at the
  price in effect when each call was made, a weekday-heavy pattern that grows each month;
* the two older months closed and finalised (numbered invoices with PDFs, and their
  reports); last month is left open for you to close:
  ``manage.py closemonth last --finalize``.

Rows go in with bulk inserts (``ledger.usage_records_load``), and everything is idempotent: request ids are fixed by
tenant, day and index, and each random choice is seeded by them, so a second run adds
nothing (and a run a month later adds only the month that has become "past").
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_UP, Decimal
from functools import partial

from django.db import transaction
from django.utils import timezone

from billing import admission, invoicing, ledger, reports, rollups
from billing.models import Account, CreditEntry, Invoice, Model, Payment, Plan, Price, RollupState, UsageRecord
from billing.pricing import PriceSnapshot, TokenUsage, charge_of, price_at
from billing.selectors import price_snapshots
from tenants import services
from tenants.models import ApiKey, Tenant

MONTHS = 3
CHANGED_MODEL = "gpt-4.1"
OLD_PRICE = (Decimal("10.00"), Decimal("40.00"))


@dataclass(frozen=True)
class DemoTenant:
    slug: str
    name: str
    plan: str
    markup: Decimal
    minimum: Decimal
    prepaid: bool
    calls_per_day: int
    models: dict[str, int]  # model name -> weight


TENANTS = [
    DemoTenant(
        slug="demo",
        name="Demo tenant",
        plan="Demo Growth",
        markup=Decimal(20),
        minimum=Decimal(25),
        prepaid=False,
        calls_per_day=60,
        models={"gpt-4.1": 5, "gpt-4.1-mini": 8, "claude-sonnet-4": 2, "gemini-2.5-flash": 3, "deepseek-v3": 4},
    ),
    DemoTenant(
        slug="demo-prepaid",
        name="Demo prepaid tenant",
        plan="Demo Prepaid",
        markup=Decimal(10),
        minimum=Decimal(0),
        prepaid=True,
        calls_per_day=25,
        models={"gpt-4.1-mini": 6, "deepseek-v3": 5, "gpt-4.1": 2},
    ),
]


@dataclass
class HistoryResult:
    months: list[str]
    rows_added: int = 0
    new_keys: dict[str, str] = field(default_factory=dict)  # tenant slug -> a key shown once
    invoices: list[str] = field(default_factory=list)
    open_month: str = ""


def history_months(now: datetime) -> list[str]:
    """The ``MONTHS`` whole months before ``now``'s (UTC), oldest first."""
    labels: list[str] = []
    first = now.astimezone(UTC).date().replace(day=1)
    for _ in range(MONTHS):
        first = (first - timedelta(days=1)).replace(day=1)
        labels.insert(0, f"{first:%Y-%m}")
    return labels


def _month_start(label: str) -> datetime:
    return invoicing.period_of(tz_name="UTC", label=label).start


def _prices_reach_back(*, start: datetime, change_at: datetime) -> None:
    """Every demo model has a price from ``start`` on; gpt-4.1's changes at ``change_at``."""
    for model in Model.objects.filter(name__in={name for t in TENANTS for name in t.models}).order_by("name"):
        if model.prices.filter(effective_from__lte=start).exists():
            continue
        earliest = model.prices.order_by("effective_from").first()
        if earliest is None:
            continue
        # Saved, not update()d: the price book's rule (billing.price_book) checks each move.
        # Moving a model's first price back only prices the span before it, where no call
        # can have been billed (an unpriced model is not served), so the rule allows it.
        if model.name == CHANGED_MODEL:
            # The current price takes effect mid-month; the one before it ran from the start.
            if earliest.effective_from > change_at:
                earliest.effective_from = change_at
                earliest.save(update_fields=["effective_from"])
            Price.objects.create(
                model=model, input_per_mtok=OLD_PRICE[0], output_per_mtok=OLD_PRICE[1], effective_from=start
            )
        else:
            # Demo prices were made "now" by seeddemo: they reach back over the history.
            earliest.effective_from = start
            earliest.save(update_fields=["effective_from"])


def _tenant(spec: DemoTenant, *, start: datetime, result: HistoryResult) -> tuple[Tenant, list[ApiKey]]:
    tenant = Tenant.objects.filter(slug=spec.slug).first() or services.tenant_create(slug=spec.slug, name=spec.name)
    # It existed through the history (a month before the tenant did is never invoiced).
    Tenant.objects.filter(pk=tenant.pk, created_at__gt=start).update(created_at=start - timedelta(days=1))
    tenant.refresh_from_db()
    plan, _ = Plan.objects.get_or_create(
        name=spec.plan,
        defaults={
            "markup_percent": spec.markup,
            "monthly_minimum_usd": spec.minimum,
            "payment": Payment.PREPAID if spec.prepaid else Payment.POSTPAID,
        },
    )
    account, _ = Account.objects.get_or_create(tenant=tenant)
    if account.plan_id != plan.pk:
        account.plan = plan
        account.save()
    keys = list(ApiKey.objects.filter(tenant=tenant, user__isnull=True).order_by("created_at"))
    if not keys:
        created = services.api_key_create(tenant=tenant, name="demo")
        result.new_keys[tenant.slug] = created.plaintext
        keys = [created.api_key]
    if len(keys) < 2:
        # A second key, so usage splits by key; its secret is never shown (rotate it to use it).
        keys.append(services.api_key_create(tenant=tenant, name="batch jobs").api_key)
    ApiKey.objects.filter(pk__in=[k.pk for k in keys], created_at__gt=start).update(created_at=start)
    return tenant, keys


def _day_rows(
    spec: DemoTenant,
    tenant: Tenant,
    keys: list[ApiKey],
    models: dict[str, tuple[Model, list[PriceSnapshot]]],
    day: date,
    growth: float,
) -> list[UsageRecord]:
    """One day's calls. Seeded by tenant and day, so the same day always makes the same rows."""
    rng = random.Random(f"{spec.slug}:{day.isoformat()}")
    weekday = day.weekday() < 5
    count = max(1, round(spec.calls_per_day * growth * (1.0 if weekday else 0.35) * rng.uniform(0.7, 1.3)))
    names, weights = list(spec.models), list(spec.models.values())
    rows = []
    for index in range(count):
        model, prices = models[rng.choices(names, weights)[0]]
        at = datetime.combine(day, time(), tzinfo=UTC) + timedelta(seconds=rng.randrange(86_400))
        price = price_at(prices, at)
        if price is None:
            continue
        prompt = int(rng.lognormvariate(7.0, 0.9)) + 20
        usage = TokenUsage(
            input_tokens=prompt,
            output_tokens=int(rng.lognormvariate(5.5, 0.8)) + 1,
            cached_input_tokens=rng.choice([0, 0, 0, prompt // 2]),
        )
        charge = charge_of(usage, price, markup_percent=spec.markup)
        streamed = rng.random() < 0.6
        left = streamed and rng.random() < 0.02
        rows.append(
            UsageRecord(
                request_id=f"demo-{spec.slug}-{day:%Y%m%d}-{index:04d}",
                created_at=at,
                tenant=tenant,
                api_key=keys[0] if rng.random() < 0.75 else keys[-1],
                model=model,
                provider="mock",
                upstream_model=model.name,
                requested_model="",
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached_input_tokens=usage.cached_input_tokens,
                input_price_per_mtok=price.input_per_mtok,
                output_price_per_mtok=price.output_per_mtok,
                cached_input_price_per_mtok=price.cached_input_rate,
                cache_write_price_per_mtok=price.cache_write_rate,
                request_fee=price.request_fee,
                markup_percent=spec.markup,
                cost=charge.cost,
                upstream_cost=charge.upstream_cost,
                streamed=streamed,
                outcome=UsageRecord.Outcome.CLIENT_GONE if left else UsageRecord.Outcome.COMPLETED,
                latency_ms=rng.randint(300, 9_000),
            )
        )
    return rows


def _top_ups(tenant: Tenant, spend: dict[str, Decimal], now: datetime) -> None:
    """A prepaid tenant tops up at the start of each month with what it will spend, rounded
    up to $50 with some to spare, and once more at the start of the current month."""
    current = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for label, at in [*((label, _month_start(label)) for label in spend), (f"{current:%Y-%m}", current)]:
        note = f"Demo top-up {label}"
        if CreditEntry.objects.filter(tenant=tenant, note=note).exists():
            continue
        amount = ((spend.get(label, Decimal(0)) * Decimal("1.2") + 50) / 50).to_integral_value(rounding=ROUND_UP) * 50
        CreditEntry.objects.create(
            tenant=tenant, amount_usd=amount, note=note, created_by="manage.py seeddemo --history", created_at=at
        )


def history_seed(*, now: datetime | None = None) -> HistoryResult:
    """Seed the demo's past months (see the module docstring); safe to run again."""
    now = now or timezone.now()
    months = history_months(now)
    start = _month_start(months[0])
    yesterday = now.astimezone(UTC).date() - timedelta(days=1)
    result = HistoryResult(months=months, open_month=months[-1])
    with transaction.atomic():
        _prices_reach_back(start=start, change_at=_month_start(months[-1]) + timedelta(days=14))
        demo_models = Model.objects.filter(name__in={name for t in TENANTS for name in t.models})
        models = {m.name: (m, price_snapshots(model_id=m.pk)) for m in demo_models}
        tenants: list[Tenant] = []
        for spec in TENANTS:
            tenant, keys = _tenant(spec, start=start, result=result)
            tenants.append(tenant)
            rows: list[UsageRecord] = []
            spend: dict[str, Decimal] = {}
            for number, label in enumerate(months):
                bounds = invoicing.period_of(tz_name="UTC", label=label)
                day = bounds.start.date()
                while day < bounds.end.date():
                    made = _day_rows(spec, tenant, keys, models, day, growth=1.0 + 0.15 * number)
                    spend[label] = spend.get(label, Decimal(0)) + sum((r.cost for r in made), Decimal(0))
                    rows += made
                    day += timedelta(days=1)
            before = UsageRecord.objects.filter(tenant=tenant).count()
            ledger.usage_records_load(rows=rows)
            result.rows_added += UsageRecord.objects.filter(tenant=tenant).count() - before
            if spec.prepaid:
                _top_ups(tenant, spend, now)
            # Bulk inserts bypass what a call does after its row: the rollups of those days
            # (a tenant rolled up already would never revisit them) and the admission counters.
            rollups.rollup_rebuild(tenant=tenant, first=start.date(), last=yesterday)
            RollupState.objects.update_or_create(tenant=tenant, defaults={"rolled_through": yesterday})
            transaction.on_commit(partial(admission.forget_counters, tenant.pk))
    # The older months are closed as finance would have: finalised after their grace period.
    for label in months[:-1]:
        closed_at = invoicing.period_of(tz_name="UTC", label=label).end + invoicing.grace() + timedelta(hours=1)
        invoicing.month_close(period=label, tenants=tenants, finalize=True, now=min(closed_at, now))
        for tenant in tenants:
            reports.statement_build(tenant=tenant, period=label)
        reports.margin_report_build(period=label)
        reports.invoices_report_build(period=label)
    closed = Invoice.objects.filter(tenant__in=tenants, period__in=months[:-1]).exclude(status=Invoice.Status.VOID)
    result.invoices = [str(invoice) for invoice in closed.order_by("period", "tenant__slug")]
    return result
