"""What finance downloads: invoices and credit notes as PDF (ReportLab) and CSV, and the registers."""

from __future__ import annotations

import contextlib
import csv
import io
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from billing.models import CreditNote, Invoice, InvoiceLine, IssuerLogo
from billing.money import USD, format_money
from billing.selectors import billing_profile_of, issuer_get

INK = colors.HexColor("#1f2937")
ACCENT = colors.HexColor("#0f766e")
RULE = colors.HexColor("#d1d5db")
CENT_HALF = Decimal("0.005")


def money(amount: Decimal) -> str:
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount):,.2f}"


def rate(value: Decimal | None) -> str:
    if value is None:
        return ""
    whole, _, fraction = f"{value:.6f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"  # $9.20, $0.075, $2.00


def tokens(value: int) -> str:
    return f"{value:,}" if value else ""


def invoice_title(invoice: Invoice) -> str:
    if invoice.status == Invoice.Status.DRAFT:
        return "DRAFT INVOICE"
    if invoice.status == Invoice.Status.VOID:
        return "VOID INVOICE"
    if invoice.status == Invoice.Status.PAID:
        return "INVOICE (PAID)"
    return "INVOICE"


def invoice_filename(invoice: Invoice, ext: str) -> str:
    return f"{invoice.number or f'draft-{invoice.tenant.slug}-{invoice.period}'}.{ext}"


def period_text(invoice: Invoice) -> str:
    """The service period in the tenant's own dates, e.g. 1 to 31 October 2026, Europe/Berlin (en dash)."""
    tz_name = (invoice.bill_to or {}).get("timezone") or invoice.tenant.timezone
    tz = zoneinfo.ZoneInfo(tz_name)
    first = invoice.period_start.astimezone(tz).date()
    last = (invoice.period_end.astimezone(tz) - timedelta(microseconds=1)).date()
    if (first.year, first.month) == (last.year, last.month):
        days = f"{first.day}–{last.day} {last:%B %Y}"
    else:
        days = f"{first.day} {first:%B %Y}–{last.day} {last:%B %Y}"
    return f"{days}, {tz_name}"


def _issuer_of(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The issuer as printed: the document's snapshot, or (a draft) the issuer now."""
    if snapshot:
        return snapshot
    issuer = issuer_get()
    return {
        "legal_name": issuer.legal_name,
        "address": issuer.address,
        "country": issuer.country,
        "tax_id": issuer.tax_id,
        "email": issuer.email,
        "payment_instructions": issuer.payment_instructions,
        "logo": issuer.logo_id or "",
    }


def _bill_to_of(invoice: Invoice) -> dict[str, Any]:
    if invoice.bill_to:
        return invoice.bill_to
    tenant = invoice.tenant
    profile = billing_profile_of(tenant)
    return {
        "name": profile.legal_name or tenant.name,
        "slug": tenant.slug,
        "email": tenant.billing_email,
        "address": profile.address,
        "country": profile.country,
        "tax_id": profile.tax_id,
    }


@dataclass
class _Styles:
    body: ParagraphStyle
    small: ParagraphStyle
    brand: ParagraphStyle
    title: ParagraphStyle
    right: ParagraphStyle
    cell: ParagraphStyle


def _styles() -> _Styles:
    styles = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=styles["Normal"], fontSize=9, leading=12, textColor=INK)
    return _Styles(
        body=body,
        small=ParagraphStyle("small", parent=body, fontSize=7.5, leading=10, textColor=colors.HexColor("#6b7280")),
        brand=ParagraphStyle(
            "brand", parent=body, fontSize=16, leading=20, textColor=ACCENT, fontName="Helvetica-Bold"
        ),
        title=ParagraphStyle(
            "title", parent=body, fontSize=16, leading=20, alignment=TA_RIGHT, fontName="Helvetica-Bold"
        ),
        right=ParagraphStyle("right", parent=body, alignment=TA_RIGHT),
        cell=ParagraphStyle("cell", parent=body, fontSize=8, leading=10),
    )


def _lines(text: str) -> list[str]:
    return [escape(line) for line in (text or "").splitlines() if line.strip()]


def _party(st: _Styles, heading: str, party: dict[str, Any], name_key: str) -> list[Any]:
    out: list[Any] = [Paragraph(f"<b>{heading}</b>", st.body), Paragraph(escape(party.get(name_key) or ""), st.body)]
    out += [Paragraph(line, st.body) for line in _lines(party.get("address") or "")]
    if party.get("country"):
        out.append(Paragraph(escape(party["country"]), st.body))
    if party.get("tax_id"):
        out.append(Paragraph(f"Tax id: {escape(party['tax_id'])}", st.body))
    if party.get("email"):
        out.append(Paragraph(escape(party["email"]), st.body))
    return out


