from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ImproperlyConfigured
from django.db.models import QuerySet
from django.http import HttpRequest

from billing.admin import ModelAdmin as BillingModelAdmin
from billing.admin import PriceInline
from billing.models import Model
from proxy import circuit, credentials, health
from proxy.models import Deployment, DeploymentHealth, Fallback, Provider


class ProviderForm(forms.ModelForm):
    """A credential can be pasted once; it is stored encrypted and never rendered again."""

    api_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Paste the provider's API key to store it encrypted (it is never shown again). Leave empty to "
        "keep the stored one. An environment variable named in 'API key env' takes precedence.",
    )
    base_url = forms.URLField(
        required=False, assume_scheme="https", help_text=Provider._meta.get_field("base_url").help_text
    )
    clear_api_key = forms.BooleanField(required=False, help_text="Forget the stored credential.")

    class Meta:
        model = Provider
        fields = (
            "name",
            "kind",
            "base_url",
            "is_active",
            "api_key_env",
            "connect_timeout",
            "first_byte_timeout",
            "idle_timeout",
            "total_timeout",
            "drop_unsupported_params",
            "serves_responses",
        )

    def clean_api_key(self) -> str:
        value: str = self.cleaned_data.get("api_key") or ""
        if value:
            try:
                return credentials.encrypt(value)
            except ImproperlyConfigured as exc:
                raise forms.ValidationError(str(exc)) from None
        return ""


class DeploymentInline(admin.TabularInline):
    model = Deployment
    extra = 0
    fields = ("provider", "upstream_model", "priority", "weight", "is_active")
    autocomplete_fields = ("provider",)


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ("name", "kind", "base_url", "api_key_env", "credential_set", "is_active")
    list_filter = ("kind", "is_active")
    search_fields = ("name", "base_url")
    readonly_fields = ("credential_status",)
    fieldsets = (
        (None, {"fields": ("name", "kind", "base_url", "is_active", "drop_unsupported_params", "serves_responses")}),
        ("Credential", {"fields": ("credential_status", "api_key_env", "api_key", "clear_api_key")}),
        (
            "Timeouts (seconds; empty = the TOLLWAY_UPSTREAM_* default)",
            {"fields": ("connect_timeout", "first_byte_timeout", "idle_timeout", "total_timeout")},
        ),
    )

    @admin.display(boolean=True, description="Credential present")
    def credential_set(self, obj: Provider) -> bool:
        return obj.credential_configured if obj.api_key_env else obj.credential_stored or obj.kind == Provider.Kind.MOCK

    @admin.display(description="Credential")
    def credential_status(self, obj: Provider) -> str:
        if obj.api_key_env:
            state = "set" if obj.credential_configured else "NOT set"
            return f"from environment variable {obj.api_key_env} ({state})"
        return "stored, encrypted" if obj.credential_stored else "none"

    def save_model(self, request: HttpRequest, obj: Provider, form: Any, change: bool) -> None:
        if form.cleaned_data.get("clear_api_key"):
            obj.api_key_encrypted = ""
        if form.cleaned_data.get("api_key"):
            obj.api_key_encrypted = form.cleaned_data["api_key"]  # already encrypted by the form
        super().save_model(request, obj, form, change)


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ("model", "provider", "upstream_model", "priority", "weight", "is_active", "circuit", "last_check")
    list_filter = ("provider", "is_active")
    search_fields = ("model__name", "upstream_model")
    list_select_related = ("model", "provider", "health")
    autocomplete_fields = ("model", "provider")
    readonly_fields = ("circuit", "last_check")
    actions = ["check_now"]

    @admin.display(description="Circuit (live, Redis)")
    def circuit(self, obj: Deployment) -> str:
        return circuit.describe(obj.pk) if obj.pk else "-"

    @admin.display(description="Last health check")
    def last_check(self, obj: Deployment) -> str:
        try:
            h = obj.health
        except DeploymentHealth.DoesNotExist:
            return "never"
        result = "ok" if h.ok else f"FAILING ({h.status or 'no answer'}: {h.error[:80]})"
        return f"{result} in {h.latency_ms} ms at {h.checked_at:%Y-%m-%d %H:%M:%S}"

    @admin.action(description="Run a health check now")
    def check_now(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        results = [health.deployment_health_check(deployment=d) for d in queryset.select_related("provider")]
        failing = sum(1 for r in results if not r.ok)
        self.message_user(request, f"Checked {len(results)} deployment(s); {failing} failing.")


@admin.register(Fallback)
class FallbackAdmin(admin.ModelAdmin):
    list_display = ("model", "fallback", "position")
    autocomplete_fields = ("model", "fallback")


class FallbackInline(admin.TabularInline):
    model = Fallback
    fk_name = "model"
    extra = 0
    fields = ("fallback", "position")
    autocomplete_fields = ("fallback",)
    verbose_name = "fallback model"
    verbose_name_plural = "fallback models (served, at their own price, when every deployment fails)"


# Edit a model's deployments on its own page. Billing may not import the proxy, so the
# proxy extends billing's admin rather than the reverse.
admin.site.unregister(Model)


@admin.register(Model)
class ModelAdmin(BillingModelAdmin):
    inlines = [PriceInline, DeploymentInline, FallbackInline]
