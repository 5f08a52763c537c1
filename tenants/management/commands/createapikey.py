from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants import selectors, services
from tenants.validators import DEFAULT_SCOPES, SCOPES


class Command(BaseCommand):
    help = "Create an API key for a tenant. The secret is printed once, as the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="The tenant's slug")
        parser.add_argument("--name", default="", help="A label for the key")
        parser.add_argument(
            "--scopes",
            default=",".join(DEFAULT_SCOPES),
            help=f"Comma-separated, from {', '.join(SCOPES)} (default: {','.join(DEFAULT_SCOPES)})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = selectors.tenant_get(slug=options["slug"])
        if tenant is None:
            raise CommandError(f"No tenant {options['slug']!r}. Create it first: manage.py createtenant SLUG")
        scopes = [s.strip() for s in options["scopes"].split(",") if s.strip()]
        try:
            created = services.api_key_create(tenant=tenant, name=options["name"], scopes=scopes)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        self.stdout.write(
            f"Created key {created.api_key.display} for {tenant.slug} with scopes {','.join(created.api_key.scopes)}. "
            "It is shown once; store it now."
        )
        self.stdout.write(created.plaintext)