def _head(st: _Styles, issuer: dict[str, Any], title: str, facts: list[str]) -> Table:
    left: list[Any] = []
    logo = IssuerLogo.objects.filter(sha256=issuer.get("logo") or "").first() if issuer.get("logo") else None
    if logo is not None:
        with contextlib.suppress(OSError):  # an image ReportLab cannot read: print the name alone
            left.append(Image(io.BytesIO(bytes(logo.data)), width=40 * mm, height=14 * mm, kind="proportional"))
    left.append(Paragraph(escape(issuer.get("legal_name") or ""), st.brand))
    right = [Paragraph(title, st.title), *(Paragraph(fact, st.right) for fact in facts)]
    head = Table([[left, right]], colWidths=[95 * mm, 79 * mm])
    head.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LINEBELOW", (0, 0), (-1, 0), 1.2, ACCENT)]))
    return head


def _doc(buffer: io.BytesIO, title: str, author: str) -> SimpleDocTemplate:
    return SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=16 * mm,
        title=title,
        author=author,
    )


def _totals_table(rows: list[list[str]], bold_last: bool = True) -> Table:
    totals = Table(rows, colWidths=[70 * mm, 40 * mm], hAlign="RIGHT")
    style: list[Any] = [
        ("FONT", (0, 0), (-1, -1), "Helvetica", 9),
        ("ALIGN", (1, 0), (1, -1), "RIGHT"),
    ]
    if bold_last:
        style += [("FONT", (0, -1), (-1, -1), "Helvetica-Bold", 10), ("LINEABOVE", (0, -1), (-1, -1), 1, INK)]
    totals.setStyle(TableStyle(style))
    return totals


def _tax_name(label: str, rate: Decimal | None) -> str:
    return f"{label or 'Tax'} {(rate or Decimal(0)).normalize():f}%"


