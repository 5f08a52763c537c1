from __future__ import annotations

import hashlib
import io
import zipfile
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import AdminSplitDateTime
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from billing import price_book, registers, tasks
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
from billing.invoicing import InvoicingError, invoice_finalize, invoice_void, period_of, previous_period_label
from billing.models import (
    Account,
    BillingProfile,
    CountryTaxRate,
    CreditEntry,
    CreditNote,
    Delivery,
    ExchangeRate,
    Invoice,
    InvoiceLine,
    Issuer,
    IssuerLogo,
    Model,
    Plan,
    PlanModelMarkup,
    Price,
    Report,
    SpendAlert,
    UsageRecord,
)
from billing.money import format_money, usd_cents
from billing.payments import invoice_status_set
from billing.selectors import issuer_get, tenant_money
from billing.tasks import email_document, enqueue_delivery
from config.errors import TollwayError
from tenants.admin import TenantAdmin as BaseTenantAdmin
from tenants.models import Tenant


def price_state(price: Price, now: Any = None) -> str:
    """upcoming, current or past: a price runs from its start until the model's next one starts."""
    now = now or timezone.now()
    if price.effective_from > now:
        return "upcoming"
    later = Price.objects.filter(model_id=price.model_id, effective_from__gt=price.effective_from)
    return "past" if later.filter(effective_from__lte=now).exists() else "current"


class PriceForm(forms.ModelForm):
    """A price; one that calls were billed at shows read-only (``billing.price_book``)."""

    effective_from = forms.SplitDateTimeField(
        required=False,
        widget=AdminSplitDateTime,
        help_text="Empty: now. A new price runs from here until the model's next price starts.",
    )

    class Meta:
        model = Price
        fields = ("model", "effective_from", *price_book.RATES)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.billed = price_book.price_is_billed(self.instance)
        for field in self.fields.values():
            field.disabled = field.disabled or self.billed

    def clean_effective_from(self) -> Any:
        return self.cleaned_data.get("effective_from") or timezone.now()

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        model = data.get("model") or getattr(self.instance, "model", None)
        if self.billed or model is None or model.pk is None or self.errors or not self.has_changed():
            return data
        book = price_book.book_of(model_id=model.pk)
        before = list(book.values())
        book[self.instance.pk or -1] = price_book.Entry.of(data)
        try:
            price_book.price_book_check(model_id=model.pk, before=before, after=book.values())
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from None
        return data


class PriceFormSet(forms.BaseInlineFormSet):
    """The model's whole price book as edited on its page, checked as one change."""

    def add_fields(self, form: forms.Form, index: int | None) -> None:
        super().add_fields(form, index)
        if getattr(form, "billed", False) and "DELETE" in form.fields:
            form.fields["DELETE"].disabled = True  # a billed price stays in the book

    def clean(self) -> None:
        super().clean()
        if self.instance.pk is None or any(self.errors):
            return
        after = []
        for form in self.forms:
            if not form.has_changed() and form.instance.pk is None:
                continue  # an empty extra row
            if self.can_delete and form.cleaned_data.get("DELETE"):
                continue
            after.append(price_book.Entry.of(form.cleaned_data))
        try:
            price_book.price_book_check(model_id=self.instance.pk, after=after)
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from None


class PriceInline(admin.TabularInline):
    """Every price of the model, newest first: upcoming ones on top, past ones below. A
    price calls were billed at is read-only; a new row schedules the next price."""

    model = Price
    form = PriceForm
    formset = PriceFormSet
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
    verbose_name_plural = "prices (one that calls were billed at is read-only: add a price to change it)"

    @admin.display(description="state")
    def state(self, obj: Price) -> str:
        return price_label(obj) if obj.pk else "new"


