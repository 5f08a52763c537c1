from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone

from billing.models import Account, CreditEntry, Model, Price, UsageRecord
from billing.selectors import tenant_money
from tenants.admin import TenantAdmin as BaseTenantAdmin
from tenants.models import Tenant


class PriceInline(admin.TabularInline):
    model = Price
    extra = 0
    fields = ("effective_from", "input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok")


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


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
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
    search_fields = ("request_id", "tenant__slug")
    list_select_related = ("tenant", "model")
    date_hierarchy = "created_at"
    show_full_result_count = False  # no COUNT(*) over millions of rows

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- money per tenant: payment, credit ledger, and what is spent and held right now ---


class AccountInline(admin.StackedInline):
    model = Account
    can_delete = False
    extra = 1
    max_num = 1
    verbose_name = "billing account"


class CreditEntryInline(admin.TabularInline):
    """Append-only: a mistake is corrected by an adjustment, never by editing."""

    model = CreditEntry
    extra = 0
    fields = ("created_at", "kind", "amount_usd", "note", "created_by")
    readonly_fields = ("created_at", "created_by")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


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
class CreditEntryAdmin(admin.ModelAdmin):
    list_display = ("created_at", "tenant", "kind", "amount_usd", "note", "created_by")
    list_filter = ("kind",)
    search_fields = ("tenant__slug", "note")
    list_select_related = ("tenant",)
    fields = ("tenant", "kind", "amount_usd", "note")

    def save_model(self, request: HttpRequest, obj: CreditEntry, form: Any, change: bool) -> None:
        obj.created_by = request.user.get_username()
        super().save_model(request, obj, form, change)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
