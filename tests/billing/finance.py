"""Helpers for the finance tests: a finalised October invoice, quickly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from billing.invoicing import invoice_draft, invoice_finalize
from billing.models import Invoice, Model
from billing.pricing import TokenUsage
from tenants.models import Tenant
from tests.billing.factories import snapshot, usage_row

OCT = datetime(2026, 10, 1, tzinfo=UTC)
AFTER_OCT = datetime(2026, 11, 2, tzinfo=UTC)
ISSUED = datetime(2026, 11, 10, 9, tzinfo=UTC)


def october_invoice(tenant: Tenant, *, lines: int = 2, finalize: bool = True, tokens: int = 1_000_000) -> Invoice:
    """``lines`` models used in October (1M input tokens at $8, $4, ... per Mtok), closed and finalised."""
    for i in range(lines):
        model, _ = Model.objects.get_or_create(name=f"model-{i}")
        usage_row(
            tenant=tenant,
            model=model,
            at=OCT + timedelta(days=3 + i),
            price=snapshot(str(Decimal(8) / (i + 1)), "32"),
            usage=TokenUsage(input_tokens=tokens, output_tokens=0),
        ).save()
    invoice = invoice_draft(tenant=tenant, period="2026-10", now=AFTER_OCT)
    assert invoice is not None
    return invoice_finalize(invoice=invoice, now=ISSUED) if finalize else invoice