def price_label(price: Price) -> str:
    state = price_state(price)
    return f"{state}, billed (read-only)" if price_book.price_is_billed(price) else state


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
    """The price book. Two prices of a model may not start at the same instant (an overlap),
    and a price calls were billed at is read-only: the way to change it is a new price."""

    form = PriceForm
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
    autocomplete_fields = ("model",)
    actions = None  # no bulk delete: each price is checked on its own page

    @admin.display(description="state")
    def state(self, obj: Price) -> str:
        return price_label(obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is not None and price_book.price_is_billed(obj):
            return ("model", "effective_from", *price_book.RATES)
        return ()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and price_book.price_is_billed(obj):
            return False
        return super().has_delete_permission(request, obj)


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = ("name", "owned_by", "max_output_tokens", "is_active", "current_price")
    list_filter = ("is_active",)
    search_fields = ("name",)
    inlines = [PriceInline]
    readonly_fields = ("schedule_price",)

    @admin.display(description="Price now (in/out per Mtok)")
    def current_price(self, obj: Model) -> str:
        price = obj.prices.filter(effective_from__lte=timezone.now()).order_by("-effective_from").first()
        return f"${price.input_per_mtok} / ${price.output_per_mtok}" if price else "— not priced: not served"

    @admin.display(description="Change the price")
    def schedule_price(self, obj: Model) -> str:
        if obj.pk is None:
            return "Add its first price below."
        return format_html(
            '<a class="button" href="{}?model={}">Schedule a new price</a> '
            "(from now or a later instant; the prices calls were billed at stay as they are)",
            reverse("admin:billing_price_add"),
            obj.pk,
        )


def cents(description: str, field: str) -> Any:
    """A list column showing a USD field to the cent (its page shows it in full)."""

    @admin.display(description=description, ordering=field)
    def column(self: Any, obj: Any) -> str:
        return usd_cents(getattr(obj, field))

    return column


def party_html(party: dict[str, Any] | None, name_key: str = "name") -> str:
    """A copied party (bill-to or issuer) as the address block it is, not as JSON."""
    party = party or {}
    lines = [party.get(name_key) or "", *(party.get("address") or "").splitlines(), party.get("country") or ""]
    if party.get("tax_id"):
        lines.append(f"Tax id: {party['tax_id']}")
    if party.get("email"):
        lines.append(str(party["email"]))
    lines = [line for line in lines if line.strip()]
    return format_html_join(mark_safe("<br>"), "{}", ((line,) for line in lines)) if lines else "—"


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

    list_display = ("created_at", "tenant", "model", "provider", "tokens", "charged", "outcome", "how", "latency_ms")
    list_filter = ("streamed", "outcome", "usage_estimated", "model")
    search_fields = ("=request_id", "tenant__slug")  # exact: the unique index answers it
    list_select_related = ("tenant", "model")
    date_hierarchy = "created_at"
    show_full_result_count = False  # no COUNT(*) over millions of rows

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="tokens in / out")
    def tokens(self, obj: UsageRecord) -> str:
        cached = f" ({obj.cached_input_tokens:,} cached)" if obj.cached_input_tokens else ""
        return f"{obj.input_tokens:,}{cached} / {obj.output_tokens:,}"

    @admin.display(description="cost (USD)", ordering="cost")
    def charged(self, obj: UsageRecord) -> str:
        # One call costs a fraction of a cent: shown exactly (trailing zeros dropped), since
        # to the cent most rows would read $0.00. Sums are shown to the cent elsewhere.
        return f"${format(obj.cost.normalize(), 'f')}"

    @admin.display(description="served")
    def how(self, obj: UsageRecord) -> str:
        parts = ["streamed" if obj.streamed else "whole"]
        if obj.usage_estimated:
            parts.append("usage estimated")
        return ", ".join(parts)


# --- money per tenant: payment, credit ledger, and what is spent and held right now ---


class AccountInline(admin.StackedInline):
    model = Account
    fields = ("plan", "payment")
    can_delete = False
    extra = 1
    max_num = 1
    verbose_name = "billing account"


