from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants import selectors, services


class Command(BaseCommand):
    help = "Create an API key for a tenant. The secret is printed once, as the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="The tenant's slug")
        parser.add_argument("--name", default="", help="A label for the key")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = selectors.tenant_get(slug=options["slug"])
        if tenant is None:
            raise CommandError(f"No tenant {options['slug']!r}. Create it first: manage.py createtenant SLUG")
        created = services.api_key_create(tenant=tenant, name=options["name"])
        self.stdout.write(f"Created key {created.api_key.display} for {tenant.slug}. It is shown once; store it now.")
        self.stdout.write(created.plaintext)
