"""Credit notes: whole, chosen lines, an amount; never more than the invoice; gapless numbers
under concurrency (threads, real transactions), like the invoice numbers."""

from __future__ import annotations

import contextlib
import threading
from datetime import date
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection

from billing.credit_notes import credit_note_issue
from billing.documents import credit_note_csv, credit_note_pdf, credit_notes_csv
from billing.models import BillingProfile, CountryTaxRate, CreditNote, CreditNoteCounter, ExchangeRate, Invoice
from config.errors import Conflict, InvalidRequest
from tenants import services
from tenants.models import Tenant
from tests.billing.finance import ISSUED, october_invoice


@pytest.mark.django_db
def test_whole_lines_and_amount_never_credit_more_than_the_invoice(tenant: Tenant) -> None:
    # given a KRW invoice with German-style 10 % tax: lines $8.00 and $4.00 at 1,400 KRW per USD
    BillingProfile.objects.create(tenant=tenant, currency="KRW", tax_rate_percent=Decimal(10))
    ExchangeRate.objects.create(currency="KRW", rate=Decimal("1400"), effective_date=date(2026, 11, 1))
    invoice = october_invoice(tenant)
    assert [line.amount for line in invoice.lines.all()] == [Decimal(11200), Decimal(5600)]

    # a line
    first = credit_note_issue(invoice=invoice, reason="model-0 was misrouted", by="alice", lines=[1])
    assert (first.number, first.net_amount, first.tax_amount, first.gross_amount) == (
        "CN-2026-000001",
        Decimal(11200),
        Decimal(1120),
        Decimal(12320),
    )
    assert (first.net_usd, first.tax_usd) == (Decimal("8.00"), Decimal("0.80"))
    with pytest.raises(Conflict, match=r"Line 1 .* already credited"):
        credit_note_issue(invoice=invoice, reason="again", by="alice", lines=[1])
    with pytest.raises(Conflict, match="already partly credited"):
        credit_note_issue(invoice=invoice, reason="all", by="alice")
    # an amount, within what is left
    with pytest.raises(Conflict, match="more than the 5600"):
        credit_note_issue(invoice=invoice, reason="too much", by="alice", amount=Decimal(6000))
    with pytest.raises(InvalidRequest, match="more decimals than KRW"):
        credit_note_issue(invoice=invoice, reason="cents", by="alice", amount=Decimal("10.5"))
    second = credit_note_issue(invoice=invoice, reason="goodwill", by="alice", amount=Decimal(5600))
    assert second.number == "CN-2026-000002" and second.net_usd == Decimal("4.00")
    with pytest.raises(Conflict, match=r"nothing left|more than the 0"):
        credit_note_issue(invoice=invoice, reason="more", by="alice", amount=Decimal(1))
    # no reason, both kinds, a draft
    with pytest.raises(InvalidRequest, match="needs a reason"):
        credit_note_issue(invoice=invoice, reason=" ", by="alice", amount=Decimal(1))

    # documents
    assert credit_note_pdf(first).startswith(b"%PDF")
    assert "CN-2026-000001" in credit_note_csv(first) and "12320" in credit_note_csv(first)
    register = credit_notes_csv(CreditNote.objects.order_by("number")).splitlines()
    assert register[1].startswith("CN-2026-000001,TW-2026-000001,acme")


@pytest.mark.django_db
def test_a_whole_credit_note_mirrors_the_invoice(tenant: Tenant) -> None:
    CountryTaxRate.objects.create(country="FR", rate_percent=Decimal(20))
    BillingProfile.objects.create(tenant=tenant, country="FR")
    invoice = october_invoice(tenant)
    note = credit_note_issue(invoice=invoice, reason="cancelled", by="alice")
    assert (note.kind, note.net_usd, note.tax_usd, note.gross_usd) == (
        "whole",
        Decimal(12),
        Decimal("2.4"),
        Decimal("14.4"),
    )
    assert (note.net_usd, note.tax_usd, note.gross_usd) == (invoice.total_usd, invoice.tax_usd, invoice.gross_usd)
    draft = october_invoice(services.tenant_create(slug="d", name="D"), finalize=False)
    with pytest.raises(Conflict, match="only a finalised invoice"):
        credit_note_issue(invoice=draft, reason="x", by="alice")


THREADS, NOTES = 8, 40


@pytest.mark.django_db(transaction=True)
def test_concurrent_credit_notes_are_numbered_gaplessly() -> None:
    invoices: list[Invoice] = [
        october_invoice(services.tenant_create(slug=f"t{i}", name=f"T{i}"), lines=1) for i in range(NOTES // 4)
    ]
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def issue(worker: int) -> None:
        try:
            barrier.wait()
            for i in range(NOTES // THREADS):
                invoice = invoices[(worker + i) % len(invoices)]
                with contextlib.suppress(Conflict):  # an invoice fully credited by others
                    credit_note_issue(invoice=invoice, reason=f"w{worker}", by="t", amount=Decimal("0.01"), now=ISSUED)
        except BaseException as exc:
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=issue, args=(w,)) for w in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    numbers = sorted(CreditNote.objects.values_list("number", flat=True))
    assert numbers == [f"CN-2026-{n:06d}" for n in range(1, NOTES + 1)]
    assert CreditNoteCounter.objects.get(year=2026).last == NOTES
