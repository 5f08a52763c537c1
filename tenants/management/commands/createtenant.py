from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants import services


def _usd(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise CommandError(f"--monthly-budget-usd {value!r} is not a number, e.g. 250 or 99.50") from None
    if not amount.is_finite() or amount < 0:
        raise CommandError("--monthly-budget-usd must be zero or more.")
    return amount


class Command(BaseCommand):
    help = "Create a tenant."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="Stable identifier, e.g. acme")
        parser.add_argument("--name", default="", help="Display name (defaults to the slug)")
        parser.add_argument("--monthly-budget-usd", default=None, help="Hard monthly cap in USD")

    def handle(self, *args: Any, **options: Any) -> None:
        budget = _usd(options["monthly_budget_usd"]) if options["monthly_budget_usd"] is not None else None
        try:
            tenant = services.tenant_create(slug=options["slug"], name=options["name"], monthly_budget_usd=budget)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        self.stdout.write(f"Created tenant {tenant.slug} ({tenant.name}).")