class BillingProfileForm(forms.ModelForm):
    webhook_url = forms.URLField(required=False, assume_scheme="https", help_text="Billing events are POSTed here")

    class Meta:
        model = BillingProfile
        fields = (
            "legal_name",
            "address",
            "country",
            "tax_id",
            "payment_terms_days",
            "tax_rate_percent",
            "reverse_charge",
            "currency",
            "webhook_url",
            "alert_thresholds",
            "low_balance_usd",
        )

    def clean_alert_thresholds(self) -> list[int]:
        from billing.alerts import thresholds_clean

        try:
            return thresholds_clean(self.cleaned_data.get("alert_thresholds"))
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


class BillingProfileInline(admin.StackedInline):
    """Whom invoices are addressed to, how they are taxed and paid, where events go."""

    model = BillingProfile
    form = BillingProfileForm
    can_delete = False
    extra = 1
    max_num = 1
    readonly_fields = ("webhook_secret",)
    verbose_name = "billing profile"


class CreditEntryInline(AppendOnly, admin.TabularInline):
    """Append-only: a mistake is corrected by an adjustment, never by editing."""

    model = CreditEntry
    extra = 0
    fields = ("created_at", "kind", "amount_usd", "note", "created_by")
    readonly_fields = ("created_at", "created_by")


admin.site.unregister(Tenant)