def invoice_pdf(invoice: Invoice) -> bytes:
    """The invoice as PDF: issuer and customer (names, addresses, tax ids), number, issue and
    due dates, payment terms, the service period in the tenant's dates, the lines, net, tax
    and gross in the invoice currency with the USD figures beside, and how to pay."""
    st = _styles()
    issuer = _issuer_of(invoice.issuer)
    bill_to = _bill_to_of(invoice)
    buffer = io.BytesIO()
    doc = _doc(buffer, f"Invoice {invoice.number or 'draft'}", issuer.get("legal_name") or "")
    facts = [f"No. <b>{invoice.number or '(assigned at finalisation)'}</b>"]
    if invoice.issue_date:
        facts.append(f"Issue date: {invoice.issue_date:%d %B %Y}")
        facts.append(f"Due date: <b>{invoice.due_date:%d %B %Y}</b>" if invoice.due_date else "")
        facts.append(f"Payment terms: net {invoice.payment_terms_days} days")
    else:
        facts.append("Not issued")
    story: list[Any] = [_head(st, issuer, invoice_title(invoice), facts), Spacer(1, 6 * mm)]

    meta_right = [
        Paragraph("<b>Service period</b>", st.right),
        Paragraph(escape(period_text(invoice)), st.right),
        Paragraph(f"Account: {escape(bill_to.get('slug') or '')}", st.right),
        Paragraph(f"Currency: {invoice.currency}", st.right),
    ]
    if invoice.replaces and invoice.replaces.number:
        meta_right.append(Paragraph(f"Replaces {invoice.replaces.number}", st.right))
    meta = Table(
        [[_party(st, "From", issuer, "legal_name"), _party(st, "Bill to", bill_to, "name"), meta_right]],
        colWidths=[58 * mm, 58 * mm, 58 * mm],
    )
    meta.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    story += [meta, Spacer(1, 6 * mm)]

    header = ["Description", "Requests", "Input tok.", "Cached tok.", "Output tok.", "Unit prices / Mtok", "Amount"]
    rows: list[list[Any]] = [header]
    sub_cent = False
    for line in invoice.lines.all():
        prices = ""
        if line.kind in (InvoiceLine.Kind.USAGE, InvoiceLine.Kind.ADJUSTMENT):
            parts = [f"in {rate(line.input_price_per_mtok)}"]
            if line.cached_input_tokens:
                parts.append(f"cached {rate(line.cached_input_price_per_mtok)}")
            parts.append(f"out {rate(line.output_price_per_mtok)}")
            prices = "<br/>".join(parts)
        amount = money(line.amount_usd)
        if line.exact_usd and abs(line.exact_usd) < CENT_HALF:
            amount += "*"
            sub_cent = True
        rows.append(
            [
                Paragraph(escape(line.description), st.cell),
                tokens(line.requests),
                tokens(line.input_tokens),
                tokens(line.cached_input_tokens),
                tokens(line.output_tokens),
                Paragraph(prices, st.cell),
                amount,
            ]
        )
    if len(rows) == 1:
        rows.append([Paragraph("No usage this period", st.cell), "", "", "", "", "", money(Decimal(0))])
    table = Table(rows, colWidths=[50 * mm, 15 * mm, 21 * mm, 19 * mm, 21 * mm, 26 * mm, 22 * mm], repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
                ("FONT", (0, 1), (-1, -1), "Helvetica", 8),
                ("TEXTCOLOR", (0, 0), (-1, 0), colors.white),
                ("BACKGROUND", (0, 0), (-1, 0), ACCENT),
                ("ALIGN", (1, 0), (4, -1), "RIGHT"),
                ("ALIGN", (6, 0), (6, -1), "RIGHT"),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f3f4f6")]),
                ("LINEBELOW", (0, -1), (-1, -1), 0.6, RULE),
            ]
        )
    )
    story += [table, Spacer(1, 5 * mm)]

    tax_name = _tax_name(invoice.tax_label, invoice.tax_rate_percent)
    usd = [
        ["Subtotal (USD)", money(invoice.subtotal_usd)],
        ["Credits applied (USD)", money(-invoice.credits_applied_usd)],
        ["Net (USD)", money(invoice.total_usd)],
    ]
    if invoice.is_draft:
        usd.append(["Tax and currency", "at finalisation"])
        story.append(_totals_table(usd, bold_last=False))
    else:
        usd += [[f"{tax_name} (USD)", money(invoice.tax_usd)], ["Total (USD)", money(invoice.gross_usd)]]
        if invoice.currency == USD:
            usd[-1] = ["Total due (USD)", money(invoice.gross_usd)]
            story.append(_totals_table(usd))
        else:
            story.append(_totals_table(usd, bold_last=False))
            story.append(Spacer(1, 3 * mm))
            assert invoice.net_amount is not None and invoice.tax_amount is not None
            assert invoice.gross_amount is not None
            story.append(
                _totals_table(
                    [
                        [
                            f"Exchange rate ({invoice.fx_rate_date:%d %B %Y})",
                            f"1 USD = {invoice.fx_rate:f} {invoice.currency}",
                        ],
                        [f"Net ({invoice.currency})", format_money(invoice.net_amount, invoice.currency)],
                        [f"{tax_name} ({invoice.currency})", format_money(invoice.tax_amount, invoice.currency)],
                        [f"Total due ({invoice.currency})", format_money(invoice.gross_amount, invoice.currency)],
                    ]
                )
            )
    story.append(Spacer(1, 6 * mm))
    if invoice.reverse_charge:
        story.append(
            Paragraph(
                "<b>Reverse charge:</b> no tax is charged; the customer accounts for the tax "
                "(EU VAT Directive 2006/112/EC, Article 196).",
                st.body,
            )
        )
    if issuer.get("payment_instructions") and not invoice.is_draft:
        story.append(Paragraph("<b>How to pay</b>", st.body))
        story += [Paragraph(line, st.body) for line in _lines(issuer["payment_instructions"])]
        story.append(Paragraph(f"Please quote the invoice number {invoice.number}.", st.body))
    story.append(Spacer(1, 4 * mm))
    notes = (
        "Amounts are the exact ledger sums (USD, 9 decimal places) rounded half-up to the cent once per line; "
        "the net is the sum of the lines; tax is the net times the rate, rounded half-up once. "
        "In another currency each line is converted at the rate shown and rounded half-up to that "
        "currency's minor unit. Token prices are per million tokens, markup included. Input tokens include "
        "the cached ones, charged at the cached price."
    )
    if sub_cent:
        notes += " * Under half a cent: shown (it rounds to $0.00) so every model used is listed."
    story.append(Paragraph(notes, st.small))
    if invoice.status == Invoice.Status.VOID and invoice.voided_at:
        story.append(Paragraph(f"<b>Void</b> on {invoice.voided_at:%Y-%m-%d}: {escape(invoice.void_reason)}", st.body))
    if invoice.status == Invoice.Status.PAID and invoice.paid_on:
        ref = f" (reference {escape(invoice.payment_reference)})" if invoice.payment_reference else ""
        story.append(Paragraph(f"<b>Paid</b> on {invoice.paid_on:%d %B %Y}{ref}. Thank you.", st.body))
    doc.build(story)
    return buffer.getvalue()


