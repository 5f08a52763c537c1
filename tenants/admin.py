from __future__ import annotations

import re
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from tenants import keys, services
from tenants.forms import ApiKeyAdminForm, TenantAdminForm, TenantUserCreationForm
from tenants.models import ApiKey, Membership, Tenant


def scopes_text(api_key: ApiKey) -> str:
    """Scopes as words (``inference, billing``), not the JSON list they are stored as."""
    return ", ".join(api_key.scopes or []) or "—"


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("display", "name", "scopes_text", "created_at", "expires_at", "revoked_at", "last_used_at")
    readonly_fields = fields

    @admin.display(description="scopes")
    def scopes_text(self, obj: ApiKey) -> str:
        return scopes_text(obj)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # keys are issued from the API key page, which shows the secret once


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = TenantAdminForm
    list_display = ("slug", "name", "status", "billing_email", "monthly_budget_usd", "created_at")
    list_filter = ("status",)
    search_fields = ("slug", "name", "billing_email")
    inlines = [ApiKeyInline]
    actions = ["suspend", "activate"]

    @admin.action(description="Suspend selected tenants (their keys answer 403)")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            services.tenant_set_status(tenant=tenant, status=Tenant.Status.SUSPENDED)
        self.message_user(request, f"Suspended {queryset.count()} tenant(s).")

    @admin.action(description="Reactivate selected tenants")
    def activate(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            services.tenant_set_status(tenant=tenant, status=Tenant.Status.ACTIVE)
        self.message_user(request, f"Activated {queryset.count()} tenant(s).")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyAdminForm
    list_display = (
        "display",
        "tenant",
        "name",
        "scopes_text",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )
    list_filter = ("tenant",)
    search_fields = ("key_id", "name", "tenant__slug", "tenant__name")
    list_select_related = ("tenant",)
    actions = ["revoke"]
    _editable = list(services.KEY_FIELDS)
    _stamps = ["created_at", "revoked_at", "last_used_at", "previous_expires_at"]

    @admin.display(description="scopes")
    def scopes_text(self, obj: ApiKey) -> str:
        return scopes_text(obj)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ["tenant", *self._editable]
        return ["display", "tenant", *self._editable, *self._stamps]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ()
        return ("display", "tenant", *self._stamps)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[ApiKey], search_term: str) -> Any:
        # Admins paste what they see: 'tlw_<key id>_…abcd' or a whole leaked key.
        match = re.match(r"^tlw_([0-9A-Za-z]+)", search_term.strip())
        if match:
            return queryset.filter(key_id__startswith=match.group(1)[: keys.KEY_ID_LENGTH]), False
        return super().get_search_results(request, queryset, search_term)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        plaintext = services.api_key_issue(api_key=obj)
        messages.warning(request, f"Copy this key now; it will not be shown again: {plaintext}")

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            services.api_key_revoke(api_key=api_key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead: the ledger refers to keys


class MembershipInline(admin.StackedInline):
    """Dashboard accounts are made here: add a user, then give it a tenant and a role."""

    model = Membership
    can_delete = True
    extra = 0
    max_num = 1
    autocomplete_fields = ("tenant",)


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class TenantUserAdmin(UserAdmin):
    inlines = [MembershipInline]
    add_form = TenantUserCreationForm
    add_fieldsets = (
        (None, {"classes": ("wide",), "fields": ("username", "email", "usable_password", "password1", "password2")}),
    )
    list_display = ("username", "email", "membership", "is_staff", "is_active")
    list_select_related = ("membership__tenant",)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "tenant", "role", "created_at")
    list_filter = ("role", "tenant")
    search_fields = ("user__username", "user__email", "tenant__slug")
    autocomplete_fields = ("tenant",)
    raw_id_fields = ("user",)
