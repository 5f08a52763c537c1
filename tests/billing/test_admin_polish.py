"""The admin reads as Tollway's: its own header, scopes and addresses as words rather than
JSON, and money to the cent in lists and in full on detail pages."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from billing.models import BillingProfile, CreditEntry
from tenants import services
from tenants.models import Tenant
from tests.billing.finance import october_invoice

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def test_the_header_and_title_are_tollways(admin_client: Client) -> None:
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert "Tollway administration" in html and "<title>" in html and "Tollway admin</title>" in html
    assert "Django administration" not in html


def test_scopes_read_as_words(admin_client: Client, tenant: Tenant) -> None:
    services.api_key_create(tenant=tenant, name="ci", scopes=["inference", "billing"])
    listing = admin_client.get(reverse("admin:tenants_apikey_changelist")).content.decode()
    assert "inference, billing" in listing and "[&quot;inference&quot;" not in listing
    page = admin_client.get(reverse("admin:tenants_tenant_change", args=[tenant.pk])).content.decode()
    assert "inference, billing" in page and "[&quot;inference&quot;" not in page


def test_money_to_the_cent_in_lists_and_in_full_on_pages(admin_client: Client, tenant: Tenant) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(monthly_budget_usd=Decimal("1234.57"))
    entry = CreditEntry.objects.create(tenant=tenant, kind="topup", amount_usd=Decimal("50.125"), note="first")
    tenants = admin_client.get(reverse("admin:tenants_tenant_changelist")).content.decode()
    assert "$1,234.57" in tenants
    credits = admin_client.get(reverse("admin:billing_creditentry_changelist")).content.decode()
    assert "$50.13" in credits and "50.125" not in credits
    page = admin_client.get(reverse("admin:billing_creditentry_change", args=[entry.pk])).content.decode()
    assert "50.125" in page  # its own page: exact


def test_an_invoice_shows_whom_it_bills_as_an_address(admin_client: Client, tenant: Tenant) -> None:
    BillingProfile.objects.update_or_create(
        tenant=tenant,
        defaults={"legal_name": "Acme Corp GmbH", "address": "Hauptstr. 1\n10115 Berlin", "country": "DE"},
    )
    invoice = october_invoice(tenant)
    listing = admin_client.get(reverse("admin:billing_invoice_changelist")).content.decode()
    assert f"USD {invoice.gross_amount:,.2f}" in listing
    page = admin_client.get(reverse("admin:billing_invoice_change", args=[invoice.pk])).content.decode()
    assert "Acme Corp GmbH<br>Hauptstr. 1<br>10115 Berlin<br>DE" in page
    assert "&quot;legal_name&quot;" not in page and "&quot;slug&quot;" not in page