def credit_note_filename(note: CreditNote, ext: str = "pdf") -> str:
    return f"{note.number}.{ext}"


def credit_note_pdf(note: CreditNote) -> bytes:
    """A credit note as PDF: both parties, the invoice it credits, why, what, and the totals."""
    st = _styles()
    issuer = note.issuer or _issuer_of({})
    buffer = io.BytesIO()
    doc = _doc(buffer, f"Credit note {note.number}", issuer.get("legal_name") or "")
    facts = [
        f"No. <b>{note.number}</b>",
        f"Issue date: {note.issue_date:%d %B %Y}",
        f"Credits invoice <b>{note.invoice.number}</b>",
        f"Service period: {escape(period_text(note.invoice))}",
    ]
    story: list[Any] = [_head(st, issuer, "CREDIT NOTE", facts), Spacer(1, 6 * mm)]
    parties = Table(
        [[_party(st, "From", issuer, "legal_name"), _party(st, "Credit to", note.bill_to or {}, "name")]],
        colWidths=[87 * mm, 87 * mm],
    )
    parties.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    story += [
        parties,
        Spacer(1, 4 * mm),
        Paragraph(f"<b>Reason:</b> {escape(note.reason)}", st.body),
        Spacer(1, 4 * mm),
    ]
    rows: list[list[Any]] = [["Invoice line", "Description", "Amount (USD)", f"Amount ({note.currency})"]]
    for line in note.lines:
        rows.append(
            [
                str(line.get("position") or ""),
                Paragraph(escape(line["description"]), st.cell),
                money(Decimal(line["amount_usd"])),
                format_money(Decimal(line["amount"]), note.currency),
            ]
        )
    table = Table(rows, colWidths=[22 * mm, 92 * mm, 30 * mm, 30 * mm], repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
                ("FONT", (0, 1), (-1, -1), "Helvetica", 8),
                ("TEXTCOLOR", (0, 0), (-1, 0), colors.white),
                ("BACKGROUND", (0, 0), (-1, 0), ACCENT),
                ("ALIGN", (2, 0), (3, -1), "RIGHT"),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    story += [table, Spacer(1, 5 * mm)]
    tax_name = _tax_name(note.tax_label, note.tax_rate_percent)
    story.append(
        _totals_table(
            [
                ["Net credited (USD)", money(note.net_usd)],
                [f"{tax_name} (USD)", money(note.tax_usd)],
                [f"Net credited ({note.currency})", format_money(note.net_amount, note.currency)],
                [f"{tax_name} ({note.currency})", format_money(note.tax_amount, note.currency)],
                [f"Total credited ({note.currency})", format_money(note.gross_amount, note.currency)],
            ]
        )
    )
    if note.currency != USD:
        story.append(Paragraph(f"At the invoice's rate: 1 USD = {note.fx_rate:f} {note.currency}.", st.small))
    if note.reverse_charge:
        story.append(Paragraph("<b>Reverse charge:</b> the customer accounts for the tax.", st.body))
    doc.build(story)
    return buffer.getvalue()


INVOICE_CSV_HEADER = [
    "invoice_number",
    "status",
    "tenant",
    "period",
    "line",
    "kind",
    "description",
    "model",
    "usage_period",
    "requests",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "input_price_per_mtok",
    "cached_input_price_per_mtok",
    "output_price_per_mtok",
    "exact_usd",
    "amount_usd",
]


def _plain(value: Decimal | None) -> str:
    return "" if value is None else f"{value:f}"


def invoice_csv(invoice: Invoice) -> str:
    """One row per line, then a TOTAL row; amounts in plain decimal notation."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(INVOICE_CSV_HEADER)
    for line in invoice.lines.select_related("model"):
        writer.writerow(
            [
                invoice.number or "",
                invoice.status,
                invoice.tenant.slug,
                invoice.period,
                line.position,
                line.kind,
                line.description,
                line.model.name if line.model else "",
                line.usage_period,
                line.requests,
                line.input_tokens,
                line.cached_input_tokens,
                line.cache_write_tokens,
                line.output_tokens,
                _plain(line.input_price_per_mtok),
                _plain(line.cached_input_price_per_mtok),
                _plain(line.output_price_per_mtok),
                _plain(line.exact_usd),
                _plain(line.amount_usd),
            ]
        )
    writer.writerow(
        [invoice.number or "", invoice.status, invoice.tenant.slug, invoice.period, "", "total", "Total due"]
        + [""] * 11
        + [_plain(invoice.total_usd)]
    )
    return out.getvalue()


INVOICES_CSV_HEADER = [
    "invoice_number",
    "status",
    "tenant",
    "customer",
    "tax_id",
    "country",
    "period",
    "issue_date",
    "due_date",
    "currency",
    "net",
    "tax",
    "gross",
    "fx_rate",
    "fx_rate_date",
    "tax_rate_percent",
    "reverse_charge",
    "net_usd",
    "tax_usd",
    "gross_usd",
    "credited_usd",
    "paid_on",
    "payment_reference",
    "replaces",
]


def invoices_csv(invoices: Iterable[Invoice]) -> str:
    """The invoice register: one row per invoice, with the customer's tax id, net, tax and
    gross in the invoice currency and in USD, the rate, the payment state and the credit
    notes against it (their net, USD)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(INVOICES_CSV_HEADER)
    for invoice in invoices:
        bill_to = invoice.bill_to or {}
        credited = sum((note.net_usd for note in invoice.credit_notes.all()), Decimal(0))
        writer.writerow(
            [
                invoice.number or "",
                invoice.status,
                invoice.tenant.slug,
                bill_to.get("name") or invoice.tenant.name,
                bill_to.get("tax_id", ""),
                bill_to.get("country", ""),
                invoice.period,
                invoice.issue_date or "",
                invoice.due_date or "",
                invoice.currency,
                _plain(invoice.net_amount),
                _plain(invoice.tax_amount),
                _plain(invoice.gross_amount),
                _plain(invoice.fx_rate),
                invoice.fx_rate_date or "",
                _plain(invoice.tax_rate_percent),
                "yes" if invoice.reverse_charge else "",
                _plain(invoice.total_usd),
                _plain(invoice.tax_usd),
                _plain(invoice.gross_usd),
                _plain(credited),
                invoice.paid_on or "",
                invoice.payment_reference,
                invoice.replaces.number if invoice.replaces else "",
            ]
        )
    return out.getvalue()


CREDIT_NOTES_CSV_HEADER = [
    "credit_note_number",
    "invoice_number",
    "tenant",
    "customer",
    "tax_id",
    "issue_date",
    "reason",
    "kind",
    "currency",
    "net",
    "tax",
    "gross",
    "fx_rate",
    "tax_rate_percent",
    "net_usd",
    "tax_usd",
    "gross_usd",
    "issued_by",
]


def credit_notes_csv(notes: Iterable[CreditNote]) -> str:
    """The credit note register: one row per credit note."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CREDIT_NOTES_CSV_HEADER)
    for note in notes:
        writer.writerow(
            [
                note.number,
                note.invoice.number,
                note.tenant.slug,
                (note.bill_to or {}).get("name", ""),
                (note.bill_to or {}).get("tax_id", ""),
                note.issue_date,
                note.reason,
                note.kind,
                note.currency,
                _plain(note.net_amount),
                _plain(note.tax_amount),
                _plain(note.gross_amount),
                _plain(note.fx_rate),
                _plain(note.tax_rate_percent),
                _plain(note.net_usd),
                _plain(note.tax_usd),
                _plain(note.gross_usd),
                note.issued_by,
            ]
        )
    return out.getvalue()


def credit_note_csv(note: CreditNote) -> str:
    """One credit note's lines, then its totals."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["credit_note_number", "invoice_number", "line", "description", "amount_usd", "amount", "currency"])
    for line in note.lines:
        writer.writerow(
            [
                note.number,
                note.invoice.number,
                line.get("position") or "",
                line["description"],
                line["amount_usd"],
                line["amount"],
                note.currency,
            ]
        )
    writer.writerow(
        [note.number, note.invoice.number, "", "net", _plain(note.net_usd), _plain(note.net_amount), note.currency]
    )
    writer.writerow(
        [note.number, note.invoice.number, "", "tax", _plain(note.tax_usd), _plain(note.tax_amount), note.currency]
    )
    writer.writerow(
        [
            note.number,
            note.invoice.number,
            "",
            "gross",
            _plain(note.gross_usd),
            _plain(note.gross_amount),
            note.currency,
        ]
    )
    return out.getvalue()
