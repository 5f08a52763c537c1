"""The billing API (``billing`` scope): usage; the tenant's invoices and credit notes as JSON, PDF and
CSV; payment states and credit notes for a finance integration; registers; billing settings.

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

from billing import registers
from billing.credit_notes import credit_note_issue
from billing.documents import (
    credit_note_csv,
    credit_note_filename,
    credit_note_pdf,
    credit_notes_csv,
    invoice_csv,
    invoice_filename,
    invoice_pdf,
    invoices_csv,
)
from billing.models import BillingProfile, CreditNote, Invoice
from billing.payments import invoice_status_set
from billing.rollups import local_today
from billing.selectors import GROUPS, usage_report
from billing.serializers import (
    BillingSettingsIn,
    BillingSettingsOut,
    CreditNoteIn,
    CreditNoteOut,
    InvoiceOut,
    InvoiceStatusIn,
    InvoiceSummaryOut,
)
from config.errors import DocumentFinal, InvalidRequest, NotFound
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

    def _final(self, number: str) -> DocumentFinal:
        invoice = self.get_object(number)
        return DocumentFinal(
            f"Invoice {invoice.number} is final: it cannot be changed. Record its payment with POST "
            f"/v1/invoices/{invoice.number}/status, or correct it with POST /v1/invoices/{invoice.number}/credit_notes."
        )

    @extend_schema(exclude=True)
    def patch(self, request: Request, number: str) -> Response:
        raise self._final(number)

    @extend_schema(exclude=True)
    def put(self, request: Request, number: str) -> Response:
        raise self._final(number)

    @extend_schema(exclude=True)
    def delete(self, request: Request, number: str) -> Response:
        raise self._final(number)


class InvoiceStatusView(InvoiceScopedView):
    @extend_schema(
        summary="Record a payment, write an invoice off, or void it (a finance integration)",
        request=InvoiceStatusIn,
        responses=InvoiceOut,
    )
    def post(self, request: Request, number: str) -> Response:
        data = self.validated(InvoiceStatusIn)
        invoice = invoice_status_set(
            invoice=self.get_object(number),
            status=data["status"],
            by=f"api key {self.principal.key_id}",
            paid_on=data.get("paid_on"),
            reference=data.get("reference", ""),
            reason=data.get("reason", ""),
        )
        return Response(InvoiceOut(self._fresh(invoice.pk)).data)

    def _fresh(self, pk: int) -> Invoice:
        return self.get_queryset().get(pk=pk)


class CreditNoteScopedView(BillingView):
    def get_queryset(self) -> QuerySet[CreditNote]:
        return CreditNote.objects.filter(tenant_id=self.principal.tenant_pk).select_related("invoice", "tenant")

    def get_object(self, number: str) -> CreditNote:
        note = self.get_queryset().filter(number=number).first()
        if note is None:
            raise NotFound(f"No credit note '{number}' in this tenant.", param="number")
        return note


class InvoiceCreditNotesView(InvoiceScopedView):
    @extend_schema(
        summary="Issue a credit note against an invoice: whole, chosen lines, or an amount",
        request=CreditNoteIn,
        responses={201: CreditNoteOut},
    )
    def post(self, request: Request, number: str) -> Response:
        data = self.validated(CreditNoteIn)
        note = credit_note_issue(
            invoice=self.get_object(number),
            reason=data["reason"],
            by=f"api key {self.principal.key_id}",
            lines=data.get("lines") or None,
            amount=data.get("amount"),
        )
        return Response(CreditNoteOut(note).data, status=201)


class CreditNoteListView(CreditNoteScopedView):
    @extend_schema(
        summary="List the tenant's credit notes, newest first",
        parameters=[OpenApiParameter("limit", int, description=f"1 to {MAX_PAGE}, default 20")],
        responses=list_of("CreditNoteList", CreditNoteOut(many=True)),
    )
    def get(self, request: Request) -> Response:
        limit = page_limit(request)
        page = list(self.get_queryset().order_by("-pk")[: limit + 1])
        return Response(
            {"object": "list", "data": CreditNoteOut(page[:limit], many=True).data, "has_more": len(page) > limit}
        )


class CreditNoteDetailView(CreditNoteScopedView):
    @extend_schema(summary="Show a credit note", responses=CreditNoteOut)
    def get(self, request: Request, number: str) -> Response:
        return Response(CreditNoteOut(self.get_object(number)).data)


class CreditNotePdfView(CreditNoteScopedView):
    @extend_schema(summary="Download a credit note as PDF", responses={(200, "application/pdf"): OpenApiTypes.BINARY})
    def get(self, request: Request, number: str) -> HttpResponse:
        note = self.get_object(number)
        response = HttpResponse(credit_note_pdf(note), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{credit_note_filename(note)}"'
        return response


class CreditNoteCsvView(CreditNoteScopedView):
    @extend_schema(summary="Download a credit note as CSV", responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request, number: str) -> HttpResponse:
        note = self.get_object(number)
        response = HttpResponse(credit_note_csv(note), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{credit_note_filename(note, "csv")}"'
        return response


class RegisterView(BillingView):
    @extend_schema(
        summary="This tenant's invoice or credit note register for a month (by issue date), as CSV",
        parameters=[
            OpenApiParameter("month", str, required=True, description="YYYY-MM"),
            OpenApiParameter("kind", str, enum=["invoices", "credit_notes"], description="default: invoices"),
        ],
        responses={(200, "text/csv"): OpenApiTypes.STR},
    )
    def get(self, request: Request) -> HttpResponse:
        month = request.query_params.get("month") or ""
        try:
            first, after = registers.month_range(month)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="month") from None
        kind = request.query_params.get("kind") or "invoices"
        if kind not in ("invoices", "credit_notes"):
            raise InvalidRequest("kind must be invoices or credit_notes.", param="kind")
        tenant_id = self.principal.tenant_pk
        if kind == "credit_notes":
            text = credit_notes_csv(registers.credit_note_register(first=first, after=after, tenant_id=tenant_id))
        else:
            text = invoices_csv(registers.invoice_register(first=first, after=after, tenant_id=tenant_id))
        response = HttpResponse(text, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{kind}-{month}.csv"'
        return response


class BillingSettingsView(BillingView):
    @extend_schema(
        summary="The tenant's billing settings: e-mail, webhook, alert thresholds", responses=BillingSettingsOut
    )
    def get(self, request: Request) -> Response:
        return Response(BillingSettingsOut(self._profile()).data)

    @extend_schema(
        summary="Change the webhook URL (a secret is made the first time), the alert thresholds, the low-balance "
        "alert; rotate_secret makes a new signing secret",
        request=BillingSettingsIn,
        responses=BillingSettingsOut,
    )
    def patch(self, request: Request) -> Response:
        data = self.validated(BillingSettingsIn, partial=True)
        profile = self._profile()
        for name in ("webhook_url", "alert_thresholds", "low_balance_usd"):
            if name in data:
                setattr(profile, name, data[name])
        if data.get("rotate_secret") or not profile.webhook_url:
            profile.webhook_secret = ""
        profile.save()
        return Response(BillingSettingsOut(profile).data)

    def _profile(self) -> BillingProfile:
        profile, _ = BillingProfile.objects.get_or_create(tenant_id=self.principal.tenant_pk)
        return profile


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
