"""A finalised invoice, its lines and its bill-to snapshot cannot change by any path; an
issued credit note neither (docs/architecture.md, "Invariants"). Each path is tried: the admin, a model
save and delete, queryset update and delete, raw SQL (the Postgres trigger), and the API."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.test import Client
from django.urls import reverse

from billing.credit_notes import credit_note_issue
from billing.models import CreditNote, Invoice, InvoiceLine
from billing.payments import invoice_status_set
from config.errors import Conflict, DocumentFinal
from tenants.models import Tenant
from tests.billing.finance import october_invoice

pytestmark = pytest.mark.django_db


@pytest.fixture
def final(tenant: Tenant) -> Invoice:
    return october_invoice(tenant)


def test_the_admin_change_page_has_no_editable_field_and_no_save(final: Invoice, client: Client) -> None:
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    page = client.get(reverse("admin:billing_invoice_change", args=[final.pk])).content.decode()
    # every field is shown read-only: no input, select or textarea of the invoice's own
    assert not re.search(r'<(input|select|textarea)[^>]+name="(?!csrfmiddlewaretoken)[a-z_]+"', page)
    assert 'name="_save"' not in page and "billed_from" not in re.findall(r'name="([a-z_]+)"', page)
    assert final.number is not None and final.number in page
    # and a POST to the change page is refused (no change permission)
    response = client.post(reverse("admin:billing_invoice_change", args=[final.pk]), {"billed_from_0": "2020-01-01"})
    assert response.status_code == 403
    final.refresh_from_db()
    assert final.billed_from != "2020-01-01"


def test_a_model_save_or_delete_is_refused(final: Invoice) -> None:
    final.billed_from = final.period_start.replace(year=2020)
    with pytest.raises(DocumentFinal, match="is final"):
        final.save()
    with pytest.raises(DocumentFinal, match="only its payment state"):
        final.save(update_fields=["billed_from"])
    with pytest.raises(DocumentFinal):
        final.delete()
    line = final.lines.first()
    assert line is not None
    line.amount_usd = Decimal("0.01")
    with pytest.raises(DocumentFinal, match="its lines cannot change"):
        line.save()
    with pytest.raises(DocumentFinal):
        line.delete()
    bill_to = Invoice.objects.get(pk=final.pk)
    bill_to.bill_to = {"name": "Someone else"}
    with pytest.raises(DocumentFinal):
        bill_to.save(update_fields=["bill_to"])


def test_queryset_update_delete_and_bulk_create_are_refused(final: Invoice) -> None:
    with pytest.raises(DocumentFinal):
        Invoice.objects.filter(pk=final.pk).update(total_usd=0)
    with pytest.raises(DocumentFinal):
        Invoice.objects.filter(pk=final.pk).update(status="draft")
    with pytest.raises(DocumentFinal):
        Invoice.objects.filter(pk=final.pk).delete()
    with pytest.raises(DocumentFinal):
        InvoiceLine.objects.filter(invoice=final).update(amount_usd=0)
    with pytest.raises(DocumentFinal):
        InvoiceLine.objects.filter(invoice=final).delete()
    with pytest.raises(DocumentFinal):
        InvoiceLine.objects.bulk_create([InvoiceLine(invoice=final, position=99, kind="usage", amount_usd=1)])


def sql_refused(statement: str, *params: Any) -> None:
    with pytest.raises(IntegrityError, match="is final"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, params)


def test_postgres_refuses_it_too_when_python_is_bypassed(final: Invoice) -> None:
    sql_refused("UPDATE billing_invoice SET billed_from = now() WHERE id = %s", final.pk)
    sql_refused("UPDATE billing_invoice SET bill_to = '{}' WHERE id = %s", final.pk)
    sql_refused("UPDATE billing_invoice SET status = 'draft' WHERE id = %s", final.pk)
    sql_refused("DELETE FROM billing_invoice WHERE id = %s", final.pk)
    sql_refused("UPDATE billing_invoiceline SET amount_usd = 0 WHERE invoice_id = %s", final.pk)
    sql_refused("DELETE FROM billing_invoiceline WHERE invoice_id = %s", final.pk)
    sql_refused(
        "INSERT INTO billing_invoiceline (invoice_id, position, kind, description, usage_period, requests, "
        "input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, exact_usd, upstream_usd, amount_usd) "
        "VALUES (%s, 99, 'usage', 'x', '', 0, 0, 0, 0, 0, 0, 0, 1)",
        final.pk,
    )
    # the payment state is what may move
    with connection.cursor() as cursor:
        cursor.execute("UPDATE billing_invoice SET status = 'paid', paid_on = '2026-11-20' WHERE id = %s", [final.pk])
    sql_refused("UPDATE billing_invoice SET status = 'open' WHERE id = %s", final.pk)  # paid is final


def test_only_the_state_moves_and_each_move_is_recorded(final: Invoice) -> None:
    paid = invoice_status_set(invoice=final, status="paid", by="alice", reference="BANK-42")
    assert (paid.status, paid.payment_reference, paid.status_changed_by) == ("paid", "BANK-42", "alice")
    assert paid.paid_on is not None and paid.status_changed_at is not None
    with pytest.raises(Conflict, match=r"paid: it cannot become void.*credit note"):
        invoice_status_set(invoice=final, status="void", by="alice")


def test_an_issued_credit_note_cannot_change(final: Invoice) -> None:
    note = credit_note_issue(invoice=final, reason="goodwill", by="alice", amount=Decimal("1.00"))
    note.reason = "other"
    with pytest.raises(DocumentFinal):
        note.save()
    with pytest.raises(DocumentFinal):
        note.delete()
    with pytest.raises(DocumentFinal):
        CreditNote.objects.filter(pk=note.pk).update(reason="other")
    with pytest.raises(DocumentFinal):
        CreditNote.objects.filter(pk=note.pk).delete()
    sql_refused("UPDATE billing_creditnote SET net_usd = 2 WHERE id = %s", note.pk)
    sql_refused("DELETE FROM billing_creditnote WHERE id = %s", note.pk)


def test_an_api_patch_is_refused(final: Invoice, tenant: Tenant, make_key: Any, client: Client) -> None:
    key = make_key(tenant, "finance", scopes=["billing"]).plaintext
    for method in ("patch", "put", "delete"):
        response = getattr(client, method)(
            f"/v1/invoices/{final.number}",
            data='{"total_usd": "0"}',
            content_type="application/json",
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 409, response.content
        assert response.json()["error"]["code"] == "document_final"
        assert "credit_notes" in response.json()["error"]["message"]
    final.refresh_from_db()
    assert final.total_usd == Decimal("12.00")
