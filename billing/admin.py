from __future__ import annotations

import io
import zipfile
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from billing import tasks
from billing.documents import invoice_csv, invoice_filename, invoice_pdf, invoices_csv
from billing.invoicing import InvoicingError, invoice_finalize, invoice_void, period_of, previous_period_label
from billing.models import (
    Account,
    CreditEntry,
    Invoice,
    InvoiceLine,
    Model,
    Plan,
    PlanModelMarkup,
    Price,
    Report,
    UsageRecord,
)
from billing.selectors import tenant_money
from tenants.admin import TenantAdmin as BaseTenantAdmin
from tenants.models import Tenant


def price_state(price: Price, now: Any = None) -> str:
    """upcoming, current or past: a price runs from its start until the model's next one starts."""
    now = now or timezone.now()
    if price.effective_from > now:
        return "upcoming"
    later = Price.objects.filter(model_id=price.model_id, effective_from__gt=price.effective_from)
    return "past" if later.filter(effective_from__lte=now).exists() else "current"


class PriceInline(admin.TabularInline):
    """Every price of the model, newest first: upcoming ones on top, past ones below."""

    model = Price
    extra = 0
    fields = (
        "effective_from",
        "state",
        "input_per_mtok",
        "output_per_mtok",
        "cached_input_per_mtok",
        "cache_write_per_mtok",
        "request_fee",
    )
    readonly_fields = ("state",)
    ordering = ("-effective_from",)

    @admin.display(description="state")
    def state(self, obj: Price) -> str:
        return price_state(obj) if obj.pk else "new"


class PriceStateFilter(admin.SimpleListFilter):
    title = "when"
    parameter_name = "when"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("upcoming", "Upcoming"), ("started", "Current and past")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Price]) -> QuerySet[Price]:
        if self.value() == "upcoming":
            return queryset.filter(effective_from__gt=timezone.now())
        if self.value() == "started":
            return queryset.filter(effective_from__lte=timezone.now())
        return queryset


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    """The price book. Two prices of a model may not start at the same instant (an overlap)."""

    list_display = (
        "model",
        "effective_from",
        "state",
        "input_per_mtok",
        "output_per_mtok",
        "cached_input_per_mtok",
        "request_fee",
    )
    list_filter = (PriceStateFilter, "model")
    list_select_related = ("model",)
    ordering = ("model__name", "-effective_from")
    date_hierarchy = "effective_from"

    @admin.display(description="state")
    def state(self, obj: Price) -> str:
        return price_state(obj)


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = ("name", "owned_by", "max_output_tokens", "is_active", "current_price")
    list_filter = ("is_active",)
    search_fields = ("name",)
    inlines = [PriceInline]

    @admin.display(description="Price now (in/out per Mtok)")
    def current_price(self, obj: Model) -> str:
        price = obj.prices.filter(effective_from__lte=timezone.now()).order_by("-effective_from").first()
        return f"${price.input_per_mtok} / ${price.output_per_mtok}" if price else "— not priced: not served"


class AppendOnly:
    """For ledgers: rows are added, never edited or deleted; a mistake is corrected by a
    new row. Put it first among the bases so it wins over ModelAdmin's permissions."""

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UsageRecord)
class UsageRecordAdmin(AppendOnly, admin.ModelAdmin):
    """The ledger is append-only: readable here, never edited."""

    list_display = (
        "created_at",
        "tenant",
        "model",
        "provider",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cost",
        "streamed",
        "outcome",
        "usage_estimated",
        "latency_ms",
    )
    list_filter = ("streamed", "outcome", "usage_estimated", "model")
    search_fields = ("=request_id", "tenant__slug")  # exact: the unique index answers it
    list_select_related = ("tenant", "model")
    date_hierarchy = "created_at"
    show_full_result_count = False  # no COUNT(*) over millions of rows

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


# --- money per tenant: payment, credit ledger, and what is spent and held right now ---


class AccountInline(admin.StackedInline):
    model = Account
    fields = ("plan", "payment")
    can_delete = False
    extra = 1
    max_num = 1
    verbose_name = "billing account"


class CreditEntryInline(AppendOnly, admin.TabularInline):
    """Append-only: a mistake is corrected by an adjustment, never by editing."""

    model = CreditEntry
    extra = 0
    fields = ("created_at", "kind", "amount_usd", "note", "created_by")
    readonly_fields = ("created_at", "created_by")


admin.site.unregister(Tenant)


