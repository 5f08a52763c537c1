"""Payment state: the only thing about a finalised invoice that still moves.

``open → paid | uncollectible | void`` and ``uncollectible → paid | void``
(``billing.models.INVOICE_TRANSITIONS``), each with who moved it and when. The admin's
actions, the API and :func:`billing.invoicing.invoice_void` all go through
:func:`status_move`; the models and a Postgres trigger refuse any other change.
"""

from __future__ import annotations

from datetime import date, datetime

from django.db import transaction
from django.utils import timezone

from billing import locks, webhooks
from billing.models import INVOICE_TRANSITIONS, Invoice
from config.errors import Conflict, InvalidRequest

MAX_REFERENCE = 200


def status_move(
    invoice: Invoice,
    status: str,
    *,
    by: str,
    now: datetime,
    paid_on: date | None = None,
    reference: str = "",
    reason: str = "",
) -> Invoice:
    """Move a locked invoice to ``status``. The caller holds the invoice's lock
    (:func:`billing.locks.invoice_for_update`) in its transaction."""
    allowed = INVOICE_TRANSITIONS.get(invoice.status, frozenset())
    if status not in allowed:
        raise Conflict(
            f"Invoice {invoice} is {invoice.status}: it cannot become {status}"
            + (f" (it can become {', '.join(sorted(allowed))})." if allowed else ".")
            + (" Correct it with a credit note." if invoice.status == Invoice.Status.PAID else "")
        )
    fields = ["status", "status_changed_at", "status_changed_by"]
    invoice.status, invoice.status_changed_at, invoice.status_changed_by = status, now, by[:150]
    if status == Invoice.Status.PAID:
        invoice.paid_on = paid_on or timezone.localdate(now)
        invoice.payment_reference = reference
        fields += ["paid_on", "payment_reference"]
    if status == Invoice.Status.VOID:
        invoice.voided_at, invoice.void_reason = now, reason[:500]
        fields += ["voided_at", "void_reason"]
    elif reason:
        invoice.void_reason = reason[:500]  # the note on an uncollectible one
        fields.append("void_reason")
    invoice.save(update_fields=fields)
    if status == Invoice.Status.PAID:
        webhooks.event_record(
            type="invoice.paid", tenant_id=invoice.tenant_id, data=webhooks.invoice_data(invoice), invoice=invoice
        )
    return invoice


def invoice_status_set(
    *,
    invoice: Invoice,
    status: str,
    by: str,
    paid_on: date | None = None,
    reference: str = "",
    reason: str = "",
    now: datetime | None = None,
) -> Invoice:
    """Record a payment (``paid``, with the day it arrived and its reference), write an
    invoice off (``uncollectible``), or void it without reissuing (``void``)."""
    if status not in {Invoice.Status.PAID, Invoice.Status.UNCOLLECTIBLE, Invoice.Status.VOID}:
        raise InvalidRequest(f"'{status}' is not a payment state: use paid, uncollectible or void.", param="status")
    if len(reference) > MAX_REFERENCE:
        raise InvalidRequest(f"The reference is longer than {MAX_REFERENCE} characters.", param="reference")
    if status != Invoice.Status.PAID and (paid_on is not None or reference):
        raise InvalidRequest("paid_on and reference go with status 'paid' only.", param="paid_on")
    now = now or timezone.now()
    with transaction.atomic():
        locks.tenant_for_invoicing(invoice.tenant_id)
        locked = locks.invoice_for_update(invoice.pk)
        if paid_on is not None and locked.issue_date is not None and paid_on > timezone.localdate(now):
            raise InvalidRequest(f"paid_on {paid_on} is in the future.", param="paid_on")
        return status_move(locked, status, by=by, now=now, paid_on=paid_on, reference=reference, reason=reason)
