"""The finance API (``billing`` scope): payment states, credit notes, registers and billing
settings; another tenant's invoice or credit note answers 404 on every endpoint. And what a
tenant sees: the over-budget error names who can raise the budget; the dashboard's banner."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from billing.credit_notes import credit_note_issue
from billing.models import BillingProfile, Invoice
from tenants.models import Tenant
from tests.billing.finance import october_invoice
from tests.conftest import Api, Catalog, user
from tests.pages import member

pytestmark = pytest.mark.django_db


class Finance:
    def __init__(self, client: Client, token: str) -> None:
        self.client, self.token = client, token

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {self.token}"}}
        if body is not None:
            kwargs.update(data=body, content_type="application/json")
        elif params:
            kwargs["data"] = params
        return getattr(self.client, method)(path, **kwargs)


@pytest.fixture
def finance(client: Client, tenant: Tenant, make_key: Any) -> Finance:
    return Finance(client, make_key(tenant, "erp", scopes=["billing"]).plaintext)


@pytest.fixture
def intruder(other_tenant: Tenant, make_key: Any) -> Finance:
    return Finance(Client(), make_key(other_tenant, "intruder", scopes=["billing"]).plaintext)


def error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return dict(body)


def test_record_a_payment_and_refuse_a_second_move(finance: Finance, tenant: Tenant) -> None:
    invoice = october_invoice(tenant)
    paid = finance.call(
        "post",
        f"/v1/invoices/{invoice.number}/status",
        {"status": "paid", "paid_on": "2026-11-20", "reference": "SEPA-77"},
    )
    assert paid.status_code == 200, paid.content
    body = paid.json()
    assert (body["status"], body["paid_on"], body["payment_reference"], body["overdue"]) == (
        "paid",
        "2026-11-20",
        "SEPA-77",
        False,
    )
    assert body["due_date"] == "2026-12-10" and body["gross_usd"] == "12.00"
    again = error(finance.call("post", f"/v1/invoices/{invoice.number}/status", {"status": "void"}), 409)
    assert again["code"] == "invalid_state" and "credit note" in again["message"]
    bad = error(finance.call("post", f"/v1/invoices/{invoice.number}/status", {"status": "draft"}), 400)
    assert bad["param"] == "status"


def test_overdue_once_the_due_date_passes(finance: Finance, tenant: Tenant) -> None:
    invoice = october_invoice(tenant)  # issued 2026-11-10, net 30: due 2026-12-10
    assert invoice.is_overdue(today=invoice.due_date) is False
    assert invoice.is_overdue(today=invoice.due_date.replace(day=11)) is True  # type: ignore[union-attr]


def test_credit_notes_through_the_api(finance: Finance, tenant: Tenant) -> None:
    invoice = october_invoice(tenant)
    made = finance.call("post", f"/v1/invoices/{invoice.number}/credit_notes", {"reason": "refund", "lines": [2]})
    assert made.status_code == 201, made.content
    note = made.json()
    assert (note["number"], note["invoice"], note["net_usd"]) == ("CN-2026-000001", invoice.number, "4.00")
    error(finance.call("post", f"/v1/invoices/{invoice.number}/credit_notes", {"reason": ""}), 400)
    error(finance.call("post", f"/v1/invoices/{invoice.number}/credit_notes", {"reason": "x", "lines": [9]}), 400)
    listed = finance.call("get", "/v1/credit_notes").json()
    assert [n["number"] for n in listed["data"]] == ["CN-2026-000001"]
    assert finance.call("get", "/v1/credit_notes/CN-2026-000001").json()["reason"] == "refund"
    assert finance.call("get", "/v1/credit_notes/CN-2026-000001.pdf").content.startswith(b"%PDF")
    assert b"CN-2026-000001" in finance.call("get", "/v1/credit_notes/CN-2026-000001.csv").content


def test_registers_by_issue_month(finance: Finance, tenant: Tenant, other_tenant: Tenant) -> None:
    BillingProfile.objects.create(tenant=tenant, tax_id="DE987654321", legal_name="Acme GmbH")
    invoice = october_invoice(tenant)
    october_invoice(other_tenant)  # not this tenant's
    credit_note_issue(invoice=invoice, reason="goodwill", by="alice", amount=Decimal(1))
    rows = finance.call("get", "/v1/billing/registers", month="2026-11").content.decode().splitlines()
    assert rows[0].startswith("invoice_number,status,tenant,customer,tax_id,country,period,issue_date,due_date")
    assert len(rows) == 2 and rows[1].startswith(
        f"{invoice.number},open,acme,Acme GmbH,DE987654321,,2026-10,2026-11-10"
    )
    notes = finance.call("get", "/v1/billing/registers", month="2026-11", kind="credit_notes").content.decode()
    assert notes.splitlines()[1].startswith("CN-")
    assert finance.call("get", "/v1/billing/registers", month="2026-10").content.decode().count("\n") == 1
    assert error(finance.call("get", "/v1/billing/registers", month="nov"), 400)["param"] == "month"
    assert error(finance.call("get", "/v1/billing/registers", month="2026-11", kind="x"), 400)["param"] == "kind"


def test_billing_settings(finance: Finance, tenant: Tenant) -> None:
    assert finance.call("get", "/v1/billing/settings").json()["webhook_url"] == ""
    set_ = finance.call(
        "patch", "/v1/billing/settings", {"webhook_url": "https://erp.acme.example/hook", "alert_thresholds": [90, 50]}
    )
    assert set_.status_code == 200, set_.content
    first = set_.json()
    assert first["webhook_secret"].startswith("whsec_") and first["alert_thresholds"] == [50, 90]
    rotated = finance.call("patch", "/v1/billing/settings", {"rotate_secret": True}).json()
    assert rotated["webhook_secret"].startswith("whsec_") and rotated["webhook_secret"] != first["webhook_secret"]
    assert error(finance.call("patch", "/v1/billing/settings", {"alert_thresholds": [0]}), 400)["param"] == (
        "alert_thresholds"
    )


def test_another_tenants_documents_answer_404_everywhere(finance: Finance, intruder: Finance, tenant: Tenant) -> None:
    invoice = october_invoice(tenant)
    note = credit_note_issue(invoice=invoice, reason="x", by="alice", amount=Decimal(1))
    number = invoice.number
    for method, path, body in [
        ("post", f"/v1/invoices/{number}/status", {"status": "paid"}),
        ("post", f"/v1/invoices/{number}/credit_notes", {"reason": "steal"}),
        ("patch", f"/v1/invoices/{number}", {"total_usd": "0"}),
        ("get", f"/v1/credit_notes/{note.number}", None),
        ("get", f"/v1/credit_notes/{note.number}.pdf", None),
        ("get", f"/v1/credit_notes/{note.number}.csv", None),
    ]:
        assert error(intruder.call(method, path, body), 404)["code"] == "not_found", path
    assert intruder.call("get", "/v1/credit_notes").json()["data"] == []
    assert number not in intruder.call("get", "/v1/billing/registers", month="2026-11").content.decode()
    assert Invoice.objects.get(pk=invoice.pk).status == "open"


def test_over_budget_says_who_can_raise_it_and_the_dashboard_shows_a_banner(
    client: Client, api: Api, tenant: Tenant, catalog: Catalog
) -> None:
    owner = member(tenant, "olivia")
    owner.email = "olivia@acme.example"
    owner.save()
    tenant.billing_email = "ap@acme.example"
    tenant.monthly_budget_usd = Decimal("0.00")
    tenant.save()
    refused = api.chat({"model": "gpt-4.1", "messages": user("hi")})
    body = error(refused, 429)
    assert body["code"] == "insufficient_quota"
    assert (
        "Who can raise the budget: the tenant's owner (olivia@acme.example) or its billing contact" in body["message"]
    )
    client.force_login(get_user_model().objects.get(username="olivia"))
    page = client.get("/dashboard/").content.decode()
    assert 'id="refusing-banner"' in page and "this month's budget is used up" in page


def test_the_dashboard_shows_each_invoices_state(client: Client, tenant: Tenant, other_tenant: Tenant) -> None:
    BillingProfile.objects.create(tenant=tenant, payment_terms_days=0)  # due on the issue date: overdue since
    overdue = october_invoice(tenant)
    member(tenant, "olivia", "billing")
    client.force_login(get_user_model().objects.get(username="olivia"))
    page = client.get("/dashboard/").content.decode()
    row = page[page.index(f'data-invoice="{overdue.number}"') :].split("</tr>")[0]
    assert "<strong>Overdue</strong>" in row and "2026-11-10" in row and "USD 12" in row
    from billing.payments import invoice_status_set

    invoice_status_set(invoice=overdue, status="paid", by="alice", reference="x")
    page = client.get("/dashboard/").content.decode()
    row = page[page.index(f'data-invoice="{overdue.number}"') :].split("</tr>")[0]
    assert "Paid 20" in row and "Overdue" not in row
