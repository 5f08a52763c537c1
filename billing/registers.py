"""The finance registers: a month's invoices and credit notes, by issue date."""

from __future__ import annotations

from datetime import date

from django.db.models import QuerySet

from billing.invoicing import period_parse
from billing.models import CreditNote, Invoice


def month_range(label: str) -> tuple[date, date]:
    """``YYYY-MM`` → its first day and the first day after it; ValueError names the fix."""
    year, month = period_parse(label)
    return date(year, month, 1), date(year + month // 12, month % 12 + 1, 1)


def invoice_register(*, first: date, after: date, tenant_id: int | None = None) -> QuerySet[Invoice]:
    """The invoices issued in ``[first, after)``, in number order (every state but draft)."""
    invoices = Invoice.objects.filter(issue_date__gte=first, issue_date__lt=after).exclude(status=Invoice.Status.DRAFT)
    if tenant_id is not None:
        invoices = invoices.filter(tenant_id=tenant_id)
    return invoices.select_related("tenant", "replaces").prefetch_related("credit_notes").order_by("number")


def credit_note_register(*, first: date, after: date, tenant_id: int | None = None) -> QuerySet[CreditNote]:
    notes = CreditNote.objects.filter(issue_date__gte=first, issue_date__lt=after)
    if tenant_id is not None:
        notes = notes.filter(tenant_id=tenant_id)
    return notes.select_related("tenant", "invoice").order_by("number")
