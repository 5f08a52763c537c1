"""What finance downloads: an invoice as PDF (ReportLab) or CSV, and a month's invoices as CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from decimal import Decimal

from django.conf import settings
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from billing.models import Invoice, InvoiceLine

INK = colors.HexColor("#1f2937")
ACCENT = colors.HexColor("#0f766e")
RULE = colors.HexColor("#d1d5db")


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
    return "INVOICE"


def invoice_filename(invoice: Invoice, ext: str) -> str:
    return f"{invoice.number or f'draft-{invoice.tenant.slug}-{invoice.period}'}.{ext}"


def invoice_pdf(invoice: Invoice) -> bytes:
    """A one-document PDF: issuer header, bill-to, lines with tokens and unit prices, totals."""
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=16 * mm,
        title=f"Invoice {invoice.number or 'draft'}",
        author=settings.TOLLWAY["INVOICE_ISSUER"][0],
    )
    styles = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=styles["Normal"], fontSize=9, leading=12, textColor=INK)
    small = ParagraphStyle("small", parent=body, fontSize=7.5, leading=10, textColor=colors.HexColor("#6b7280"))
    brand = ParagraphStyle("brand", parent=body, fontSize=22, leading=26, textColor=ACCENT, fontName="Helvetica-Bold")
    title = ParagraphStyle("title", parent=body, fontSize=16, leading=20, alignment=TA_RIGHT, fontName="Helvetica-Bold")
    right = ParagraphStyle("right", parent=body, alignment=TA_RIGHT)
    cell = ParagraphStyle("cell", parent=body, fontSize=8, leading=10)

    issuer = settings.TOLLWAY["INVOICE_ISSUER"]
    tenant = invoice.tenant
    bill_to = invoice.bill_to or {"name": tenant.name, "slug": tenant.slug, "email": tenant.billing_email}
    story: list = []

    head = Table(
        [
            [
                [Paragraph(issuer[0], brand), *(Paragraph(line, small) for line in issuer[1:])],
                [
                    Paragraph(invoice_title(invoice), title),
                    Paragraph(f"No. <b>{invoice.number or '(assigned at finalisation)'}</b>", right),
                    Paragraph(
                        f"Issued {invoice.finalized_at:%d %B %Y}" if invoice.finalized_at else "Not issued", right
                    ),
                ],
            ]
        ],
        colWidths=[95 * mm, 79 * mm],
    )
    head.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LINEBELOW", (0, 0), (-1, 0), 1.2, ACCENT)]))
    story += [head, Spacer(1, 6 * mm)]

    meta = Table(
        [
            [
                [
                    Paragraph("<b>Bill to</b>", body),
                    Paragraph(bill_to.get("name", ""), body),
                    Paragraph(f"Account: {bill_to.get('slug', '')}", body),
                    Paragraph(bill_to.get("email") or "", body),
                ],
                [
                    Paragraph(f"<b>Billing period</b> {invoice.period}", right),
                    Paragraph(
                        f"{invoice.period_start:%Y-%m-%d %H:%M} to {invoice.period_end:%Y-%m-%d %H:%M} UTC", right
                    ),
                    Paragraph(f"Currency: {invoice.currency}", right),
                    Paragraph(
                        f"Replaces {invoice.replaces.number}" if invoice.replaces and invoice.replaces.number else "",
                        right,
                    ),
                ],
            ]
        ],
        colWidths=[95 * mm, 79 * mm],
    )
    meta.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    story += [meta, Spacer(1, 6 * mm)]

    header = ["Description", "Requests", "Input tok.", "Cached tok.", "Output tok.", "Unit prices / Mtok", "Amount"]
    rows: list[list] = [header]
    for line in invoice.lines.all():
        prices = ""
        if line.kind in (InvoiceLine.Kind.USAGE, InvoiceLine.Kind.ADJUSTMENT):
            parts = [f"in {rate(line.input_price_per_mtok)}"]
            if line.cached_input_tokens:
                parts.append(f"cached {rate(line.cached_input_price_per_mtok)}")
            parts.append(f"out {rate(line.output_price_per_mtok)}")
            prices = "<br/>".join(parts)
        rows.append(
            [
                Paragraph(line.description, cell),
                tokens(line.requests),
                tokens(line.input_tokens),
                tokens(line.cached_input_tokens),
                tokens(line.output_tokens),
                Paragraph(prices, cell),
                money(line.amount_usd),
            ]
        )
    if len(rows) == 1:
        rows.append([Paragraph("No usage this period", cell), "", "", "", "", "", money(Decimal(0))])
    table = Table(rows, colWidths=[46 * mm, 17 * mm, 22 * mm, 20 * mm, 22 * mm, 27 * mm, 20 * mm], repeatRows=1)
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

    totals = Table(
        [
            ["Subtotal", money(invoice.subtotal_usd)],
            ["Credits applied", money(-invoice.credits_applied_usd)],
            [f"Total due ({invoice.currency})", money(invoice.total_usd)],
        ],
        colWidths=[40 * mm, 30 * mm],
        hAlign="RIGHT",
    )
    totals.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, -1), "Helvetica", 9),
                ("FONT", (0, 2), (-1, 2), "Helvetica-Bold", 10),
                ("ALIGN", (1, 0), (1, -1), "RIGHT"),
                ("LINEABOVE", (0, 2), (-1, 2), 1, INK),
            ]
        )
    )
    story += [totals, Spacer(1, 8 * mm)]
    story.append(
        Paragraph(
            "Amounts are the exact ledger sums (USD, 9 decimal places) rounded half-up to the cent once per line; "
            "the total is the sum of the lines. Token prices are per million tokens, markup included. "
            "Input tokens include the cached ones, which are charged at the cached price.",
            small,
        )
    )
    if invoice.status == Invoice.Status.VOID:
        story.append(Paragraph(f"<b>Void</b> on {invoice.voided_at:%Y-%m-%d}: {invoice.void_reason}", body))
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
    "tenant_name",
    "period",
    "finalized_at",
    "currency",
    "subtotal_usd",
    "credits_applied_usd",
    "total_usd",
    "replaces",
]


def invoices_csv(invoices: Iterable[Invoice]) -> str:
    """The platform-wide list: one row per invoice (a month's, for finance)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(INVOICES_CSV_HEADER)
    for invoice in invoices:
        writer.writerow(
            [
                invoice.number or "",
                invoice.status,
                invoice.tenant.slug,
                invoice.tenant.name,
                invoice.period,
                invoice.finalized_at.isoformat() if invoice.finalized_at else "",
                invoice.currency,
                _plain(invoice.subtotal_usd),
                _plain(invoice.credits_applied_usd),
                _plain(invoice.total_usd),
                invoice.replaces.number if invoice.replaces else "",
            ]
        )
    return out.getvalue()
