"""Shared set-up for the web pages' tests: tenant users, ledger history and an invoice."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User
from django.utils import timezone

from billing.invoicing import invoice_draft, invoice_finalize
from billing.models import Invoice, Model
from billing.pricing import TokenUsage
from tenants.models import ApiKey, Membership, Tenant
from tests.billing.factories import save, snapshot, usage_row

PASSWORD = "correct horse battery staple"


def member(tenant: Tenant, username: str, role: str = Membership.Role.OWNER) -> User:
    user = User.objects.create_user(username=username)  # the project keeps Django's User
    # A hash the production server (default hashers) can check too; few rounds, as tests use.
    user.password = PBKDF2PasswordHasher().encode(PASSWORD, PBKDF2PasswordHasher().salt(), iterations=1000)
    user.save(update_fields=["password"])
    Membership.objects.create(user=user, tenant=tenant, role=role)
    return user


def spend_history(tenant: Tenant, models: list[Model], key: ApiKey | None, days: int = 12) -> None:
    """A few calls a day for the last ``days`` days, on each model, so the chart has stacks."""
    now = timezone.now()
    rows = []
    for day in range(days):
        for i, model in enumerate(models):
            tokens = 200_000 + 50_000 * ((day + i) % 4)
            rows.append(
                usage_row(
                    tenant=tenant,
                    model=model,
                    at=now - timedelta(days=day, minutes=5),
                    price=snapshot("8", "32"),
                    usage=TokenUsage(input_tokens=tokens, output_tokens=tokens // 10),
                    api_key=key,
                )
            )
    save(rows)


def issued_invoice(tenant: Tenant, model: Model) -> Invoice:
    """A finalised invoice for last month, with one ledger row on it."""
    now = timezone.now()
    first = now.replace(day=1, hour=12, minute=0, second=0, microsecond=0)
    last_month = first - timedelta(days=3)
    save(
        [
            usage_row(
                tenant=tenant,
                model=model,
                at=last_month,
                price=snapshot("8", "32"),
                usage=TokenUsage(input_tokens=1_000_000, output_tokens=100_000),
            )
        ]
    )
    period = f"{last_month:%Y-%m}"
    after_grace = first + timedelta(days=20)
    invoice = invoice_draft(tenant=tenant, period=period, now=after_grace)
    assert invoice is not None
    return invoice_finalize(invoice=invoice, now=max(after_grace, datetime.now(tz=now.tzinfo)))
