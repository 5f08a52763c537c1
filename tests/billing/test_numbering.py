"""Concurrent finalisation never duplicates or skips an invoice number (threads, real transactions).

Each thread has its own database connection, so the row locks are real; without the
counter lock in ``billing.locks`` two threads read the same last number, and this fails.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection

from billing.invoicing import InvoicingError, invoice_draft, invoice_finalize, month_close, to_cents
from billing.models import Invoice, InvoiceCounter, Model
from billing.pricing import TokenUsage
from tenants import services
from tests.billing.factories import snapshot, usage_row

THREADS = 8
INVOICES = 48
NOW = datetime(2026, 11, 10, tzinfo=UTC)


def drafts(count: int, *, draft: bool = True) -> list[Invoice]:
    model = Model.objects.create(name="gpt-4.1")
    made = []
    for i in range(count):
        tenant = services.tenant_create(slug=f"t{i}", name=f"Tenant {i}")
        usage_row(
            tenant=tenant,
            model=model,
            at=datetime(2026, 10, 5, tzinfo=UTC),
            price=snapshot("8", "32"),
            usage=TokenUsage(input_tokens=1_000 * (i + 1), output_tokens=0),
        ).save()
        if not draft:
            continue
        invoice = invoice_draft(tenant=tenant, period="2026-10", now=NOW)
        assert invoice is not None
        made.append(invoice)
    return made


def run_threads(work: list[list[Invoice]]) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(work))

    def finalize_all(batch: list[Invoice]) -> None:
        try:
            barrier.wait()
            for invoice in batch:
                # another thread may have finalised it first: refused, as it must be
                with contextlib.suppress(InvoicingError):
                    invoice_finalize(invoice=invoice, now=NOW)
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=finalize_all, args=(batch,)) for batch in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


@pytest.mark.django_db(transaction=True)
def test_concurrent_finalisation_numbers_are_gapless_and_unique() -> None:
    invoices = drafts(INVOICES)
    # every thread tries every invoice, each in its own order, so they collide on the
    # counter and on the same invoices
    work = [invoices[i:] + invoices[:i] for i in range(0, INVOICES, INVOICES // THREADS)]

    errors = run_threads(work)

    assert errors == []
    numbers = sorted(str(n) for n in Invoice.objects.values_list("number", flat=True))
    assert numbers == [f"TW-2026-{n:06d}" for n in range(1, INVOICES + 1)]
    assert InvoiceCounter.objects.get(year=2026).last == INVOICES
    assert set(Invoice.objects.values_list("status", flat=True)) == {Invoice.Status.FINALIZED}
    # each was finalised once, with its own lines intact
    assert sorted(Invoice.objects.values_list("total_usd", flat=True)) == sorted(
        to_cents(Decimal(8 * (i + 1)) / 1000) for i in range(INVOICES)
    )


@pytest.mark.django_db(transaction=True)
def test_month_close_with_worker_threads_numbers_every_tenant_once() -> None:
    drafts(20, draft=False)  # ledger rows only

    result = month_close(period="2026-10", finalize=True, now=NOW, workers=4)

    assert (result.tenants, result.drafted, result.finalized) == (20, 20, 20)
    numbers = sorted(str(n) for n in Invoice.objects.values_list("number", flat=True))
    assert numbers == [f"TW-2026-{n:06d}" for n in range(1, 21)]
