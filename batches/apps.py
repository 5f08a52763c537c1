from django.apps import AppConfig


class BatchesConfig(AppConfig):
    name = "batches"
    verbose_name = "Batch API"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from batches import signals  # noqa: F401  # resume batches when a worker starts
        from batches.views_web import batches_panel
        from tenants.extensions import dashboard_panel

        dashboard_panel(batches_panel)
