"""Reads for billing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db.models import QuerySet, Sum

from billing import admission
from billing.models import Price, UsageRecord
from billing.pricing import LEDGER_QUANTUM, PriceSnapshot, usd
from tenants.models import Tenant


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
