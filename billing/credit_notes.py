"""Credit notes: how a finalised invoice is corrected (EU practice: never by editing it).

A credit note credits a finalised invoice (open, paid or uncollectible) in whole, by
chosen lines, or by an amount, with a reason. It is numbered ``CN-YYYY-NNNNNN`` from its
own gapless series (the counter lock in :mod:`billing.locks`), carries the invoice's
currency, exchange rate and tax rate (a correction is made on the invoice's terms), and is
immutable from the moment it is issued. Together the notes never credit more than the
invoice's net, and a line is credited by lines at most once.

Use a credit note for anything found after the invoice went out (a refund, a goodwill
credit, a wrongly billed model). Use void-and-reissue (:func:`billing.invoicing.invoice_void`)
for a draft-level mistake caught before the customer acted on it (wrong customer details).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from billing import locks, webhooks
from billing.invoicing import CENT
from billing.models import CreditNote, Invoice, InvoiceLine
from billing.money import USD, round_money, tax_of
from config.errors import Conflict, InvalidRequest

CREDITABLE = (Invoice.Status.OPEN, Invoice.Status.PAID, Invoice.Status.UNCOLLECTIBLE)
MAX_REASON = 500


@dataclass(frozen=True)
class Credited:
    """What an invoice's earlier notes have credited: the net, and the lines taken whole."""

    net_amount: Decimal
    net_usd: Decimal
    positions: frozenset[int]


def credited_so_far(invoice: Invoice) -> Credited:
    notes = list(CreditNote.objects.filter(invoice=invoice).values_list("net_amount", "net_usd", "lines"))
    positions = {line["position"] for _, _, lines in notes for line in lines if line.get("position")}
    return Credited(
        net_amount=sum((n for n, _, _ in notes), Decimal(0)),
        net_usd=sum((u for _, u, _ in notes), Decimal(0)),
        positions=frozenset(positions),
    )


def _lines_to_credit(
    invoice: Invoice, *, kind: str, positions: list[int] | None, amount: Decimal | None, credited: Credited
) -> list[dict[str, Any]]:
    currency, rate = invoice.currency, invoice.fx_rate or Decimal(1)
    lines = [line for line in invoice.lines.all() if line.kind != InvoiceLine.Kind.CREDIT and line.amount_usd > 0]
    if kind == CreditNote.Kind.AMOUNT:
        if amount is None or amount <= 0:
            raise InvalidRequest("Give the amount to credit, above zero, in the invoice's currency.", param="amount")
        if amount != round_money(amount, currency):
            raise InvalidRequest(f"{amount} has more decimals than {currency} has.", param="amount")
        usd = (amount / rate).quantize(CENT) if currency != USD else amount
        return [{"position": None, "description": "Credit", "amount_usd": usd, "amount": amount}]
    if kind == CreditNote.Kind.WHOLE:
        if credited.net_amount:
            raise Conflict(
                f"Invoice {invoice.number} is already partly credited: credit the rest by lines or by an amount."
            )
        chosen = lines
    else:
        wanted = set(positions or [])
        if not wanted:
            raise InvalidRequest("Choose the invoice lines to credit (their positions).", param="lines")
        by_position = {line.position: line for line in lines}
        unknown = sorted(wanted - set(by_position))
        if unknown:
            raise InvalidRequest(
                f"Invoice {invoice.number} has no creditable line {unknown[0]} (positions: "
                f"{', '.join(map(str, sorted(by_position)))}).",
                param="lines",
            )
        again = sorted(wanted & credited.positions)
        if again:
            raise Conflict(f"Line {again[0]} of invoice {invoice.number} is already credited.")
        chosen = [by_position[p] for p in sorted(wanted)]
    return [
        {
            "position": line.position,
            "description": line.description,
            "amount_usd": line.amount_usd,
            "amount": line.amount if line.amount is not None else line.amount_usd,
        }
        for line in chosen
    ]


def credit_note_issue(
    *,
    invoice: Invoice,
    reason: str,
    by: str,
    lines: list[int] | None = None,
    amount: Decimal | None = None,
    now: datetime | None = None,
) -> CreditNote:
    """Issue a credit note against ``invoice``: whole (neither ``lines`` nor ``amount``), the
    chosen line positions, or an amount (net, in the invoice's currency). Sends the
    ``credit_note.created`` webhook and e-mails its PDF after the commit."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidRequest("Say why: a credit note needs a reason.", param="reason")
    if len(reason) > MAX_REASON:
        raise InvalidRequest(f"The reason is longer than {MAX_REASON} characters.", param="reason")
    if lines and amount is not None:
        raise InvalidRequest("Credit either chosen lines or an amount, not both.", param="amount")
    kind = CreditNote.Kind.LINES if lines else CreditNote.Kind.AMOUNT if amount is not None else CreditNote.Kind.WHOLE
    now = now or timezone.now()
    with transaction.atomic():
        locks.tenant_for_invoicing(invoice.tenant_id)
        locked = locks.invoice_for_update(invoice.pk)
        if locked.status not in CREDITABLE:
            raise Conflict(
                f"Invoice {locked} is {locked.get_status_display().lower()}: only a finalised invoice that is not "
                "void can be credited."
                + (" A draft is corrected by refreshing it; a void one needs nothing." if locked.is_draft else "")
            )
        credited = credited_so_far(locked)
        chosen = _lines_to_credit(locked, kind=kind, positions=lines, amount=amount, credited=credited)
        currency = locked.currency
        rate = locked.tax_rate_percent or Decimal(0)
        net_amount = sum((line["amount"] for line in chosen), Decimal(0))
        net_usd = sum((line["amount_usd"] for line in chosen), Decimal(0))
        left = (locked.net_amount or locked.total_usd) - credited.net_amount
        if net_amount > left:
            raise Conflict(
                f"That credits {net_amount} {currency}, more than the {left} {currency} of invoice "
                f"{locked.number} not yet credited."
            )
        if net_amount <= 0:
            raise Conflict(f"Invoice {locked.number} has nothing left to credit.")
        year = now.astimezone(UTC).year
        tax_usd = tax_of(net_usd, rate_percent=rate, currency=USD)
        tax_amount = tax_of(net_amount, rate_percent=rate, currency=currency)
        note = CreditNote.objects.create(
            number=f"CN-{year}-{locks.credit_note_number_next(year=year):06d}",
            invoice=locked,
            tenant_id=locked.tenant_id,
            kind=kind,
            reason=reason,
            currency=currency,
            fx_rate=locked.fx_rate or Decimal(1),
            fx_rate_date=locked.fx_rate_date,
            tax_label=locked.tax_label,
            tax_rate_percent=rate,
            reverse_charge=locked.reverse_charge,
            net_usd=net_usd,
            tax_usd=tax_usd,
            gross_usd=net_usd + tax_usd,
            net_amount=net_amount,
            tax_amount=tax_amount,
            gross_amount=net_amount + tax_amount,
            lines=[{**line, "amount_usd": str(line["amount_usd"]), "amount": str(line["amount"])} for line in chosen],
            issuer=locked.issuer,
            bill_to=locked.bill_to,
            issue_date=timezone.localdate(now, timezone=_zone(locked)),
            issued_at=now,
            issued_by=by[:150],
        )
        webhooks.event_record(
            type="credit_note.created",
            tenant_id=locked.tenant_id,
            data=webhooks.credit_note_data(note),
            credit_note=note,
        )
    return note


def _zone(invoice: Invoice) -> Any:
    import zoneinfo

    return zoneinfo.ZoneInfo(invoice.tenant.timezone)
