"""Batches and files per tenant, with their state and cost. Read-only: a batch changes
through the API (cancel) and its runner, never by hand."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from batches.models import Batch, File


class ReadOnly(admin.ModelAdmin):  # shared by both models below
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Batch)
class BatchAdmin(ReadOnly):
    list_display = ("public_id", "tenant", "endpoint", "status", "total", "completed", "failed", "cost", "created_at")
    list_filter = ("status", "endpoint")
    search_fields = ("=public_id", "tenant__slug")
    list_select_related = ("tenant",)
    date_hierarchy = "created_at"
    exclude = ("lease_until", "nudged_at")


@admin.register(File)
class FileAdmin(ReadOnly):
    list_display = ("public_id", "tenant", "purpose", "filename", "bytes", "requests", "created_at")
    list_filter = ("purpose",)
    search_fields = ("=public_id", "tenant__slug", "filename")
    list_select_related = ("tenant",)
    date_hierarchy = "created_at"