@admin.register(Tenant)
class TenantAdmin(BaseTenantAdmin):
    inlines = [*BaseTenantAdmin.inlines, AccountInline, CreditEntryInline]
    readonly_fields = ("money_now",)

    @admin.display(description="Money this billing month")
    def money_now(self, obj: Tenant) -> str:
        if obj.pk is None:
            return "—"
        money = tenant_money(obj)["billing"]
        parts = [
            f"{money['month']}: spent ${money['spend_usd']}",
            f"reserved ${money['reserved_usd']}",
            f"budget {'$' + money['budget_usd'] if money['budget_usd'] else 'none'}",
        ]
        if money["credit_balance_usd"] is not None:
            parts.append(f"prepaid balance ${money['credit_balance_usd']}")
        return "; ".join(parts)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        for entry in formset.save(commit=False):
            if isinstance(entry, CreditEntry) and not entry.created_by:
                entry.created_by = request.user.get_username()
            entry.save()
        formset.save_m2m()


@admin.register(CreditEntry)
class CreditEntryAdmin(AppendOnly, admin.ModelAdmin):
    list_display = ("created_at", "tenant", "kind", "amount_usd", "note", "created_by")
    list_filter = ("kind",)
    search_fields = ("tenant__slug", "note")
    list_select_related = ("tenant",)
    fields = ("tenant", "kind", "amount_usd", "note")

    def save_model(self, request: HttpRequest, obj: CreditEntry, form: Any, change: bool) -> None:
        obj.created_by = request.user.get_username()
        super().save_model(request, obj, form, change)


# --- plans ---------------------------------------------------------------------------------


class PlanModelMarkupInline(admin.TabularInline):
    model = PlanModelMarkup
    extra = 0
    autocomplete_fields = ("model",)


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ("name", "markup_percent", "monthly_minimum_usd", "payment", "tenants")
    list_filter = ("payment",)
    search_fields = ("name",)
    inlines = [PlanModelMarkupInline]

    @admin.display(description="tenants")
    def tenants(self, obj: Plan) -> int:
        return obj.accounts.count()


# --- invoices -----------------------------------------------------------------------------


