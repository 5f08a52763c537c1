from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from billing.admission import credit_balance
from billing.models import Account, CreditEntry
from tenants.selectors import tenant_get


class Command(BaseCommand):
    help = "Record a credit top-up (or, with a negative amount, an adjustment) for a tenant."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="The tenant's slug")
        parser.add_argument("amount_usd", help="USD, e.g. 50 or 12.50; negative for an adjustment")
        parser.add_argument("--note", default="", help="Why, e.g. an invoice or payment reference")
        parser.add_argument("--prepaid", action="store_true", help="Also switch the tenant to prepaid")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = tenant_get(slug=options["slug"])
        if tenant is None:
            raise CommandError(f"No tenant {options['slug']!r}.")
        try:
            amount = Decimal(options["amount_usd"])
        except InvalidOperation:
            raise CommandError(f"{options['amount_usd']!r} is not an amount, e.g. 50 or 12.50") from None
        if not amount.is_finite() or amount == 0:
            raise CommandError("The amount must be a non-zero number.")
        kind = CreditEntry.Kind.TOPUP if amount > 0 else CreditEntry.Kind.ADJUSTMENT
        entry = CreditEntry(
            tenant=tenant, kind=kind, amount_usd=amount, note=options["note"], created_by="manage.py topup"
        )
        try:
            entry.full_clean()
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        with transaction.atomic():
            entry.save()
            if options["prepaid"]:
                account, _ = Account.objects.get_or_create(tenant=tenant)
                account.payment = Account.Payment.PREPAID
                account.save()
        self.stdout.write(f"Recorded {kind} of ${amount} for {tenant.slug}. Balance: ${credit_balance(tenant.pk)}.")
