"""Tax, currencies, due dates, clear lines, and the PDF a finance person reads."""

from __future__ import annotations

import random
import subprocess
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.db.models import Sum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.documents import invoice_pdf
from billing.invoicing import InvoicingError, invoice_draft, invoice_finalize, to_cents
from billing.models import BillingProfile, CountryTaxRate, ExchangeRate, Invoice, Issuer, Model, UsageRecord
from billing.money import exponent, round_money
from billing.pricing import TokenUsage
from tenants import services
from tenants.models import Tenant
from tests.billing.factories import random_usage, save, snapshot, usage_row
from tests.billing.finance import AFTER_OCT, ISSUED, OCT, october_invoice

pytestmark = pytest.mark.django_db

CURRENCIES = ["USD", "EUR", "KRW", "JPY", "BHD", "GBP"]


EXAMPLES = iter(range(1_000_000))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    currency=st.sampled_from(CURRENCIES),
    rate=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("5000"), places=4),
    tax=st.decimals(min_value=Decimal(0), max_value=Decimal("27"), places=2),
)
def test_random_invoices_add_up_in_every_currency(
    db: None, seed: int, currency: str, rate: Decimal, tax: Decimal
) -> None:
    # given random usage of a new tenant invoiced in `currency` at `rate` with `tax` %
    tenant = services.tenant_create(slug=f"t{next(EXAMPLES)}", name="Random")
    BillingProfile.objects.create(tenant=tenant, currency=currency, tax_rate_percent=tax)
    ExchangeRate.objects.update_or_create(currency=currency, effective_date=date(2026, 11, 1), defaults={"rate": rate})
    rng = random.Random(seed)
    model, _ = Model.objects.get_or_create(name="gpt-4.1")
    rows = [
        usage_row(
            tenant=tenant,
            model=model,
            at=OCT + timedelta(hours=rng.randrange(700)),
            price=snapshot(rng.choice(["8", "0.42", "15"]), "32"),
            usage=random_usage(rng),
        )
        for _ in range(rng.randint(1, 30))
    ]
    save(rows)
    invoice = invoice_draft(tenant=tenant, period="2026-10", now=AFTER_OCT)
    assert invoice is not None

    # when it is finalised
    invoice = invoice_finalize(invoice=invoice, now=ISSUED)

    # then net + tax = gross, to the minor unit, in the currency and in USD
    q = Decimal(1).scaleb(-exponent(currency))
    assert invoice.net_amount is not None and invoice.tax_amount is not None and invoice.gross_amount is not None
    assert invoice.gross_amount == invoice.net_amount + invoice.tax_amount
    for value in (invoice.net_amount, invoice.tax_amount, invoice.gross_amount):
        assert value == value.quantize(q)
    lines = list(invoice.lines.all())
    assert invoice.net_amount == sum(line.amount or 0 for line in lines)
    effective = Decimal(1) if currency == "USD" else rate
    assert all(line.amount == round_money(line.amount_usd * effective, currency) for line in lines)
    assert invoice.tax_amount == round_money(invoice.net_amount * tax / 100, currency)
    assert invoice.gross_usd == invoice.total_usd + invoice.tax_usd
    assert invoice.tax_usd == to_cents(invoice.total_usd * tax / 100)
    # and the USD beside it matches the ledger to the cent (half a cent per line at most)
    ledger = UsageRecord.objects.filter(invoice=invoice).aggregate(s=Sum("cost"))["s"]
    assert invoice.total_usd == sum(to_cents(line.exact_usd) for line in lines)
    assert abs(invoice.total_usd - ledger) <= Decimal("0.005") * len(lines)
    expected_fx = (Decimal(1), None) if currency == "USD" else (rate, date(2026, 11, 1))
    assert (invoice.fx_rate, invoice.fx_rate_date) == expected_fx


def test_zero_decimal_currencies_round_to_whole_units() -> None:
    assert (exponent("KRW"), exponent("JPY"), exponent("USD"), exponent("BHD")) == (0, 0, 2, 3)
    assert round_money(Decimal("1234.5"), "KRW") == Decimal("1235")
    assert round_money(Decimal("0.0005"), "BHD") == Decimal("0.001")


