"""``manage.py closemonth YYYY-MM|last [--tenant SLUG] [--finalize]``: the month close, by hand.

``last`` is each tenant's previous month in its own time zone, as the beat task closes it.

It runs the same service as the Celery beat task (``billing.invoicing.month_close``), so
running it twice is a no-op, and it prints its progress as it goes.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.invoicing import InvoicingError, invoice_rows, month_close, period_parse
from billing.models import Invoice
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Draft (and with --finalize, finalise) each tenant's invoice for a billing month."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "period", help="The billing month, YYYY-MM (in each tenant's time zone), or 'last' for the previous one"
        )
        parser.add_argument("--tenant", help="Only this tenant (its slug)")
        parser.add_argument("--finalize", action="store_true", help="Finalise the drafts now: number and freeze them")
        parser.add_argument("--workers", type=int, default=1, help="Close this many tenants at once (threads)")

    def handle(self, *args: Any, period: str, tenant: str | None, finalize: bool, workers: int, **options: Any) -> None:
        label: str | None = None if period == "last" else period
        if label is not None:
            try:
                period_parse(label)
            except ValueError as exc:
                raise CommandError(f"{exc} Or 'last' for each tenant's previous month.") from None
        tenants = Tenant.objects.order_by("pk")
        if tenant:
            tenants = tenants.filter(slug=tenant)
            if not tenants.exists():
                raise CommandError(f"No tenant with the slug '{tenant}'.")
        total = tenants.count()
        started = time.monotonic()
        rows = 0
        every = max(total // 20, 1)

        def progress(done: int, who: Tenant, invoice: Invoice | None) -> None:
            nonlocal rows
            if invoice is not None and (invoice.is_draft or finalize):
                rows += invoice_rows(invoice).count()
            if done % every == 0 or done == total or tenant:
                elapsed = max(time.monotonic() - started, 1e-9)
                what = (
                    "nothing to bill"
                    if invoice is None
                    else f"{invoice.period} {invoice} ${invoice.total_usd} ({invoice.status})"
                )
                self.stdout.write(
                    f"[{done}/{total}] {who.slug}: {what}; {rows:,} ledger rows in {elapsed:.1f}s "
                    f"({rows / elapsed:,.0f} rows/s)"
                )

        try:
            result = month_close(
                period=label, tenants=tenants, finalize=finalize, progress=progress, workers=max(workers, 1)
            )
        except InvoicingError as exc:
            raise CommandError(str(exc)) from None
        elapsed = time.monotonic() - started
        self.stdout.write(
            self.style.SUCCESS(
                f"{period}: {result.tenants} tenants, {result.drafted} drafted or refreshed, "
                f"{result.finalized} finalised, {result.skipped} already final or with nothing to bill; "
                f"{rows:,} ledger rows in {elapsed:.1f}s"
            )
        )
