"""The tenant dashboard: spend, the daily chart, top keys, recent requests, invoices, keys.

Session-authenticated pages (``tenants.web.member_required``); every query is scoped to
the logged-in user's tenant, so another tenant's invoice number answers 404.
"""

from __future__ import annotations

import zoneinfo
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.safestring import mark_safe

from billing import admission, alerts, charts
from billing.documents import invoice_filename, invoice_pdf
from billing.models import Invoice, UsageRecord
from billing.selectors import daily_cost_by_model, tenant_money
from tenants import selectors as tenant_selectors
from tenants.forms import DashboardKeyForm
from tenants.models import Membership, Tenant
from tenants.web import member_required

CHART_DAYS = (30, 90)


def _local_today(tenant: Tenant) -> date:
    return timezone.now().astimezone(zoneinfo.ZoneInfo(tenant.timezone)).date()


def spend_chart(tenant: Tenant, days: int) -> charts.Chart:
    """The last ``days`` local days of spend by day and model, from the same rollups (and
    live ledger for recent days) as ``GET /v1/usage``, so it stays fast over millions of rows."""
    end = _local_today(tenant)
    start = end - timedelta(days=days - 1)
    return charts.daily_spend_svg(start=start, end=end, rows=daily_cost_by_model(tenant=tenant, start=start, end=end))


def invoice_list(tenant: Tenant) -> list[Invoice]:
    # As in the API: a draft is not an invoice yet.
    invoices = list(Invoice.objects.filter(tenant=tenant).exclude(status=Invoice.Status.DRAFT).order_by("-pk")[:24])
    today = _local_today(tenant)
    for invoice in invoices:
        invoice.overdue = invoice.is_overdue(today)  # type: ignore[attr-defined]  # for the template
    return invoices


@member_required()
def dashboard(request: HttpRequest) -> HttpResponse:
    membership: Membership = request.membership  # type: ignore[attr-defined]
    tenant = membership.tenant
    try:
        days = int(request.GET.get("days", "30"))
    except ValueError:
        days = 30
    days = days if days in CHART_DAYS else 30
    money = tenant_money(tenant)["billing"]
    chart = spend_chart(tenant, days)
    _, month_start, _ = _month(tenant)
    month_rows = UsageRecord.objects.filter(tenant=tenant, created_at__gte=month_start)
    top_keys = (
        month_rows.values("api_key__key_id", "api_key__last4", "api_key__name")
        .annotate(cost=Sum("cost"), requests=Count("pk"))
        .order_by("-cost")[:5]
    )
    recent = (
        UsageRecord.objects.filter(tenant=tenant)
        .select_related("model", "api_key__user")
        .order_by("-created_at", "-pk")[:15]
    )
    keys = [k for k in tenant_selectors.api_key_list(tenant_id=tenant.pk) if k.user_id is None]
    return render(
        request,
        "billing/dashboard.html",
        {
            "tenant": tenant,
            "membership": membership,
            "money": money,
            "spend": Decimal(money["spend_usd"]),
            "budget": Decimal(money["budget_usd"]) if money["budget_usd"] else None,
            "credit": Decimal(money["credit_balance_usd"]) if money["credit_balance_usd"] else None,
            "chart": chart,
            "chart_svg": mark_safe(chart.svg),  # noqa: S308  # built only from numbers and escape()d names
            "days": days,
            "day_choices": CHART_DAYS,
            "top_keys": top_keys,
            "recent": recent,
            "invoices": invoice_list(tenant) if membership.role != Membership.Role.DEVELOPER else [],
            "today": _local_today(tenant),
            "refusing": alerts.refusing(tenant.pk),
            "contacts": (alerts.configs.get(str(tenant.pk)) or alerts.AlertConfig(None, (), None, "")).contacts,
            "keys": keys,
            "key_form": DashboardKeyForm(),
            "now": timezone.now(),
        },
    )


def _month(tenant: Tenant) -> tuple[str, datetime, datetime]:
    return admission.month_bounds(tenant.timezone, admission.clock())


@member_required(Membership.Role.OWNER, Membership.Role.BILLING)
def invoice_pdf_download(request: HttpRequest, number: str) -> HttpResponse:
    membership: Membership = request.membership  # type: ignore[attr-defined]
    invoice = (
        Invoice.objects.filter(tenant_id=membership.tenant_id, number=number)
        .exclude(status=Invoice.Status.DRAFT)
        .select_related("tenant", "replaces")
        .first()
    )
    if invoice is None:
        raise Http404("No such invoice.")
    response = HttpResponse(invoice_pdf(invoice), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{invoice_filename(invoice, "pdf")}"'
    return response
