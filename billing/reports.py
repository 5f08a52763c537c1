"""Cost reports, as CSV and HTML, kept as ``Report`` rows finance downloads from the admin.

* a monthly **statement** per tenant: usage and cost per model, and the month's invoice;
* the platform **margin** report: revenue, upstream cost and margin per model and provider;
* the month's **invoices**: every invoice of the period, one row each.

Every amount is summed in SQL from the ledger; building a report again replaces it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Count, F, Sum
from django.utils.html import escape

from billing.documents import invoices_csv
from billing.invoicing import period_of
from billing.models import Invoice, Report, UsageRecord
from billing.pricing import LEDGER_QUANTUM
from tenants.models import Tenant


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return f"{value.quantize(LEDGER_QUANTUM):f}"
    return "" if value is None else str(value)


def _csv(header: Sequence[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows([[_text(v) for v in row] for row in rows])
    return out.getvalue()


def _html(title: str, header: Sequence[str], rows: list[list[Any]], note: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(_text(v))}</td>" for v in row) + "</tr>" for row in rows)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        "<style>body{font:14px system-ui;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#0f766e;color:#fff}"
        "td:first-child,td:nth-child(2){text-align:left}</style></head>"
        f"<body><h1>{escape(title)}</h1><p>{escape(note)}</p><table><tr>{head}</tr>{body}</table></body></html>"
    )


def _save(kind: str, period: str, tenant: Tenant | None, csv_text: str, html: str) -> Report:
    with transaction.atomic():
        Report.objects.filter(kind=kind, period=period, tenant=tenant).delete()
        return Report.objects.create(kind=kind, period=period, tenant=tenant, csv=csv_text, html=html)


STATEMENT_HEADER = ["model", "requests", "input_tokens", "cached_input_tokens", "output_tokens", "cost_usd"]


def statement_build(*, tenant: Tenant, period: str) -> Report:
    """The tenant's month (in its zone): usage and cost per model, from the ledger."""
    bounds = period_of(tz_name=tenant.timezone, label=period)
    groups = (
        UsageRecord.objects.filter(tenant=tenant, created_at__gte=bounds.start, created_at__lt=bounds.end)
        .values("model__name")
        .annotate(
            n=Count("id"),
            i=Sum("input_tokens"),
            c=Sum("cached_input_tokens"),
            o=Sum("output_tokens"),
            cost=Sum("cost"),
        )
        .order_by("model__name")
    )
    rows = [[g["model__name"], g["n"], g["i"], g["c"], g["o"], g["cost"]] for g in groups]
    total = sum((row[5] for row in rows), Decimal(0))
    rows.append(["TOTAL", sum(r[1] for r in rows), sum(r[2] for r in rows), sum(r[3] for r in rows),
                 sum(r[4] for r in rows), total])  # fmt: skip
    invoice = Invoice.objects.filter(tenant=tenant, period=period).exclude(status=Invoice.Status.VOID).first()
    note = f"{tenant.name} ({tenant.slug}), {period} in {tenant.timezone}. " + (
        f"Invoice {invoice}: ${invoice.total_usd} ({invoice.status})." if invoice else "No invoice yet."
    )
    title = f"Statement {period}: {tenant.name}"
    return _save(
        Report.Kind.STATEMENT, period, tenant, _csv(STATEMENT_HEADER, rows), _html(title, STATEMENT_HEADER, rows, note)
    )


MARGIN_HEADER = ["model", "provider", "requests", "revenue_usd", "upstream_cost_usd", "margin_usd", "margin_percent"]


def _pct(part: Decimal, whole: Decimal) -> str:
    return f"{(part / whole * 100).quantize(Decimal('0.01')):f}" if whole else ""


def margin_rows(*, period: str) -> list[list[Any]]:
    bounds = period_of(tz_name="UTC", label=period)
    groups = (
        UsageRecord.objects.filter(created_at__gte=bounds.start, created_at__lt=bounds.end)
        .values("model__name", "provider")
        .annotate(n=Count("id"), revenue=Sum("cost"), upstream=Sum("upstream_cost"))
        .annotate(margin=F("revenue") - F("upstream"))
        .order_by("model__name", "provider")
    )
    rows = []
    for g in groups:
        rows.append(
            [
                g["model__name"],
                g["provider"],
                g["n"],
                g["revenue"],
                g["upstream"],
                g["margin"],
                _pct(g["margin"], g["revenue"]),
            ]
        )
    return rows


def margin_report_build(*, period: str) -> Report:
    """The platform's UTC month: what tenants paid, what the providers cost at list price, the margin."""
    rows = margin_rows(period=period)
    revenue = sum((r[3] for r in rows), Decimal(0))
    upstream = sum((r[4] for r in rows), Decimal(0))
    rows.append(
        ["TOTAL", "", sum(r[2] for r in rows), revenue, upstream, revenue - upstream, _pct(revenue - upstream, revenue)]
    )
    title = f"Platform margin {period} (UTC)"
    return _save(Report.Kind.MARGIN, period, None, _csv(MARGIN_HEADER, rows), _html(title, MARGIN_HEADER, rows))


def invoices_report_build(*, period: str) -> Report:
    invoices = Invoice.objects.filter(period=period).select_related("tenant", "replaces").order_by("number", "pk")
    text = invoices_csv(invoices)
    rows = list(csv.reader(io.StringIO(text)))
    return _save(Report.Kind.INVOICES, period, None, text, _html(f"Invoices {period}", rows[0], rows[1:]))
