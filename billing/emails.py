"""Invoices and credit notes by e-mail: the PDF attached, sent to the tenant's billing address.

Sent by the Celery task ``billing.email_document`` after finalisation (or issue), retried
on failure; every attempt is kept as a :class:`~billing.models.Delivery` row on the document.
"""

from __future__ import annotations

from django.conf import settings
from django.core.mail import EmailMessage

from billing.documents import credit_note_filename, credit_note_pdf, invoice_filename, invoice_pdf
from billing.models import CreditNote, Delivery, Invoice
from billing.money import format_money
from billing.selectors import issuer_get


class EmailFailed(Exception):
    """Sending failed; the task retries it."""


def _sender() -> str:
    issuer = issuer_get()
    return issuer.email or settings.DEFAULT_FROM_EMAIL


def _invoice_message(invoice: Invoice, to: str) -> EmailMessage:
    issuer = invoice.issuer or {}
    due = f", due {invoice.due_date:%d %B %Y}" if invoice.due_date else ""
    total = format_money(invoice.gross_amount, invoice.currency) if invoice.gross_amount is not None else ""
    body = (
        f"Hello,\n\nyour invoice {invoice.number} for {invoice.period} is attached: {total}{due}.\n\n"
        f"{issuer.get('payment_instructions') or ''}\n\n{issuer.get('legal_name', '')}\n"
    )
    message = EmailMessage(
        subject=f"Invoice {invoice.number} from {issuer.get('legal_name', 'Tollway')}",
        body=body,
        from_email=_sender(),
        to=[to],
    )
    message.attach(invoice_filename(invoice, "pdf"), invoice_pdf(invoice), "application/pdf")
    return message


def _credit_note_message(note: CreditNote, to: str) -> EmailMessage:
    issuer = note.issuer or {}
    body = (
        f"Hello,\n\ncredit note {note.number} for invoice {note.invoice.number} is attached: "
        f"{format_money(note.gross_amount, note.currency)}.\nReason: {note.reason}\n\n{issuer.get('legal_name', '')}\n"
    )
    message = EmailMessage(
        subject=f"Credit note {note.number} for invoice {note.invoice.number}",
        body=body,
        from_email=_sender(),
        to=[to],
    )
    message.attach(credit_note_filename(note), credit_note_pdf(note), "application/pdf")
    return message


def document_email_send(*, kind: str, document_id: int, attempt: int) -> Delivery | None:
    """E-mail one invoice (``kind="invoice"``) or credit note, once, and record the attempt.
    Raises :class:`EmailFailed` after recording a failure, so the task retries it; an
    address that is missing is recorded and not retried (nothing to retry)."""
    document: Invoice | CreditNote
    link: dict[str, Invoice | CreditNote]
    if kind == "invoice":
        document = Invoice.objects.select_related("tenant", "replaces").get(pk=document_id)
        link = {"invoice": document}
    else:
        document = CreditNote.objects.select_related("tenant", "invoice").get(pk=document_id)
        link = {"credit_note": document}
    to = (document.bill_to or {}).get("email") or document.tenant.billing_email
    what = f"{kind.replace('_', ' ')} {document.number}"
    if not to:
        return Delivery.objects.create(
            channel=Delivery.Channel.EMAIL,
            tenant_id=document.tenant_id,
            what=what,
            target="",
            attempt=attempt,
            ok=False,
            detail="The tenant has no billing e-mail: set one (the tenant's admin page), then resend.",
            **link,
        )
    ok, detail = False, ""
    try:
        message = (
            _invoice_message(document, to) if isinstance(document, Invoice) else _credit_note_message(document, to)
        )
        sent = message.send(fail_silently=False)
        ok, detail = bool(sent), "sent" if sent else "not sent"
    except (OSError, ValueError) as exc:  # smtplib's errors are OSErrors
        detail = f"{type(exc).__name__}: {exc}"[:500]
    delivery = Delivery.objects.create(
        channel=Delivery.Channel.EMAIL,
        tenant_id=document.tenant_id,
        what=what,
        target=to,
        attempt=attempt,
        ok=ok,
        detail=detail,
        **link,
    )
    if not ok:
        raise EmailFailed(detail)
    return delivery