def _download(content: bytes | str, filename: str, content_type: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = (
        "position",
        "kind",
        "description",
        "requests",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "input_price_per_mtok",
        "output_price_per_mtok",
        "exact_usd",
        "amount_usd",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    """Invoices are made by the month close and changed only through the actions: finalise,
    void (and reissue). Nothing here edits an invoice's money."""

    list_display = ("__str__", "tenant", "period", "status", "total_usd", "finalized_at", "downloads")
    list_filter = ("status", "period", "tenant")
    search_fields = ("number", "tenant__slug", "tenant__name")
    list_select_related = ("tenant",)
    inlines = [InvoiceLineInline]
    actions = ["finalize", "void_and_reissue", "download_pdfs", "download_csvs", "download_month_csv"]
    readonly_fields = (
        "tenant",
        "period",
        "status",
        "number",
        "currency",
        "period_start",
        "period_end",
        "grace_until",
        "subtotal_usd",
        "credits_applied_usd",
        "total_usd",
        "bill_to",
        "replaces",
        "finalized_at",
        "voided_at",
        "void_reason",
        "downloads",
    )
    exclude = ("created_at",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        return [
            path("<int:pk>/pdf/", self.admin_site.admin_view(self.pdf_view), name="billing_invoice_pdf"),
            path("<int:pk>/csv/", self.admin_site.admin_view(self.csv_view), name="billing_invoice_csv"),
            *super().get_urls(),
        ]

    @admin.display(description="download")
    def downloads(self, obj: Invoice) -> str:
        return format_html(
            '<a href="{}">PDF</a> · <a href="{}">CSV</a>',
            reverse("admin:billing_invoice_pdf", args=[obj.pk]),
            reverse("admin:billing_invoice_csv", args=[obj.pk]),
        )

    def _invoice(self, request: HttpRequest, pk: int) -> Invoice:
        if not self.has_view_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        return get_object_or_404(Invoice.objects.select_related("tenant", "replaces"), pk=pk)

    def pdf_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        invoice = self._invoice(request, pk)
        return _download(invoice_pdf(invoice), invoice_filename(invoice, "pdf"), "application/pdf")

    def csv_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        invoice = self._invoice(request, pk)
        return _download(invoice_csv(invoice), invoice_filename(invoice, "csv"), "text/csv; charset=utf-8")

    @admin.action(description="Finalise the selected drafts (assigns numbers; irreversible)")
    def finalize(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        done = 0
        for invoice in queryset.order_by("pk"):
            try:
                invoice_finalize(invoice=invoice)
                done += 1
            except InvoicingError as exc:
                self.message_user(request, str(exc), messages.ERROR)
        if done:
            self.message_user(request, f"Finalised {done} invoice(s).", messages.SUCCESS)

    @admin.action(description="Void the selected finalised invoices and reissue them as drafts")
    def void_and_reissue(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        for invoice in queryset.order_by("pk"):
            try:
                draft = invoice_void(invoice=invoice, reason=f"voided by {request.user.get_username()} in the admin")
                self.message_user(request, f"Voided {invoice.number}; reissued as {draft}.", messages.SUCCESS)
            except InvoicingError as exc:
                self.message_user(request, str(exc), messages.ERROR)

    @admin.action(description="Download the selected invoices as PDF (a zip when several)")
    def download_pdfs(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> HttpResponse:
        invoices = list(queryset.select_related("tenant", "replaces").order_by("pk"))
        if len(invoices) == 1:
            return _download(invoice_pdf(invoices[0]), invoice_filename(invoices[0], "pdf"), "application/pdf")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for invoice in invoices:
                archive.writestr(invoice_filename(invoice, "pdf"), invoice_pdf(invoice))
        return _download(buffer.getvalue(), "invoices.zip", "application/zip")

    @admin.action(description="Download the selected invoices' lines as CSV (a zip when several)")
    def download_csvs(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> HttpResponse:
        invoices = list(queryset.select_related("tenant").order_by("pk"))
        if len(invoices) == 1:
            return _download(invoice_csv(invoices[0]), invoice_filename(invoices[0], "csv"), "text/csv; charset=utf-8")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for invoice in invoices:
                archive.writestr(invoice_filename(invoice, "csv"), invoice_csv(invoice))
        return _download(buffer.getvalue(), "invoice-lines.zip", "application/zip")

    @admin.action(description="Download one CSV listing the selected invoices (e.g. filter a month, select all)")
    def download_month_csv(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> HttpResponse:
        invoices = queryset.select_related("tenant", "replaces").order_by("period", "number", "pk")
        periods = sorted(set(invoices.values_list("period", flat=True)))
        name = f"invoices-{periods[0]}.csv" if len(periods) == 1 else "invoices.csv"
        return _download(invoices_csv(invoices), name, "text/csv; charset=utf-8")


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ("period", "kind", "tenant", "created_at", "downloads")
    list_filter = ("kind", "period")
    search_fields = ("tenant__slug",)
    list_select_related = ("tenant",)
    fields = ("kind", "period", "tenant", "created_at", "downloads")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        return [
            path("generate/", self.admin_site.admin_view(self.generate_view), name="billing_report_generate"),
            path("<int:pk>/<str:fmt>/", self.admin_site.admin_view(self.download_view), name="billing_report_file"),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # The "generate now" form (admin/billing/report/change_list.html) offers last month.
        month = previous_period_label(tz_name="UTC", now=timezone.now())
        return super().changelist_view(request, {**(extra_context or {}), "generate_period": month})

    def generate_view(self, request: HttpRequest) -> HttpResponse:
        """Build a month's reports now rather than at the next beat: the same Celery task,
        queued for the worker (run at once where tasks run eagerly)."""
        back = HttpResponseRedirect(reverse("admin:billing_report_changelist"))
        if request.method != "POST" or not self.has_view_permission(request):
            return back
        period = str(request.POST.get("period", "")).strip()
        try:
            bounds = period_of(tz_name="UTC", label=period)
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return back
        if bounds.end > timezone.now():
            self.message_user(request, f"{period} is not over yet: its reports would be incomplete.", messages.ERROR)
            return back
        tasks.enqueue(tasks.monthly_reports, period=period)
        self.message_user(
            request, f"The reports for {period} are being generated; refresh this page in a moment to see them."
        )
        return back

    @admin.display(description="download")
    def downloads(self, obj: Report) -> str:
        return format_html(
            '<a href="{}">CSV</a> · <a href="{}">HTML</a>',
            reverse("admin:billing_report_file", args=[obj.pk, "csv"]),
            reverse("admin:billing_report_file", args=[obj.pk, "html"]),
        )

    def download_view(self, request: HttpRequest, pk: int, fmt: str) -> HttpResponse:
        report = get_object_or_404(Report.objects.select_related("tenant"), pk=pk)
        stem = f"{report.kind}-{report.period}" + (f"-{report.tenant.slug}" if report.tenant else "")
        if fmt == "html":
            return HttpResponse(report.html, content_type="text/html; charset=utf-8")
        return _download(report.csv, f"{stem}.csv", "text/csv; charset=utf-8")
