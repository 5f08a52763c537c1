"""Invoices: ledger to the cent, late usage, grace, numbering, void and reissue, bad input."""

from __future__ import annotations

import os
import random
import subprocess
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.db.models import Sum

from billing.documents import invoice_csv, invoice_pdf, invoices_csv
from billing.invoicing import (
    InvoicingError,
    invoice_draft,
    invoice_finalize,
    invoice_rows,
    invoice_void,
    month_close,
    period_of,
    to_cents,
)
from billing.models import Account, Invoice, InvoiceLine, Model, Plan, UsageRecord
from billing.pricing import TokenUsage
from tenants.models import Tenant
from tests.billing.factories import random_usage, save, snapshot, usage_row

pytestmark = pytest.mark.django_db

OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)
AFTER_OCT = datetime(2026, 11, 2, tzinfo=UTC)  # October is over, still in its 72 h grace
AFTER_GRACE = datetime(2026, 11, 10, tzinfo=UTC)


@pytest.fixture
def models() -> dict[str, Model]:
    return {name: Model.objects.create(name=name) for name in ("gpt-4.1", "claude-sonnet-4", "deepseek-v3")}


def one_row(tenant: Tenant, model: Model, at: datetime, tokens: int = 1_000_000) -> UsageRecord:
    row = usage_row(
        tenant=tenant,
        model=model,
        at=at,
        price=snapshot("8", "32"),
        usage=TokenUsage(input_tokens=tokens, output_tokens=0),
    )
    row.save()
    return row


def test_invoice_lines_and_total_equal_the_ledger_to_the_cent_on_100k_random_rows(
    tenant: Tenant, models: dict[str, Model]
) -> None:
    # given 100,000 random rows over October, three models, a mid-month price change, a markup
    rng = random.Random(6)
    prices = {
        "gpt-4.1": [snapshot("8", "32", "2"), snapshot("7.5", "30", "1.875", fee="0.0001")],
        "claude-sonnet-4": [snapshot("15", "75", "1.5")],
        "deepseek-v3": [snapshot("0.42", "1.68")],
    }
    expected: dict[tuple[str, Decimal], Decimal] = defaultdict(Decimal)
    rows = []
    seconds = int((NOV - OCT).total_seconds())
    for _ in range(100_000):
        name = rng.choice(list(prices))
        at = OCT + timedelta(seconds=rng.randrange(seconds))
        price = prices[name][0 if at.day < 15 or len(prices[name]) == 1 else 1]
        row = usage_row(
            tenant=tenant, model=models[name], at=at, price=price, usage=random_usage(rng), markup=Decimal("12.5")
        )
        expected[(name, price.input_per_mtok)] += row.cost
        rows.append(row)
    save(rows)
    one_row(tenant, models["gpt-4.1"], NOV)  # November's: not on October's invoice

    # when October is closed
    invoice = invoice_draft(tenant=tenant, period="2026-10", now=AFTER_OCT)

    # then each line is its ledger rows' exact sum, rounded half-up to the cent, once
    assert invoice is not None
    lines = list(invoice.lines.select_related("model"))

    def list_price(line: InvoiceLine) -> tuple[str, Decimal]:
        assert line.model is not None and line.input_price_per_mtok is not None
        return line.model.name, line.input_price_per_mtok / Decimal("1.125")

    assert {list_price(line) for line in lines} == set(expected)
    for line in lines:
        exact = expected[list_price(line)]
        assert line.exact_usd == exact
        assert line.amount_usd == to_cents(exact)
    # the total is the sum of the lines, and the sum of the lines is the ledger's to the cent
    ledger = UsageRecord.objects.filter(tenant=tenant, created_at__lt=NOV).aggregate(s=Sum("cost"))["s"]
    assert ledger == sum(expected.values())
    assert invoice.total_usd == sum(to_cents(v) for v in expected.values()) == sum(line.amount_usd for line in lines)
    assert abs(invoice.total_usd - ledger) <= Decimal("0.005") * len(lines)
    assert invoice_rows(invoice).count() == invoice.usage_records.count() == 100_000
    assert sum(line.requests for line in lines) == 100_000


