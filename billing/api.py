"""The billing API (``billing`` scope): usage, and the tenant's invoices as JSON, PDF and CSV.

Every view sees only the caller's tenant, scoped once in ``get_queryset()``: another
tenant's invoice number answers 404, exactly like a number that does not exist.
"""

from __future__ import annotations

from datetime import date, timedelta

from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing.documents import invoice_csv, invoice_filename, invoice_pdf
from billing.models import Invoice
from billing.rollups import local_today
from billing.selectors import GROUPS, usage_report
from billing.serializers import InvoiceOut, InvoiceSummaryOut
from config.errors import InvalidRequest, NotFound
from tenants.api import MAX_PAGE, ManageView, list_of, page_limit
from tenants.models import Tenant

MAX_USAGE_DAYS = 366


class BillingView(ManageView):
    required_scope = "billing"

    def tenant(self) -> Tenant:
        return Tenant.objects.get(pk=self.principal.tenant_pk)


def _day(request: Request, name: str, default: date) -> date:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return date.fromisoformat(raw) if len(raw) == 10 else date.fromisoformat("invalid")
    except ValueError:
        raise InvalidRequest(f"'{raw}' is not a date: use YYYY-MM-DD, e.g. 2026-10-01.", param=name) from None


class UsageView(BillingView):
    @extend_schema(
        summary="Usage and cost for a period, grouped by day, model or key",
        parameters=[
            OpenApiParameter(
                "start",
                OpenApiTypes.DATE,
                description="First day (the tenant's time zone); default: the first of this month",
            ),
            OpenApiParameter("end", OpenApiTypes.DATE, description="Last day, inclusive; default: today"),
            OpenApiParameter("group_by", str, enum=list(GROUPS), description="default: day"),
        ],
        responses=inline_serializer(
            "Usage",
            {
                "object": serializers.CharField(default="usage"),
                "start": serializers.DateField(),
                "end": serializers.DateField(),
                "group_by": serializers.CharField(),
                "timezone": serializers.CharField(),
                "data": serializers.ListField(child=serializers.DictField()),
                "totals": serializers.DictField(),
            },
        ),
    )
    def get(self, request: Request) -> Response:
        tenant = self.tenant()
        today = local_today(tenant)
        start = _day(request, "start", today.replace(day=1))
        end = _day(request, "end", today)
        group_by = request.query_params.get("group_by") or "day"
        if group_by not in GROUPS:
            raise InvalidRequest(f"group_by must be one of: {', '.join(GROUPS)}.", param="group_by")
        for name, value in (("start", start), ("end", end)):
            if value > today:
                raise InvalidRequest(
                    f"{name} {value} is in the future (today is {today} in {tenant.timezone}).", param=name
                )
        if end < start:
            raise InvalidRequest(f"end {end} is before start {start}.", param="end")
        if end - start >= timedelta(days=MAX_USAGE_DAYS):
            raise InvalidRequest(f"The period is longer than {MAX_USAGE_DAYS} days: ask for less.", param="end")
        return Response(usage_report(tenant=tenant, start=start, end=end, group_by=group_by))


class InvoiceScopedView(BillingView):
    def get_queryset(self) -> QuerySet[Invoice]:
        # A draft is not an invoice yet: the tenant sees what has been issued (and voided).
        return (
            Invoice.objects.filter(tenant_id=self.principal.tenant_pk)
            .exclude(status=Invoice.Status.DRAFT)
            .select_related("tenant", "replaces")
        )

    def get_object(self, number: str) -> Invoice:
        invoice = self.get_queryset().filter(number=number).first()
        if invoice is None:
            raise NotFound(f"No invoice '{number}' in this tenant.", param="number")
        return invoice


class InvoiceListView(InvoiceScopedView):
    @extend_schema(
        summary="List the tenant's invoices, newest first",
        parameters=[
            OpenApiParameter("period", str, description="Only this billing month, YYYY-MM"),
            OpenApiParameter("limit", int, description=f"1 to {MAX_PAGE}, default 20"),
            OpenApiParameter("after", str, description="An invoice number: list the ones before it"),
        ],
        responses=list_of("InvoiceList", InvoiceSummaryOut(many=True)),
    )
    def get(self, request: Request) -> Response:
        limit = page_limit(request)
        invoices = self.get_queryset().order_by("-pk")  # numbers are issued in pk order within a year
        period = request.query_params.get("period")
        if period:
            invoices = invoices.filter(period=period)
        after = request.query_params.get("after")
        if after:
            invoices = invoices.filter(pk__lt=self.get_object(after).pk)
        page = list(invoices[: limit + 1])
        return Response(
            {"object": "list", "data": InvoiceSummaryOut(page[:limit], many=True).data, "has_more": len(page) > limit}
        )


class InvoiceDetailView(InvoiceScopedView):
    @extend_schema(summary="Show an invoice with its lines", responses=InvoiceOut)
    def get(self, request: Request, number: str) -> Response:
        return Response(InvoiceOut(self.get_object(number)).data)


class InvoicePdfView(InvoiceScopedView):
    @extend_schema(summary="Download an invoice as PDF", responses={(200, "application/pdf"): OpenApiTypes.BINARY})
    def get(self, request: Request, number: str) -> HttpResponse:
        invoice = self.get_object(number)
        response = HttpResponse(invoice_pdf(invoice), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{invoice_filename(invoice, "pdf")}"'
        return response


class InvoiceCsvView(InvoiceScopedView):
    @extend_schema(summary="Download an invoice's lines as CSV", responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request, number: str) -> HttpResponse:
        invoice = self.get_object(number)
        response = HttpResponse(invoice_csv(invoice), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{invoice_filename(invoice, "csv")}"'
        return response
