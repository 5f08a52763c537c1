"""The dashboard and the invoice download, through Django's test client: what each role
sees, and that another tenant's invoice or key answers 404."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tenants import services
from tenants.models import ApiKey, Membership, Tenant
from tests.conftest import Catalog
from tests.pages import PASSWORD, issued_invoice, member, spend_history


def login(client: Client, username: str) -> Client:
    # The browser tests log in through the form; here the session is what matters.
    client.force_login(get_user_model().objects.get(username=username))
    return client


def test_pages_need_a_login(client: Client, db: None) -> None:
    for path in ("/dashboard/", "/chat/"):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")
    assert client.get("/accounts/login/").status_code == 200


def test_a_user_without_a_tenant_is_told_so(client: Client, db: None) -> None:
    get_user_model().objects.create_user(username="stray", password=PASSWORD)
    response = login(client, "stray").get("/dashboard/")
    assert response.status_code == 403
    assert b"does not belong to a tenant" in response.content


def test_dashboard_shows_spend_chart_invoices_and_keys(client: Client, tenant: Tenant, catalog: Catalog) -> None:
    key = services.api_key_create(tenant=tenant, name="backend").api_key
    spend_history(tenant, list(catalog.models.values()), key)
    invoice = issued_invoice(tenant, catalog.models["gpt-4.1"])
    member(tenant, "olivia")

    page = login(client, "olivia").get("/dashboard/").content.decode()

    assert page.count('class="bar"') >= 12  # stacked bars in the server-rendered SVG
    assert "gpt-4.1" in page and "deepseek-v3" in page  # the legend
    assert "backend" in page  # top keys and the key list
    assert f"/dashboard/invoices/{invoice.number}.pdf" in page
    pdf = client.get(f"/dashboard/invoices/{invoice.number}.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert 'action="/dashboard/keys/create"' in page


def test_a_developer_sees_no_invoices_and_cannot_manage_keys(client: Client, tenant: Tenant, catalog: Catalog) -> None:
    invoice = issued_invoice(tenant, catalog.models["gpt-4.1"])
    key = services.api_key_create(tenant=tenant, name="backend").api_key
    member(tenant, "dev", Membership.Role.DEVELOPER)
    login(client, "dev")

    page = client.get("/dashboard/").content.decode()
    assert "Invoices" not in page and "/dashboard/keys/create" not in page
    assert client.get(f"/dashboard/invoices/{invoice.number}.pdf").status_code == 403
    assert client.post(f"/dashboard/keys/{key.key_id}/revoke").status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None


def test_another_tenants_invoice_and_key_answer_404(
    client: Client, tenant: Tenant, other_tenant: Tenant, catalog: Catalog
) -> None:
    # given an invoice and a key of another tenant
    theirs = issued_invoice(other_tenant, catalog.models["gpt-4.1"])
    their_key = services.api_key_create(tenant=other_tenant, name="theirs").api_key
    member(tenant, "olivia")
    login(client, "olivia")

    # when our owner asks for them by number and id, then nothing is found
    assert client.get(f"/dashboard/invoices/{theirs.number}.pdf").status_code == 404
    assert client.post(f"/dashboard/keys/{their_key.key_id}/revoke").status_code == 404
    assert ApiKey.objects.get(pk=their_key.pk).revoked_at is None
    assert str(theirs.number) not in client.get("/dashboard/").content.decode()


@pytest.mark.parametrize("days", [30, 90])
def test_the_chart_spans_30_or_90_days(client: Client, tenant: Tenant, days: int) -> None:
    member(tenant, "olivia")
    page = login(client, "olivia").get(f"/dashboard/?days={days}").content.decode()
    assert f"Daily spend, last {days} days" in page


def test_the_chart_reads_the_rollups_like_the_usage_api(tenant: Tenant, catalog: Catalog) -> None:
    """Days already rolled up come from the rollups (fast over millions of rows); today is live."""
    from datetime import timedelta
    from decimal import Decimal

    from django.utils import timezone

    from billing import rollups
    from billing.models import UsageRecord
    from billing.pricing import PriceSnapshot, TokenUsage
    from billing.selectors import daily_cost_by_model, usage_report
    from tests.billing.factories import usage_row

    now = timezone.now()
    model = catalog.models["gpt-4.1"]
    price = PriceSnapshot(Decimal(8), Decimal(32), now - timedelta(days=30))
    for at in (now - timedelta(days=2), now - timedelta(days=1), now):
        usage_row(tenant=tenant, model=model, at=at, price=price, usage=TokenUsage(1000, 100)).save()
    rollups.rollup_tenant(tenant=tenant, now=now)
    # Rewrite history behind the rollups' back: the chart must not notice, as /v1/usage does not.
    UsageRecord.objects.filter(created_at__lt=now - timedelta(hours=20)).update(cost=Decimal(1000))

    today = now.date()
    rows = daily_cost_by_model(tenant=tenant, start=today - timedelta(days=2), end=today)
    assert [(day, name) for day, name, _ in rows] == [(today - timedelta(days=d), "gpt-4.1") for d in (2, 1, 0)]
    assert all(cost == Decimal("0.011200000") for _, _, cost in rows)
    report = usage_report(tenant=tenant, start=today - timedelta(days=2), end=today, group_by="day")
    assert sum(Decimal(r["cost_usd"]) for r in report["data"]) == sum(cost for _, _, cost in rows)
