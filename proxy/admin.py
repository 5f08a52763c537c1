from __future__ import annotations

from django.contrib import admin

from billing.admin import ModelAdmin as BillingModelAdmin
from billing.admin import PriceInline
from billing.models import Model
from proxy.models import Deployment, Provider


class DeploymentInline(admin.TabularInline):
    model = Deployment
    extra = 0
    fields = ("provider", "upstream_model", "priority", "weight", "is_active")
    autocomplete_fields = ("provider",)


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "base_url", "api_key_env", "credential_set", "is_active")
    list_filter = ("kind", "is_active")
    search_fields = ("name", "base_url")

    @admin.display(boolean=True, description="Credential present")
    def credential_set(self, obj: Provider) -> bool:
        return obj.credential_configured


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ("model", "provider", "upstream_model", "priority", "weight", "is_active")
    list_filter = ("provider", "is_active")
    search_fields = ("model__name", "upstream_model")
    list_select_related = ("model", "provider")
    autocomplete_fields = ("model", "provider")


# Edit a model's deployments on its own page. Billing may not import the proxy, so the
# proxy extends billing's admin rather than the reverse.
admin.site.unregister(Model)


@admin.register(Model)
class ModelAdmin(BillingModelAdmin):
    inlines = [PriceInline, DeploymentInline]
