from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"
    verbose_name = "Providers and routing"

    def ready(self) -> None:
        from proxy import signals  # noqa: F401  # connects route cache invalidation