def test_late_usage_during_grace_lands_on_the_draft(tenant: Tenant, models: dict[str, Model]) -> None:
    one_row(tenant, models["gpt-4.1"], OCT + timedelta(days=3))
    invoice = invoice_draft(tenant=tenant, period="2026-10", now=AFTER_OCT)
    assert invoice is not None and invoice.total_usd == Decimal("8.00")
    # a row for October written after the close (e.g. a swept reservation) ...
    one_row(tenant, models["gpt-4.1"], OCT + timedelta(days=30, hours=23))
    # ... is taken by the next refresh, and by finalisation
    invoice = invoice_finalize(invoice=invoice, now=AFTER_GRACE)
    assert invoice.total_usd == Decimal("16.00")
    assert invoice.lines.get().requests == 2


def test_usage_after_finalisation_goes_on_the_next_invoice_as_an_adjustment(
    tenant: Tenant, models: dict[str, Model]
) -> None:
    one_row(tenant, models["gpt-4.1"], OCT + timedelta(days=3))
    october = invoice_draft(tenant=tenant, period="2026-10", now=AFTER_OCT)
    assert october is not None
    october = invoice_finalize(invoice=october, now=AFTER_GRACE)

    # given a late October row after October was finalised, and normal November usage
    late = one_row(tenant, models["claude-sonnet-4"], OCT + timedelta(days=20), tokens=500_000)
    one_row(tenant, models["gpt-4.1"], NOV + timedelta(days=1))

    # when November closes
    november = invoice_draft(tenant=tenant, period="2026-11", now=datetime(2026, 12, 1, 1, tzinfo=UTC))

    # then October's invoice is untouched and November carries the late row as an adjustment
    october.refresh_from_db()
    assert october.total_usd == Decimal("8.00") and october.lines.count() == 1
    assert november is not None
    adjustment = november.lines.get(kind=InvoiceLine.Kind.ADJUSTMENT)
    assert adjustment.usage_period == "2026-10" and "late usage from 2026-10" in adjustment.description
    assert adjustment.amount_usd == Decimal("4.00")
    assert november.total_usd == Decimal("12.00")
    late.refresh_from_db()
    assert late.invoice_id == november.pk
    assert november.billed_from == late.created_at and invoice_rows(november).count() == 2


def test_closing_a_month_twice_is_a_no_op(tenant: Tenant, models: dict[str, Model]) -> None:
    one_row(tenant, models["gpt-4.1"], OCT + timedelta(days=3))
    first = month_close(period="2026-10", finalize=True, now=AFTER_GRACE)
    again = month_close(period="2026-10", finalize=True, now=AFTER_GRACE)
    assert (first.drafted, first.finalized) == (1, 1)
    assert (again.drafted, again.finalized, again.skipped) == (0, 0, 1)
    assert Invoice.objects.count() == 1


def test_finalising_twice_is_refused_clearly(tenant: Tenant, models: dict[str, Model]) -> None:
    one_row(tenant, models["gpt-4.1"], OCT + timedelta(days=3))
    invoice = invoice_draft(tenant=tenant, period="2026-10", now=AFTER_OCT)
    assert invoice is not None
    invoice_finalize(invoice=invoice, now=AFTER_GRACE)
    with pytest.raises(
        InvoicingError, match=r"TW-2026-000001 is already finalised \(open\).*credit note, or void it and reissue"
    ):
        invoice_finalize(invoice=invoice, now=AFTER_GRACE)


def test_a_month_not_over_or_malformed_is_refused(tenant: Tenant) -> None:
    with pytest.raises(InvoicingError, match="not over yet"):
        invoice_draft(tenant=tenant, period="2026-11", now=datetime(2026, 11, 20, tzinfo=UTC))
    for bad in ("2026-13", "2026-1", "26-10", "october"):
        with pytest.raises(ValueError, match="use YYYY-MM"):
            invoice_draft(tenant=tenant, period=bad, now=AFTER_OCT)