@admin.register(Tenant)
class TenantAdmin(BaseTenantAdmin):
    inlines = [*BaseTenantAdmin.inlines, AccountInline, BillingProfileInline, CreditEntryInline]
    readonly_fields = ("money_now",)
    list_display = ("slug", "name", "status", "billing_email", "budget", "created_at")
    budget = cents("monthly budget (USD)", "monthly_budget_usd")

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
    list_display = ("created_at", "tenant", "kind", "amount", "note", "created_by")
    amount = cents("amount (USD)", "amount_usd")
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
    list_display = ("name", "markup_percent", "minimum", "payment", "tenants")
    minimum = cents("monthly minimum (USD)", "monthly_minimum_usd")
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
    """Lines are made by the month close; never added, edited or deleted here."""

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
        "amount",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeliveryInline(admin.TabularInline):
    """Each attempt to e-mail the document or deliver its webhooks, and its result."""

    model = Delivery
    extra = 0
    fields = ("created_at", "channel", "what", "target", "attempt", "ok", "detail")
    readonly_fields = fields
    ordering = ("-created_at",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MarkPaidForm(forms.Form):
    paid_on = forms.DateField(required=False, help_text="The day the payment arrived; empty: today")
    reference = forms.CharField(required=False, max_length=200, help_text="The bank or payment reference")


class CreditNoteForm(forms.Form):
    reason = forms.CharField(max_length=500, widget=forms.Textarea(attrs={"rows": 2}))
    lines = forms.CharField(
        required=False,
        help_text="Credit these line positions only, e.g. 1, 3. Empty (and no amount): the whole invoice.",
    )
    amount = forms.DecimalField(
        required=False, max_digits=20, decimal_places=4, help_text="Or credit an amount (net, in the invoice currency)"
    )

    def clean_lines(self) -> list[int]:
        raw = self.cleaned_data.get("lines") or ""
        try:
            return [int(part) for part in raw.replace(" ", "").split(",") if part]
        except ValueError:
            raise forms.ValidationError("Line positions are whole numbers, e.g. 1, 3.") from None


def _who(request: HttpRequest) -> str:
    return f"{request.user.get_username()} (admin)"


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    """Invoices are made by the month close and changed only through the actions: finalise,
    record a payment, write off, void (and reissue), issue a credit note. Every field is
    read-only: a finalised invoice never changes, and a draft changes by refreshing it."""

    list_display = (
        "__str__",
        "tenant",
        "period",
        "status",
        "overdue",
        "total",
        "total_in_usd",
        "due_date",
        "downloads",
    )
    list_filter = ("status", "period", "currency", "tenant")
    total_in_usd = cents("total (USD)", "total_usd")
    search_fields = ("number", "tenant__slug", "tenant__name")
    list_select_related = ("tenant",)
    inlines = [InvoiceLineInline, DeliveryInline]
    actions = [
        "finalize",
        "mark_paid",
        "mark_uncollectible",
        "void_and_reissue",
        "issue_credit_note",
        "resend",
        "download_pdfs",
        "download_csvs",
        "download_month_csv",
    ]
    readonly_fields = (
        "tenant",
        "period",
        "status",
        "number",
        "overdue",
        "currency",
        "period_start",
        "period_end",
        "grace_until",
        "billed_from",
        "subtotal_usd",
        "credits_applied_usd",
        "total_usd",
        "tax_label",
        "tax_rate_percent",
        "reverse_charge",
        "tax_usd",
        "gross_usd",
        "fx_rate",
        "fx_rate_date",
        "net_amount",
        "tax_amount",
        "gross_amount",
        "issue_date",
        "payment_terms_days",
        "due_date",
        "issuer_card",
        "bill_to_card",
        "replaces",
        "finalized_at",
        "finalized_by",
        "paid_on",
        "payment_reference",
        "status_changed_at",
        "status_changed_by",
        "voided_at",
        "void_reason",
        "credit_notes_list",
        "downloads",
    )
    exclude = ("created_at", "issuer", "bill_to")  # shown as address blocks, not JSON

    @admin.display(description="total", ordering="gross_amount")
    def total(self, obj: Invoice) -> str:
        if obj.gross_amount is None:  # a draft before conversion: its USD total
            return usd_cents(obj.total_usd)
        return format_money(obj.gross_amount, obj.currency)

    @admin.display(description="issuer")
    def issuer_card(self, obj: Invoice) -> str:
        return party_html(obj.issuer, "legal_name")

    @admin.display(description="bill to")
    def bill_to_card(self, obj: Invoice) -> str:
        return party_html(obj.bill_to)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Viewable, never saved: no form field is editable, and there is no Save button.
        return False

    def get_urls(self) -> list[URLPattern]:
        return [
            path("<int:pk>/pdf/", self.admin_site.admin_view(self.pdf_view), name="billing_invoice_pdf"),
            path("<int:pk>/csv/", self.admin_site.admin_view(self.csv_view), name="billing_invoice_csv"),
            path("register/", self.admin_site.admin_view(self.register_view), name="billing_invoice_register"),
            *super().get_urls(),
        ]

    @admin.display(description="overdue", boolean=True)
    def overdue(self, obj: Invoice) -> bool:
        return obj.is_overdue()

    @admin.display(description="credit notes")
    def credit_notes_list(self, obj: Invoice) -> str:
        notes = list(obj.credit_notes.all())
        if not notes:
            return "—"
        return format_html_join(
            ", ",
            '<a href="{}">{}</a> ({} {})',
            (
                (reverse("admin:billing_creditnote_change", args=[n.pk]), n.number, n.gross_amount, n.currency)
                for n in notes
            ),
        )

    @admin.display(description="download")
    def downloads(self, obj: Invoice) -> str:
        return format_html(
            '<a href="{}">PDF</a> · <a href="{}">CSV</a>',
            reverse("admin:billing_invoice_pdf", args=[obj.pk]),
            reverse("admin:billing_invoice_csv", args=[obj.pk]),
        )

    def _invoice(self, request: HttpRequest, pk: int) -> Invoice:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return get_object_or_404(Invoice.objects.select_related("tenant", "replaces"), pk=pk)

    def pdf_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        invoice = self._invoice(request, pk)
        return _download(invoice_pdf(invoice), invoice_filename(invoice, "pdf"), "application/pdf")

    def csv_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        invoice = self._invoice(request, pk)
        return _download(invoice_csv(invoice), invoice_filename(invoice, "csv"), "text/csv; charset=utf-8")

    def register_view(self, request: HttpRequest) -> HttpResponse:
        """``?month=YYYY-MM&kind=invoices|credit_notes``: a month's register (by issue date), all tenants."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        month = request.GET.get("month", "")
        try:
            first, after = registers.month_range(month)
        except ValueError as exc:
            return HttpResponse(str(exc), status=400, content_type="text/plain; charset=utf-8")
        if request.GET.get("kind") == "credit_notes":
            notes = registers.credit_note_register(first=first, after=after)
            return _download(credit_notes_csv(notes), f"credit-notes-{month}.csv", "text/csv; charset=utf-8")
        invoices = registers.invoice_register(first=first, after=after)
        return _download(invoices_csv(invoices), f"invoice-register-{month}.csv", "text/csv; charset=utf-8")

    @admin.action(description="Finalise the selected drafts (assigns numbers; irreversible)")
    def finalize(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        done = 0
        for invoice in queryset.order_by("pk"):
            try:
                invoice_finalize(invoice=invoice, by=_who(request))
                done += 1
            except InvoicingError as exc:
                self.message_user(request, str(exc), messages.ERROR)
        if done:
            self.message_user(request, f"Finalised {done} invoice(s).", messages.SUCCESS)

    def _form_action(
        self, request: HttpRequest, queryset: QuerySet[Invoice], form_class: type[forms.Form], title: str, action: str
    ) -> forms.Form | HttpResponse:
        """A second step asking for details: returns the valid form, or the page to show."""
        form = form_class(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            return form
        return render(
            request,
            "admin/billing/invoice/action_form.html",
            {
                **self.admin_site.each_context(request),
                "title": title,
                "form": form,
                "invoices": queryset,
                "action": action,
                "opts": self.model._meta,
            },
        )

    @admin.action(description="Record a payment for the selected invoices (paid date and reference)")
    def mark_paid(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> HttpResponse | None:
        form = self._form_action(request, queryset, MarkPaidForm, "Record a payment", "mark_paid")
        if isinstance(form, HttpResponse):
            return form
        for invoice in queryset.order_by("pk"):
            try:
                invoice_status_set(
                    invoice=invoice,
                    status=Invoice.Status.PAID,
                    by=_who(request),
                    paid_on=form.cleaned_data["paid_on"],
                    reference=form.cleaned_data["reference"],
                )
                self.message_user(request, f"{invoice.number}: paid.", messages.SUCCESS)
            except TollwayError as exc:
                self.message_user(request, exc.message, messages.ERROR)
        return None

    @admin.action(description="Mark the selected invoices uncollectible (written off)")
    def mark_uncollectible(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        for invoice in queryset.order_by("pk"):
            try:
                invoice_status_set(invoice=invoice, status=Invoice.Status.UNCOLLECTIBLE, by=_who(request))
                self.message_user(request, f"{invoice.number}: uncollectible.", messages.SUCCESS)
            except TollwayError as exc:
                self.message_user(request, exc.message, messages.ERROR)

    @admin.action(description="Void the selected finalised invoices and reissue them as drafts")
    def void_and_reissue(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        for invoice in queryset.order_by("pk"):
            try:
                draft = invoice_void(
                    invoice=invoice,
                    reason=f"voided by {request.user.get_username()} in the admin",
                    by=_who(request),
                )
                self.message_user(request, f"Voided {invoice.number}; reissued as {draft}.", messages.SUCCESS)
            except (InvoicingError, TollwayError) as exc:
                self.message_user(request, str(exc), messages.ERROR)

    @admin.action(description="Issue a credit note for the selected invoice (whole, chosen lines, or an amount)")
    def issue_credit_note(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one invoice to credit.", messages.ERROR)
            return None
        form = self._form_action(request, queryset, CreditNoteForm, "Issue a credit note", "issue_credit_note")
        if isinstance(form, HttpResponse):
            return form
        try:
            note = credit_note_issue(
                invoice=queryset.get(),
                reason=form.cleaned_data["reason"],
                by=_who(request),
                lines=form.cleaned_data["lines"] or None,
                amount=form.cleaned_data["amount"],
            )
            self.message_user(request, f"Issued {note.number}.", messages.SUCCESS)
        except TollwayError as exc:
            self.message_user(request, exc.message, messages.ERROR)
        return None

    @admin.action(description="E-mail the selected invoices to their billing address again")
    def resend(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        sent = 0
        for invoice in queryset.exclude(status=Invoice.Status.DRAFT):
            enqueue_delivery(email_document, kind="invoice", document_id=invoice.pk)
            sent += 1
        self.message_user(request, f"Queued {sent} e-mail(s); the deliveries show on each invoice.", messages.SUCCESS)

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

    @admin.action(description="Download one CSV listing the selected invoices (the register of a filtered month)")
    def download_month_csv(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> HttpResponse:
        invoices = queryset.select_related("tenant", "replaces").prefetch_related("credit_notes")
        invoices = invoices.order_by("period", "number", "pk")
        periods = sorted(set(invoices.values_list("period", flat=True)))
        name = f"invoices-{periods[0]}.csv" if len(periods) == 1 else "invoices.csv"
        return _download(invoices_csv(invoices), name, "text/csv; charset=utf-8")


@admin.register(CreditNote)
class CreditNoteAdmin(admin.ModelAdmin):
    """Issued from an invoice (its action "Issue a credit note"); never edited or deleted."""

    list_display = ("number", "invoice", "tenant", "issue_date", "total", "total_in_usd", "downloads")
    total_in_usd = cents("total (USD)", "gross_usd")
    exclude = ("issuer", "bill_to", "lines")  # shown as address blocks and a table, not JSON
    list_filter = ("currency", "kind")
    search_fields = ("number", "invoice__number", "tenant__slug")
    list_select_related = ("invoice", "tenant")
    inlines = [DeliveryInline]
    readonly_fields = (
        "number",
        "invoice",
        "tenant",
        "kind",
        "reason",
        "issue_date",
        "issued_at",
        "issued_by",
        "currency",
        "fx_rate",
        "fx_rate_date",
        "tax_label",
        "tax_rate_percent",
        "reverse_charge",
        "net_usd",
        "tax_usd",
        "gross_usd",
        "net_amount",
        "tax_amount",
        "gross_amount",
        "lines_table",
        "issuer_card",
        "bill_to_card",
        "downloads",
    )

    @admin.display(description="total", ordering="gross_amount")
    def total(self, obj: CreditNote) -> str:
        return format_money(obj.gross_amount, obj.currency)

    @admin.display(description="issuer")
    def issuer_card(self, obj: CreditNote) -> str:
        return party_html(obj.issuer, "legal_name")

    @admin.display(description="credit to")
    def bill_to_card(self, obj: CreditNote) -> str:
        return party_html(obj.bill_to)

    @admin.display(description="lines")
    def lines_table(self, obj: CreditNote) -> str:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    line.get("position", ""),
                    line.get("description", ""),
                    line.get("amount_usd", ""),
                    line.get("amount", ""),
                )
                for line in obj.lines or []
            ),
        )
        return format_html(
            "<table><thead><tr><th>line</th><th>description</th><th>USD</th><th>{}</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            obj.currency,
            rows,
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<int:pk>/download/<str:fmt>/",
                self.admin_site.admin_view(self.file_view),
                name="billing_creditnote_file",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="download")
    def downloads(self, obj: CreditNote) -> str:
        return format_html(
            '<a href="{}">PDF</a> · <a href="{}">CSV</a>',
            reverse("admin:billing_creditnote_file", args=[obj.pk, "pdf"]),
            reverse("admin:billing_creditnote_file", args=[obj.pk, "csv"]),
        )

    def file_view(self, request: HttpRequest, pk: int, fmt: str) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        note = get_object_or_404(CreditNote.objects.select_related("invoice", "tenant"), pk=pk)
        if fmt == "csv":
            return _download(credit_note_csv(note), credit_note_filename(note, "csv"), "text/csv; charset=utf-8")
        return _download(credit_note_pdf(note), credit_note_filename(note), "application/pdf")


class IssuerForm(forms.ModelForm):
    logo_file = forms.ImageField(required=False, label="Logo", help_text="PNG or JPEG, up to 256 KB")
    webhook_url = forms.URLField(required=False, assume_scheme="https", help_text="Every tenant's events go here too")

    class Meta:
        model = Issuer
        fields = ("legal_name", "address", "country", "tax_id", "email", "payment_instructions", "webhook_url")

    def clean_logo_file(self) -> Any:
        upload = self.cleaned_data.get("logo_file")
        if upload is not None and upload.size > MAX_LOGO_BYTES:
            raise forms.ValidationError(f"The logo is over {MAX_LOGO_BYTES // 1024} KB: use a smaller image.")
        return upload


MAX_LOGO_BYTES = 256 * 1024


@admin.register(Issuer)
class IssuerAdmin(admin.ModelAdmin):
    """The platform as issuer: one row, printed on every invoice (a copy is kept on each)."""

    form = IssuerForm
    readonly_fields = ("logo_preview", "webhook_secret", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return not Issuer.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        issuer = issuer_get()  # made from TOLLWAY_INVOICE_ISSUER on first visit
        return HttpResponseRedirect(reverse("admin:billing_issuer_change", args=[issuer.pk]))

    @admin.display(description="current logo")
    def logo_preview(self, obj: Issuer) -> str:
        return obj.logo_id or "none"

    def save_model(self, request: HttpRequest, obj: Issuer, form: Any, change: bool) -> None:
        upload = form.cleaned_data.get("logo_file")
        if upload is not None:
            data = upload.read()
            sha = hashlib.sha256(data).hexdigest()
            logo, _ = IssuerLogo.objects.get_or_create(
                sha256=sha, defaults={"data": data, "content_type": upload.content_type or "image/png"}
            )
            obj.logo = logo
        super().save_model(request, obj, form, change)


@admin.register(CountryTaxRate)
class CountryTaxRateAdmin(admin.ModelAdmin):
    list_display = ("country", "label", "rate_percent")
    search_fields = ("country",)


@admin.register(ExchangeRate)
class ExchangeRateAdmin(admin.ModelAdmin):
    """Effective-dated: an invoice converts at the latest rate on or before its issue date."""

    list_display = ("currency", "effective_date", "rate", "note", "created_by")
    list_filter = ("currency",)
    date_hierarchy = "effective_date"
    readonly_fields = ("created_by", "created_at")

    def save_model(self, request: HttpRequest, obj: ExchangeRate, form: Any, change: bool) -> None:
        obj.created_by = request.user.get_username()
        super().save_model(request, obj, form, change)


@admin.register(Delivery)
class DeliveryAdmin(AppendOnly, admin.ModelAdmin):
    """The delivery log: every e-mail and webhook attempt, and its result."""

    list_display = ("created_at", "channel", "what", "tenant", "target", "attempt", "ok", "detail")
    list_filter = ("channel", "ok", "what")
    search_fields = ("tenant__slug", "target", "what")
    list_select_related = ("tenant",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(SpendAlert)
class SpendAlertAdmin(AppendOnly, admin.ModelAdmin):
    list_display = ("created_at", "tenant", "month", "threshold", "spend", "limit")
    spend = cents("spend (USD)", "spend_usd")
    limit = cents("limit (USD)", "limit_usd")
    list_filter = ("threshold", "month")
    list_select_related = ("tenant",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


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
            path(
                "<int:pk>/download/<str:fmt>/",
                self.admin_site.admin_view(self.download_view),
                name="billing_report_file",
            ),
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
