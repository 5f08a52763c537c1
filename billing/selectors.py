"""Reads for billing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

from django.conf import settings
from django.db.models import QuerySet, Sum

from billing import admission
from billing.models import (
    BillingProfile,
    CountryTaxRate,
    ExchangeRate,
    Issuer,
    Model,
    Price,
    RollupState,
    UsageRecord,
    UsageRollup,
)
from billing.money import usd_rate
from billing.price_book import RATES
from billing.pricing import LEDGER_QUANTUM, PriceSnapshot, markup_factor, usd
from billing.rollups import ledger_by_day
from tenants.models import ApiKey, Tenant


def price_snapshots(*, model_id: int) -> list[PriceSnapshot]:
    """All of a model's prices, newest first, as cacheable snapshots."""
    prices: QuerySet[Price] = Price.objects.filter(model_id=model_id).order_by("-effective_from")
    return [
        PriceSnapshot(
            input_per_mtok=p.input_per_mtok,
            output_per_mtok=p.output_per_mtok,
            effective_from=p.effective_from,
            cached_input_per_mtok=p.cached_input_per_mtok,
            cache_write_per_mtok=p.cache_write_per_mtok,
            request_fee=p.request_fee,
        )
        for p in prices
    ]


def _usd(value: Decimal | None) -> str | None:
    """Money as the ledger keeps it: a string with 9 decimal places."""
    return None if value is None else usd(value.quantize(LEDGER_QUANTUM))


def tenant_money(tenant: Tenant) -> dict[str, Any]:
    """This billing month's spend against the budget, what is reserved, and the credit balance."""
    month, start, end = admission.month_bounds(tenant.timezone, admission.clock())
    spent = UsageRecord.objects.filter(tenant=tenant, created_at__gte=start, created_at__lt=end).aggregate(
        s=Sum("cost")
    )["s"] or Decimal(0)
    reserved = admission.reserved_total(tenant.pk)
    prepaid = admission.account_of(tenant.pk).prepaid
    budget = tenant.monthly_budget_usd
    return {
        "billing": {
            "month": month,
            "payment": "prepaid" if prepaid else "postpaid",
            "spend_usd": _usd(spent),
            "reserved_usd": _usd(reserved),
            "budget_usd": _usd(budget),
            "budget_remaining_usd": _usd(None if budget is None else max(budget - spent - reserved, Decimal(0))),
            "credit_balance_usd": _usd(admission.credit_balance(tenant.pk) if prepaid else None),
        }
    }


# --- usage, from rollups plus the live ledger ----------------------------------------------

USAGE_FIELDS = ("requests", "input_tokens", "output_tokens", "cached_input_tokens", "cost")
GROUPS = ("day", "model", "key")


def usage_groups(*, tenant: Tenant, start: date, end: date) -> list[dict[str, Any]]:
    """Sums per local day, key and model for days ``start``..``end``: from the rollups up to
    the tenant's ``RollupState.rolled_through``, live from the ledger after that."""
    rolled_through = RollupState.objects.filter(tenant=tenant).values_list("rolled_through", flat=True).first()
    groups: list[dict[str, Any]] = []
    if rolled_through is not None and start <= rolled_through:
        groups += list(
            UsageRollup.objects.filter(tenant=tenant, day__gte=start, day__lte=min(end, rolled_through))
            .values("day", "api_key_id", "model_id")
            .annotate(**{f: Sum(f) for f in USAGE_FIELDS})
            .order_by()
        )
    live_from = start if rolled_through is None else max(start, rolled_through + timedelta(days=1))
    if live_from <= end:
        groups += ledger_by_day(tenant, live_from, end)
    return groups


def daily_cost_by_model(*, tenant: Tenant, start: date, end: date) -> list[tuple[date, str, Decimal]]:
    """(local day, model name, cost) for the dashboard's chart, from the same data as /v1/usage."""
    totals: dict[tuple[date, int], Decimal] = {}
    for group in usage_groups(tenant=tenant, start=start, end=end):
        key = (group["day"], group["model_id"])
        totals[key] = totals.get(key, Decimal(0)) + (group["cost"] or Decimal(0))
    names = dict(Model.objects.filter(pk__in={m for _, m in totals}).values_list("pk", "name"))
    return [(day, names[model], cost) for (day, model), cost in sorted(totals.items())]