def test_another_currency_without_a_rate_is_refused_with_the_fix(tenant: Tenant) -> None:
    BillingProfile.objects.create(tenant=tenant, currency="KRW")
    draft = october_invoice(tenant, finalize=False)
    with pytest.raises(InvoicingError, match=r"No USD→KRW exchange rate on or before 2026-11-10.*Exchange rates"):
        invoice_finalize(invoice=draft, now=ISSUED)
    assert Invoice.objects.get(pk=draft.pk).status == "draft"


def test_reverse_charge_country_default_and_own_rate(tenant: Tenant, other_tenant: Tenant) -> None:
    CountryTaxRate.objects.create(country="DE", rate_percent=Decimal(19), label="VAT")
    BillingProfile.objects.create(tenant=tenant, country="DE")
    BillingProfile.objects.create(tenant=other_tenant, country="DE", reverse_charge=True)
    german = october_invoice(tenant)
    reverse = october_invoice(other_tenant)
    assert (german.tax_label, german.tax_rate_percent, german.tax_usd) == ("VAT", Decimal(19), Decimal("2.28"))
    assert (reverse.tax_rate_percent, reverse.tax_usd, reverse.reverse_charge) == (Decimal(0), Decimal(0), True)


def test_a_model_twice_says_why(tenant: Tenant) -> None:
    tenant.timezone = "Europe/Berlin"
    tenant.save()
    model = Model.objects.create(name="gpt-4.1")
    for day, price, markup in ((3, "8", "0"), (16, "7.5", "0"), (20, "7.5", "20")):
        usage_row(
            tenant=tenant,
            model=model,
            at=OCT + timedelta(days=day),
            price=snapshot(price, "32"),
            usage=TokenUsage(1000, 0),
            markup=Decimal(markup),
        ).save()
    invoice = invoice_draft(tenant=tenant, period="2026-10", now=AFTER_OCT)
    assert invoice is not None
    assert [line.description for line in invoice.lines.all()] == [
        "gpt-4.1 (4 October)",
        "gpt-4.1, price from 17 October (17 October)",
        "gpt-4.1, plan markup 0% → 20% from 21 October (21 October)",
    ]


def test_the_pdf_shows_both_parties_dates_tax_and_totals(tenant: Tenant, tmp_path: Path) -> None:
    # given an issuer and a Berlin customer invoiced in EUR with German VAT, net 14
    Issuer.objects.create(
        pk=1,
        legal_name="Tollway GmbH",
        address="Hauptstr. 1\n10115 Berlin",
        country="DE",
        tax_id="DE123456789",
        payment_instructions="IBAN DE02 1203 0000 0000 2020 51, BIC BYLADEM1001",
    )
    tenant.timezone, tenant.billing_email = "Europe/Berlin", "ap@acme.example"
    tenant.save()
    CountryTaxRate.objects.create(country="DE", rate_percent=Decimal(19), label="VAT")
    BillingProfile.objects.create(
        tenant=tenant,
        legal_name="Acme GmbH",
        address="Acmeweg 5\n80331 München",
        country="DE",
        tax_id="DE987654321",
        currency="EUR",
        payment_terms_days=14,
    )
    ExchangeRate.objects.create(currency="EUR", rate=Decimal("0.9"), effective_date=date(2026, 11, 2))
    invoice = october_invoice(tenant)

    # when it is rendered to PNG and its text read back
    (tmp_path / "invoice.pdf").write_bytes(invoice_pdf(invoice))
    subprocess.run(["pdftoppm", "-png", "-r", "60", "-singlefile", "invoice.pdf", "page"], cwd=tmp_path, check=True)
    assert (tmp_path / "page.png").read_bytes().startswith(b"\x89PNG")
    page = subprocess.run(
        ["pdftotext", "-layout", "invoice.pdf", "-"], cwd=tmp_path, check=True, capture_output=True
    ).stdout.decode()

    # then it names both parties, their tax ids, the dates, the period in local dates, tax and totals
    for text in (
        "Tollway GmbH",
        "DE123456789",
        "Acme GmbH",
        "DE987654321",
        "München",
        "Issue date: 10 November 2026",
        "Due date: 24 November 2026",
        "net 14 days",
        "1–31 October 2026, Europe/Berlin",
        "VAT 19%",
        "1 USD = 0.9",
        "EUR 10.80",
        "EUR 2.05",
        "EUR 12.85",
        "IBAN DE02",
        invoice.number or "-",
    ):
        assert text in page, text
    assert (invoice.net_amount, invoice.tax_amount, invoice.gross_amount) == (
        Decimal("10.80"),
        Decimal("2.05"),
        Decimal("12.85"),
    )