def test_the_month_runs_in_the_tenants_time_zone(tenant: Tenant, models: dict[str, Model]) -> None:
    tenant.timezone = "Asia/Tokyo"  # UTC+9: October starts 2026-09-30 15:00 UTC
    tenant.save()
    one_row(tenant, models["gpt-4.1"], datetime(2026, 9, 30, 16, tzinfo=UTC))  # Oct 1, 01:00 in Tokyo
    one_row(tenant, models["gpt-4.1"], datetime(2026, 10, 31, 16, tzinfo=UTC))  # Nov 1 in Tokyo
    period = period_of(tz_name="Asia/Tokyo", label="2026-10")
    assert period.start == datetime(2026, 9, 30, 15, tzinfo=UTC)
    invoice = invoice_draft(tenant=tenant, period="2026-10", now=AFTER_OCT)
    assert invoice is not None and invoice.total_usd == Decimal("8.00")


def test_void_and_reissue_moves_the_rows_and_takes_a_new_number(tenant: Tenant, models: dict[str, Model]) -> None:
    one_row(tenant, models["gpt-4.1"], OCT + timedelta(days=3))
    invoice = invoice_draft(tenant=tenant, period="2026-10", now=AFTER_OCT)
    assert invoice is not None
    invoice = invoice_finalize(invoice=invoice, now=AFTER_GRACE)
    reissued = invoice_void(invoice=invoice, reason="wrong billing address", now=AFTER_GRACE)
    assert reissued is not None and reissued.replaces_id == invoice.pk
    reissued = invoice_finalize(invoice=reissued, now=AFTER_GRACE)
    invoice.refresh_from_db()
    assert (invoice.status, invoice.number) == (Invoice.Status.VOID, "TW-2026-000001")
    assert reissued.number == "TW-2026-000002" and reissued.total_usd == Decimal("8.00")
    assert UsageRecord.objects.get().invoice_id == reissued.pk
    with pytest.raises(InvoicingError, match=r"only an open .* or uncollectible invoice can be voided"):
        invoice_void(invoice=invoice, reason="again")


def test_platform_fee_tops_up_to_the_minimum_and_prepaid_credit_is_applied(
    tenant: Tenant, other_tenant: Tenant, models: dict[str, Model]
) -> None:
    postpaid = Plan.objects.create(name="Team", monthly_minimum_usd=Decimal("20"))
    prepaid = Plan.objects.create(name="Prepaid", monthly_minimum_usd=Decimal("5"), payment="prepaid")
    Account.objects.create(tenant=tenant, plan=postpaid)
    Account.objects.create(tenant=other_tenant, plan=prepaid)
    assert Account.objects.get(tenant=other_tenant).prepaid  # the plan decides how it pays
    one_row(tenant, models["gpt-4.1"], OCT + timedelta(days=3))
    one_row(other_tenant, models["gpt-4.1"], OCT + timedelta(days=3))

    month_close(period="2026-10", now=AFTER_OCT)

    team = Invoice.objects.get(tenant=tenant)
    assert [(line.kind, line.amount_usd) for line in team.lines.all()] == [
        ("usage", Decimal("8.00")),
        ("platform_fee", Decimal("12.00")),
    ]
    assert (team.subtotal_usd, team.credits_applied_usd, team.total_usd) == (Decimal(20), Decimal(0), Decimal(20))
    pre = Invoice.objects.get(tenant=other_tenant)
    assert [(line.kind, line.amount_usd) for line in pre.lines.all()] == [("usage", Decimal("8.00")), ("credit", -8)]
    assert (pre.subtotal_usd, pre.credits_applied_usd, pre.total_usd) == (Decimal(8), Decimal(8), Decimal(0))


