from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone

from billing.models import Model, Price, UsageRecord


class PriceInline(admin.TabularInline):
    model = Price
    extra = 0
    fields = ("effective_from", "input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok")


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = ("name", "owned_by", "is_active", "current_price")
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
