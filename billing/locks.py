"""Every row lock billing takes, in one place (as Saleor's ``lock_objects.py``).

Order, always: the tenant, then its invoice, then the year's invoice number counter, then
the year's credit note counter. Each helper
must run inside ``transaction.atomic()``; the lock lasts until that transaction ends.
"""

from __future__ import annotations

from billing.models import CreditNoteCounter, Invoice, InvoiceCounter
from tenants.models import Tenant


def tenant_for_invoicing(tenant_id: int) -> Tenant:
    """Serialises drafting and finalising for one tenant (two closes never make two drafts)."""
    return Tenant.objects.select_for_update().get(pk=tenant_id)


def invoice_for_update(invoice_id: int) -> Invoice:
    return Invoice.objects.select_for_update().select_related("tenant").get(pk=invoice_id)


def invoice_number_next(*, year: int) -> int:
    """The next invoice number of ``year``, gapless: the counter row is locked until the
    caller's transaction commits, so a rolled-back finalisation gives its number back."""
    InvoiceCounter.objects.bulk_create([InvoiceCounter(year=year, last=0)], ignore_conflicts=True)
    counter = InvoiceCounter.objects.select_for_update().get(year=year)
    counter.last += 1
    counter.save(update_fields=["last"])
    return counter.last


def credit_note_number_next(*, year: int) -> int:
    """The next credit note number of ``year``, gapless, like :func:`invoice_number_next`."""
    CreditNoteCounter.objects.bulk_create([CreditNoteCounter(year=year, last=0)], ignore_conflicts=True)
    counter = CreditNoteCounter.objects.select_for_update().get(year=year)
    counter.last += 1
    counter.save(update_fields=["last"])
    return counter.last