def usage_report(*, tenant: Tenant, start: date, end: date, group_by: str) -> dict[str, Any]:
    """Usage between local days ``start`` and ``end`` (inclusive), grouped by day, model or key.

    Days up to the tenant's ``RollupState.rolled_through`` come from the rollups; later days
    (today, and any day not rolled up yet) are summed live from the ledger.
    """
    groups = usage_groups(tenant=tenant, start=start, end=end)

    def key_of(group: dict[str, Any]) -> Any:
        return {"day": group["day"], "model": group["model_id"], "key": group["api_key_id"]}[group_by]

    totals: dict[str, Any] = {f: 0 for f in USAGE_FIELDS}
    merged: dict[Any, dict[str, Any]] = {}
    for group in groups:
        row = merged.setdefault(key_of(group), {f: 0 for f in USAGE_FIELDS})
        for f in USAGE_FIELDS:
            row[f] += group[f] or 0
            totals[f] += group[f] or 0

    labels: dict[Any, dict[str, Any]] = {}
    if group_by == "model":
        labels = {pk: {"model": name} for pk, name in Model.objects.filter(pk__in=merged).values_list("pk", "name")}
    elif group_by == "key":
        labels = {
            pk: {"key_id": key_id, "key_name": name}
            for pk, key_id, name in ApiKey.objects.filter(tenant=tenant, pk__in=[k for k in merged if k]).values_list(
                "pk", "key_id", "name"
            )
        }

    def label(k: Any) -> dict[str, Any]:
        if group_by == "day":
            return {"day": k.isoformat()}
        return labels.get(k, {"key_id": None, "key_name": None} if group_by == "key" else {"model": None})

    def money(row: dict[str, Any]) -> dict[str, Any]:
        out = {f: row[f] for f in USAGE_FIELDS if f != "cost"}
        out["cost_usd"] = usd(Decimal(row["cost"]).quantize(LEDGER_QUANTUM))
        return out

    data = [
        {**label(k), **money(row)}
        for k, row in sorted(merged.items(), key=lambda kv: [str(v) for v in label(kv[0]).values()])
    ]
    return {
        "object": "usage",
        "start": start.isoformat(),
        "end": end.isoformat(),
        "group_by": group_by,
        "timezone": tenant.timezone,
        "data": data,
        "totals": money(totals),
    }


# --- finance: issuer, billing profiles, tax and exchange rates ------------------------------


def issuer_get() -> Issuer:
    """The issuer row, made on first use from ``TOLLWAY_INVOICE_ISSUER`` (name, then address lines)."""
    issuer = Issuer.objects.select_related("logo").filter(pk=1).first()
    if issuer is not None:
        return issuer
    name, *address = settings.TOLLWAY["INVOICE_ISSUER"] or ["Tollway"]
    issuer, _ = Issuer.objects.get_or_create(pk=1, defaults={"legal_name": name, "address": "\n".join(address)})
    return issuer


def billing_profile_of(tenant: Tenant) -> BillingProfile:
    """The tenant's billing profile; an unsaved default one when finance has set none."""
    profile = BillingProfile.objects.filter(tenant=tenant).first()
    return profile if profile is not None else BillingProfile(tenant=tenant)


@dataclass(frozen=True)
class TaxTreatment:
    label: str
    rate_percent: Decimal
    reverse_charge: bool


def tax_treatment(profile: BillingProfile) -> TaxTreatment:
    """The tenant's own rate, else its country's default, else none; zero with a note when
    the customer accounts for the tax itself (reverse charge)."""
    country = CountryTaxRate.objects.filter(country=profile.country).first() if profile.country else None
    label = country.label if country else "Tax"
    if profile.reverse_charge:
        return TaxTreatment(label=label, rate_percent=Decimal(0), reverse_charge=True)
    if profile.tax_rate_percent is not None:
        return TaxTreatment(label=label, rate_percent=profile.tax_rate_percent, reverse_charge=False)
    if country is not None:
        return TaxTreatment(label=country.label, rate_percent=country.rate_percent, reverse_charge=False)
    return TaxTreatment(label="Tax", rate_percent=Decimal(0), reverse_charge=False)


