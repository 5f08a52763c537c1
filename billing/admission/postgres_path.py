"""Admission without Redis: budgets held by a row lock on the tenant's account, with the
reservation in Postgres. Used when Redis is unreachable, and always in the embedded default."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum

from billing.admission import counters
from billing.admission.accounts import credit_balance
from billing.admission.answers import quota_error
from billing.admission.reservation import Admission, Ask
from billing.admission.units import now
from billing.models import Account, Reservation, UsageRecord


def _total(qs: Any, column: str) -> Decimal:
    return qs.aggregate(s=Sum(column))["s"] or Decimal(0)


def admit(ask: Ask, month: str, start: datetime, end: datetime) -> Admission:
    from billing.admission.inflight import worker

    with transaction.atomic():
        account = Account.objects.select_for_update().filter(tenant_id=ask.tenant_id).first()
        if account is None:
            Account.objects.get_or_create(tenant_id=ask.tenant_id)
            account = Account.objects.select_for_update().get(tenant_id=ask.tenant_id)
        month_rows = UsageRecord.objects.filter(tenant_id=ask.tenant_id, created_at__gte=start, created_at__lt=end)
        held = Reservation.objects.filter(tenant_id=ask.tenant_id)
        if ask.tenant_budget is not None:
            left = ask.tenant_budget - _total(month_rows, "cost") - _total(held, "amount_usd")
            if ask.amount > left:
                raise quota_error("tenant_budget", max(left, Decimal(0)))
        if ask.key_budget is not None and ask.api_key_id is not None:
            left = (
                ask.key_budget
                - _total(month_rows.filter(api_key_id=ask.api_key_id), "cost")
                - _total(held.filter(api_key_id=ask.api_key_id), "amount_usd")
            )
            if ask.amount > left:
                raise quota_error("key_budget", max(left, Decimal(0)))
        if account.prepaid:
            left = credit_balance(ask.tenant_id) - _total(held, "amount_usd")
            if ask.amount > left:
                raise quota_error("credit", max(left, Decimal(0)))
        Reservation.objects.create(
            request_id=ask.request_id,
            tenant_id=ask.tenant_id,
            api_key_id=ask.api_key_id,
            month=month,
            amount_usd=ask.amount,
            record=ask.record_json,
            deadline=datetime.fromtimestamp(now() + settings.TOLLWAY["RESERVATION_SECONDS"], UTC),
            worker=worker(),
        )
    # Redis's counters do not know this reservation: rebuilt before they are trusted again.
    counters.mark_stale(ask.tenant_id)
    return Admission(ask.request_id, "postgres", ask.tenant_id, ask.api_key_id, month)
