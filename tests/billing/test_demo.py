"""``seeddemo --history``: three past months a newcomer can close into invoices at once."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.core.management import call_command

from billing import demo
from billing.admission import credit_balance
from billing.documents import invoice_pdf
from billing.invoicing import month_close
from billing.models import Invoice, Model, Report, UsageRecord
from billing.selectors import usage_report
from tenants.models import Tenant

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture
def seeded() -> demo.HistoryResult:
    call_command("seeddemo", verbosity=0)
    return demo.history_seed(now=NOW)


def test_three_past_months_for_two_tenants_with_the_older_two_invoiced(seeded: demo.HistoryResult) -> None:
    assert seeded.months == ["2026-08", "2026-09", "2026-10"] and seeded.open_month == "2026-10"
    postpaid, prepaid = Tenant.objects.get(slug="demo"), Tenant.objects.get(slug="demo-prepaid")
    assert set(seeded.new_keys) == {"demo-prepaid"}, "demo's key was printed by plain seeddemo"
    for tenant in (postpaid, prepaid):
        assert tenant.created_at < datetime(2026, 8, 1, tzinfo=UTC)
        for month in (8, 9, 10):
            in_month = UsageRecord.objects.filter(tenant=tenant, created_at__month=month, created_at__year=2026)
            assert in_month.count() > 300
        assert not UsageRecord.objects.filter(tenant=tenant, created_at__gte=datetime(2026, 11, 1, tzinfo=UTC))
    assert seeded.rows_added == UsageRecord.objects.count()
    # a plan with a markup, and a prepaid one whose credit covers what it spent
    assert {r.markup_percent for r in UsageRecord.objects.filter(tenant=postpaid)} == {Decimal(20)}
    assert {r.markup_percent for r in UsageRecord.objects.filter(tenant=prepaid)} == {Decimal(10)}
    assert prepaid.billing_account.prepaid and credit_balance(prepaid.pk) > 0
    # August and September are finalised and numbered in order; October is for the newcomer
    closed = Invoice.objects.order_by("number")
    assert [(i.tenant.slug, i.period, i.status) for i in closed] == [
        ("demo", "2026-08", "open"),
        ("demo-prepaid", "2026-08", "open"),
        ("demo", "2026-09", "open"),
        ("demo-prepaid", "2026-09", "open"),
    ]
    assert seeded.invoices == [str(i) for i in closed]
    assert Report.objects.filter(period="2026-09", kind="margin").exists()
    # the usage API sees the history (rollups rebuilt for those days)
    august = usage_report(tenant=postpaid, start=date(2026, 8, 1), end=date(2026, 8, 31), group_by="model")
    assert august["totals"]["requests"] == UsageRecord.objects.filter(tenant=postpaid, created_at__month=8).count()


def test_the_mid_month_price_change_shows_on_the_invoice_the_newcomer_closes(seeded: demo.HistoryResult) -> None:
    gpt = Model.objects.get(name="gpt-4.1")
    book = [(p.effective_from, p.input_per_mtok, p.output_per_mtok) for p in gpt.prices.order_by("effective_from")]
    assert book == [
        (datetime(2026, 8, 1, tzinfo=UTC), Decimal("10"), Decimal("40")),
        (datetime(2026, 10, 15, tzinfo=UTC), Decimal("8"), Decimal("32")),
    ]
    # each row was charged at the price in effect when it was made
    changed = datetime(2026, 10, 15, tzinfo=UTC)
    rows = UsageRecord.objects.filter(model=gpt)
    assert {r.input_price_per_mtok for r in rows.filter(created_at__lt=changed)} == {Decimal("10")}
    assert {r.input_price_per_mtok for r in rows.filter(created_at__gte=changed)} == {Decimal("8")}

    # when October is closed and finalised (`closemonth last --finalize`)
    month_close(tenants=Tenant.objects.filter(slug__startswith="demo"), finalize=True, now=NOW)

    # then demo's invoice has one gpt-4.1 line per price, at the plan's +20 %
    invoice = Invoice.objects.get(tenant__slug="demo", period="2026-10")
    assert invoice.status == "open" and invoice.number == "TW-2026-000005"
    gpt_lines = invoice.lines.filter(model=gpt).order_by("-input_price_per_mtok")
    assert [line.input_price_per_mtok for line in gpt_lines] == [Decimal("12"), Decimal("9.6")]
    assert invoice.total_usd == sum(line.amount_usd for line in invoice.lines.all())
    assert invoice_pdf(invoice).startswith(b"%PDF")
    # and the prepaid tenant's usage was paid from its credit
    prepaid = Invoice.objects.get(tenant__slug="demo-prepaid", period="2026-10")
    assert prepaid.total_usd == Decimal("0.00") and prepaid.lines.filter(kind="credit").exists()


def test_seeding_the_history_again_adds_nothing(seeded: demo.HistoryResult) -> None:
    rows, invoices = UsageRecord.objects.count(), Invoice.objects.count()
    again = demo.history_seed(now=NOW)
    assert again.rows_added == 0 and again.new_keys == {}
    assert (UsageRecord.objects.count(), Invoice.objects.count()) == (rows, invoices)
    assert Model.objects.get(name="gpt-4.1").prices.count() == 2
    # a month later, only the month that has become past is added
    later = demo.history_seed(now=datetime(2026, 12, 3, tzinfo=UTC))
    assert later.months == ["2026-09", "2026-10", "2026-11"]
    assert UsageRecord.objects.filter(created_at__month=11).count() == later.rows_added > 0