def exchange_rate_on(*, currency: str, day: date) -> ExchangeRate | None:
    """The rate in effect on ``day``: the latest one that started on or before it."""
    return ExchangeRate.objects.filter(currency=currency, effective_date__lte=day).order_by("-effective_date").first()


@dataclass(frozen=True)
class UsageFilter:
    """What a tenant narrows its request log (and its CSV export) to. ``None``: any."""

    model_id: int | None = None
    api_key_id: int | None = None
    outcome: str | None = None
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # exclusive


def usage_log(*, tenant: Tenant, where: UsageFilter) -> QuerySet[UsageRecord]:
    """The tenant's ledger rows, newest first, narrowed by ``where``. Every filter sits
    beside ``tenant``, so the (tenant, created_at) index answers it."""
    rows = UsageRecord.objects.filter(tenant=tenant)
    if where.model_id is not None:
        rows = rows.filter(model_id=where.model_id)
    if where.api_key_id is not None:
        rows = rows.filter(api_key_id=where.api_key_id)
    if where.outcome:
        rows = rows.filter(outcome=where.outcome)
    if where.start is not None:
        rows = rows.filter(created_at__gte=where.start)
    if where.end is not None:
        rows = rows.filter(created_at__lt=where.end)
    return rows.order_by("-created_at", "-pk")


@dataclass(frozen=True)
class TenantPrice:
    """One model as the tenant pays for it: list price with the plan's markup, per Mtok."""

    model: str
    markup_percent: Decimal
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    cache_write_per_mtok: Decimal
    request_fee: Decimal
    since: datetime
    next_change: TenantPrice | None = None

    @property
    def shown(self) -> dict[str, str]:
        """The rates as the price list prints them (``billing.money.usd_rate``)."""
        return {name: usd_rate(getattr(self, name)) for name in RATES}


def _marked_up(price: Price, factor: Decimal, markup: Decimal, model: str) -> TenantPrice:
    def times(value: Decimal) -> Decimal:
        return (value * factor).quantize(Decimal("0.000001"))

    return TenantPrice(
        model=model,
        markup_percent=markup,
        input_per_mtok=times(price.input_per_mtok),
        output_per_mtok=times(price.output_per_mtok),
        cached_input_per_mtok=times(
            price.cached_input_per_mtok if price.cached_input_per_mtok is not None else price.input_per_mtok
        ),
        cache_write_per_mtok=times(
            price.cache_write_per_mtok if price.cache_write_per_mtok is not None else price.input_per_mtok
        ),
        request_fee=times(price.request_fee),
        since=price.effective_from,
    )


def tenant_price_list(*, tenant: Tenant, now: datetime) -> list[TenantPrice]:
    """The models the tenant may call that have a price now, each at the tenant's own price
    (the plan's markup, or its per-model markup), with the next scheduled change if any."""
    account = admission.accounts.get(str(tenant.pk)) or admission.AccountSnapshot(prepaid=False)
    patterns = tenant.allowed_models or []
    models = Model.objects.filter(is_active=True).prefetch_related("prices").order_by("name")
    listed = []
    for model in models:
        if patterns and not any(fnmatchcase(model.name, p) for p in patterns):
            continue
        prices = sorted(model.prices.all(), key=lambda p: p.effective_from)
        current = [p for p in prices if p.effective_from <= now]
        if not current:
            continue  # not priced: not served
        markup = account.markup_for(model.pk)
        factor = markup_factor(markup)
        upcoming = [p for p in prices if p.effective_from > now]
        entry = _marked_up(current[-1], factor, markup, model.name)
        if upcoming:
            entry = TenantPrice(
                **{**entry.__dict__, "next_change": _marked_up(upcoming[0], factor, markup, model.name)}
            )
        listed.append(entry)
    return listed