def test_a_tenant_with_nothing_to_bill_gets_no_invoice(tenant: Tenant) -> None:
    assert invoice_draft(tenant=tenant, period="2026-10", now=AFTER_OCT) is None
    assert not Invoice.objects.exists()


def test_pdf_looks_like_an_invoice_and_csvs_add_up(tenant: Tenant, models: dict[str, Model], tmp_path: Path) -> None:
    tenant.billing_email = "ap@acme.example"
    tenant.save()
    Account.objects.create(tenant=tenant, plan=Plan.objects.create(name="Team", monthly_minimum_usd=Decimal("50")))
    rng = random.Random(1)
    rows = [
        usage_row(
            tenant=tenant,
            model=models[name],
            at=OCT + timedelta(hours=rng.randrange(700)),
            price=snapshot(*p),
            usage=random_usage(rng),
        )
        for name, p in [("gpt-4.1", ("8", "32", "2")), ("deepseek-v3", ("0.42", "1.68"))]
        for _ in range(40)
    ]
    save(rows)
    invoice = invoice_draft(tenant=tenant, period="2026-10", now=AFTER_OCT)
    assert invoice is not None
    invoice = invoice_finalize(invoice=invoice, now=AFTER_GRACE)

    pdf = invoice_pdf(invoice)
    assert pdf.startswith(b"%PDF")
    (tmp_path / "invoice.pdf").write_bytes(pdf)
    subprocess.run(["pdftoppm", "-png", "-r", "80", "-singlefile", "invoice.pdf", "invoice"], cwd=tmp_path, check=True)
    png = (tmp_path / "invoice.png").read_bytes()
    if os.environ.get("TOLLWAY_KEEP_INVOICE_PNG"):  # to look at it: the file path is printed
        keep = Path(os.environ["TOLLWAY_KEEP_INVOICE_PNG"])
        keep.write_bytes(png)
        (keep.with_suffix(".pdf")).write_bytes(pdf)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    text = subprocess.run(["pdftotext", "-layout", "invoice.pdf", "-"], cwd=tmp_path, check=True, capture_output=True)
    page = text.stdout.decode()
    assert invoice.number is not None
    for expected in ("Tollway", "INVOICE", invoice.number, "Acme Corp", "ap@acme.example", "gpt-4.1", "Total due"):
        assert expected in page
    assert f"${invoice.total_usd:,.2f}" in page

    lines = invoice_csv(invoice).splitlines()
    assert lines[0].startswith("invoice_number,status,tenant,period,line,kind")
    assert len(lines) == 1 + invoice.lines.count() + 1
    assert sum(Decimal(row.rsplit(",", 1)[1]) for row in lines[1:-1]) == Decimal(lines[-1].rsplit(",", 1)[1])
    month = invoices_csv(Invoice.objects.filter(period="2026-10")).splitlines()
    assert month[1].startswith(f"{invoice.number},open,acme,Acme Corp,,,2026-10")


def test_the_minimum_is_charged_for_an_idle_month_but_not_before_the_tenant_existed(tenant: Tenant) -> None:
    Account.objects.create(tenant=tenant, plan=Plan.objects.create(name="Team", monthly_minimum_usd=Decimal("20")))
    # created after October (the fixture's tenant is created now): nothing for October
    Tenant.objects.filter(pk=tenant.pk).update(created_at=NOV + timedelta(days=5))
    tenant.refresh_from_db()
    assert invoice_draft(tenant=tenant, period="2026-10", now=AFTER_GRACE) is None
    # a tenant that existed in October and used nothing owes the platform fee
    Tenant.objects.filter(pk=tenant.pk).update(created_at=OCT - timedelta(days=40))
    tenant.refresh_from_db()
    invoice = invoice_draft(tenant=tenant, period="2026-10", now=AFTER_GRACE)
    assert invoice is not None and invoice.total_usd == Decimal("20.00")
    assert [line.kind for line in invoice.lines.all()] == ["platform_fee"]
