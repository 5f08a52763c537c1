"""The billing API: /v1/usage and /v1/invoices, scoped to the caller's tenant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from billing import rollups
from billing.invoicing import invoice_draft, invoice_finalize
from billing.models import Invoice, Model, RollupState, UsageRollup
from billing.pricing import TokenUsage
from tenants import services
from tenants.models import ApiKey, Tenant
from tests.billing.factories import save, snapshot, usage_row

pytestmark = pytest.mark.django_db

OCT = datetime(2026, 10, 1, tzinfo=UTC)


class Billing:
    def __init__(self, client: Client, token: str) -> None:
        self.client, self.token = client, token

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(path, params, headers={"Authorization": f"Bearer {self.token}"})


def error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.fixture
def billing_key(tenant: Tenant, make_key: Any) -> services.CreatedKey:
    return make_key(tenant, "finance", scopes=["billing"])


@pytest.fixture
def billing(client: Client, billing_key: services.CreatedKey) -> Billing:
    return Billing(client, billing_key.plaintext)


@pytest.fixture
def other_billing(other_tenant: Tenant, make_key: Any) -> Billing:
    return Billing(Client(), make_key(other_tenant, "intruder", scopes=["billing"]).plaintext)


@pytest.fixture
def gpt() -> Model:
    return Model.objects.create(name="gpt-4.1")


def add(tenant: Tenant, model: Model, at: datetime, key: ApiKey | None = None, tokens: int = 1_000_000) -> None:
    usage_row(
        tenant=tenant,
        model=model,
        at=at,
        price=snapshot("8", "32"),
        usage=TokenUsage(input_tokens=tokens, output_tokens=tokens // 10, cached_input_tokens=tokens // 4),
        api_key=key,
    ).save()


def finalized(tenant: Tenant, model: Model) -> Invoice:
    add(tenant, model, OCT + timedelta(days=2))
    invoice = invoice_draft(tenant=tenant, period="2026-10", now=datetime(2026, 11, 5, tzinfo=UTC))
    assert invoice is not None
    return invoice_finalize(invoice=invoice, now=datetime(2026, 11, 5, tzinfo=UTC))


class TestUsage:
    def test_rollups_plus_today_live_grouped_three_ways(
        self, billing: Billing, tenant: Tenant, gpt: Model, billing_key: services.CreatedKey
    ) -> None:
        # given three past days of usage, rolled up, and today's usage, not rolled up
        key = billing_key.api_key
        other = Model.objects.create(name="deepseek-v3")
        now = timezone.now()
        today = now.date()
        for days_ago in (3, 2, 1):
            add(tenant, gpt, now - timedelta(days=days_ago), key)
        add(tenant, other, now - timedelta(days=1))
        rollups.rollup_tenant(tenant=tenant)
        assert RollupState.objects.get(tenant=tenant).rolled_through == today - timedelta(days=1)
        assert UsageRollup.objects.filter(tenant=tenant).count() == 4
        add(tenant, gpt, now, key)

        start = (today - timedelta(days=3)).isoformat()
        by_day = billing.get("/v1/usage", start=start, end=today.isoformat(), group_by="day").json()
        assert [row["day"] for row in by_day["data"]] == [(today - timedelta(days=d)).isoformat() for d in (3, 2, 1, 0)]
        assert [row["requests"] for row in by_day["data"]] == [1, 1, 2, 1]
        totals = by_day["totals"]
        assert totals["requests"] == 5 and totals["input_tokens"] == 5_000_000
        assert totals["output_tokens"] == 500_000 and totals["cached_input_tokens"] == 1_250_000
        # each row: 750k uncached x $8 + 250k cached x $8 (no cached price) + 100k out x $32 = $11.20
        assert Decimal(totals["cost_usd"]) == 5 * Decimal("11.2")

        by_model = billing.get("/v1/usage", start=start, group_by="model").json()
        assert [(row["model"], row["requests"]) for row in by_model["data"]] == [("deepseek-v3", 1), ("gpt-4.1", 4)]
        by_key = billing.get("/v1/usage", start=start, group_by="key").json()
        assert {(row["key_id"], row["requests"]) for row in by_key["data"]} == {(key.key_id, 4), (None, 1)}
        assert by_key["totals"] == by_day["totals"] == by_model["totals"]

        # rollups are idempotent: a second run changes nothing
        rollups.rollup_rebuild(tenant=tenant, first=today - timedelta(days=5), last=today - timedelta(days=1))
        assert billing.get("/v1/usage", start=start, group_by="day").json() == by_day

    def test_bad_periods_are_400_naming_the_parameter(self, billing: Billing) -> None:
        today = timezone.now().date()
        cases = [
            ({"start": "2026-13-01"}, "start"),
            ({"start": "yesterday"}, "start"),
            ({"start": "20261001"}, "start"),
            ({"end": (today + timedelta(days=1)).isoformat()}, "end"),
            ({"start": (today + timedelta(days=3)).isoformat()}, "start"),
            ({"start": today.isoformat(), "end": (today - timedelta(days=1)).isoformat()}, "end"),
            ({"start": "2020-01-01"}, "end"),
            ({"group_by": "week"}, "group_by"),
        ]
        for params, param in cases:
            assert error(billing.get("/v1/usage", **params), 400)["param"] == param, params

    def test_another_tenants_usage_is_never_counted(
        self, billing: Billing, other_billing: Billing, tenant: Tenant, other_tenant: Tenant, gpt: Model
    ) -> None:
        add(other_tenant, gpt, timezone.now())
        body = billing.get("/v1/usage").json()
        assert body["data"] == [] and body["totals"]["requests"] == 0
        assert other_billing.get("/v1/usage").json()["totals"]["requests"] == 1

    def test_needs_the_billing_scope(self, client: Client, tenant: Tenant, make_key: Any) -> None:
        token = make_key(tenant, "app").plaintext  # inference only
        for path in ("/v1/usage", "/v1/invoices"):
            response = client.get(path, headers={"Authorization": f"Bearer {token}"})
            assert error(response, 403)["code"] == "insufficient_scope"
        assert error(client.get("/v1/usage"), 401)["code"] == "invalid_api_key"


class TestInvoices:
    def test_list_and_detail_show_finalised_invoices_not_drafts(
        self, billing: Billing, tenant: Tenant, gpt: Model
    ) -> None:
        invoice = finalized(tenant, gpt)
        add(tenant, gpt, datetime(2026, 11, 3, tzinfo=UTC))
        assert invoice_draft(tenant=tenant, period="2026-11", now=datetime(2026, 12, 1, 1, tzinfo=UTC))
        listing = billing.get("/v1/invoices").json()
        assert [row["number"] for row in listing["data"]] == [invoice.number]
        assert listing["data"][0]["total_usd"] == str(invoice.total_usd)
        detail = billing.get(f"/v1/invoices/{invoice.number}").json()
        assert detail["status"] == "open" and detail["bill_to"]["slug"] == "acme"
        assert [line["model"] for line in detail["lines"]] == ["gpt-4.1"]
        assert sum(Decimal(line["amount_usd"]) for line in detail["lines"]) == Decimal(detail["total_usd"])
        assert billing.get("/v1/invoices", period="2026-09").json()["data"] == []
        assert error(billing.get("/v1/invoices", limit="0"), 400)["param"] == "limit"

    def test_pdf_and_csv_downloads(self, billing: Billing, tenant: Tenant, gpt: Model) -> None:
        invoice = finalized(tenant, gpt)
        pdf = billing.get(f"/v1/invoices/{invoice.number}.pdf")
        assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
        assert pdf.content.startswith(b"%PDF")
        assert pdf["Content-Disposition"] == f'attachment; filename="{invoice.number}.pdf"'
        csv = billing.get(f"/v1/invoices/{invoice.number}.csv")
        assert csv.status_code == 200 and csv["Content-Type"].startswith("text/csv")
        assert csv.content.decode().splitlines()[1].startswith(f"{invoice.number},open,acme,2026-10,1,usage")

    def test_another_tenants_invoice_is_404_everywhere(
        self, billing: Billing, other_billing: Billing, tenant: Tenant, gpt: Model
    ) -> None:
        invoice = finalized(tenant, gpt)
        for suffix in ("", ".pdf", ".csv"):
            body = error(other_billing.get(f"/v1/invoices/{invoice.number}{suffix}"), 404)
            assert body["code"] == "not_found"
            assert error(billing.get(f"/v1/invoices/TW-2026-999999{suffix}"), 404)["code"] == "not_found"
        assert other_billing.get("/v1/invoices").json()["data"] == []
        assert error(other_billing.get("/v1/invoices", after=invoice.number), 404)["param"] == "number"


def test_schema_lists_the_billing_endpoints(client: Client) -> None:
    schema = client.get("/v1/schema", {"format": "json"}).json()
    for path in ("/v1/usage", "/v1/invoices", "/v1/invoices/{number}", "/v1/invoices/{number}.pdf"):
        assert path in schema["paths"], path


def test_rollups_run_in_bounded_batches(tenant: Tenant, other_tenant: Tenant, gpt: Model) -> None:
    yesterday = timezone.now() - timedelta(days=1)
    save(
        [
            usage_row(tenant=t, model=gpt, at=yesterday, price=snapshot("1", "1"), usage=TokenUsage(10, 10))
            for t in (tenant, other_tenant)
        ]
    )
    cursor = rollups.rollups_run(batch=1)
    assert cursor == tenant.pk
    assert rollups.rollups_run(after_tenant_id=cursor, batch=1) == other_tenant.pk
    assert rollups.rollups_run(after_tenant_id=other_tenant.pk, batch=1) is None
    assert UsageRollup.objects.count() == 2
    assert RollupState.objects.get(tenant=other_tenant).rolled_through == rollups.local_today(other_tenant) - timedelta(
        days=1
    )
