from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        from billing import signals  # noqa: F401  # keeps cached accounts and credit counters true
        from billing.selectors import tenant_money
        from tenants.extensions import tenant_detail_section

        tenant_detail_section(tenant_money)
