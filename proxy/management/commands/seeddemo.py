"""Demo data for ``make run``: a tenant, priced models on the built-in mock, and one key.

With ``--history`` (``make demo``), also three past months of usage for two demo tenants,
two of them closed into finalised invoices (``billing.demo``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from billing import demo
from billing.models import Model, Price
from proxy.models import Deployment, Provider
from tenants import services
from tenants.models import ApiKey, Tenant

# USD per million input / output tokens, from the seed article's price table.
DEMO_PRICES = {
    "gpt-4.1": ("8.00", "32.00"),
    "gpt-4.1-mini": ("2.00", "8.00"),
    "claude-sonnet-4": ("15.00", "75.00"),
    "gemini-2.5-flash": ("2.50", "10.00"),
    "deepseek-v3": ("0.42", "1.68"),
}


class Command(BaseCommand):
    help = "Seed demo data (idempotent). Prints a new key for tenant 'demo' only the first time."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--history",
            action="store_true",
            help="Also three past months of usage for two demo tenants (a plan with a markup, a prepaid "
            "tenant, a mid-month price change), the older two closed into invoices",
        )

    def handle(self, *args: Any, history: bool = False, **options: Any) -> None:
        self.seed()
        if history:
            self.seed_history()

    @transaction.atomic
    def seed(self) -> None:
        mock, _ = Provider.objects.get_or_create(name="mock", defaults={"kind": Provider.Kind.MOCK})
        for name, (input_price, output_price) in DEMO_PRICES.items():
            model, _ = Model.objects.get_or_create(name=name)
            if not model.prices.exists():
                Price.objects.create(
                    model=model, input_per_mtok=Decimal(input_price), output_per_mtok=Decimal(output_price)
                )
            Deployment.objects.get_or_create(model=model, provider=mock, upstream_model=name)
        tenant, _ = Tenant.objects.get_or_create(slug="demo", defaults={"name": "Demo tenant"})
        if ApiKey.objects.filter(tenant=tenant).exists():
            self.stdout.write("Demo data present. For another key: .venv/bin/python manage.py createapikey demo")
            return
        created = services.api_key_create(tenant=tenant, name="demo")
        self.stdout.write(f"Demo tenant 'demo' created with models: {', '.join(DEMO_PRICES)}.")
        self.stdout.write("Its API key, shown once (store it now):")
        self.stdout.write(created.plaintext)

    def seed_history(self) -> None:
        result = demo.history_seed()
        self.stdout.write(
            f"History for {', '.join(t.slug for t in demo.TENANTS)} over {', '.join(result.months)}: "
            f"{result.rows_added:,} ledger rows added."
        )
        for slug, plaintext in result.new_keys.items():
            self.stdout.write(f"Tenant '{slug}' API key, shown once (store it now):")
            self.stdout.write(plaintext)
        if result.invoices:
            self.stdout.write(f"Finalised invoices: {', '.join(result.invoices)}.")
        self.stdout.write(
            f"{result.open_month} is still open. Close it into invoices:\n"
            "    .venv/bin/python manage.py closemonth last --finalize"
        )
