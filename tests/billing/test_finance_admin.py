"""Finance in the admin: record a payment, issue a credit note, the registers, the issuer."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image

from billing.documents import invoice_pdf
from billing.models import CreditNote, Invoice, Issuer
from tenants.models import Tenant
from tests.billing.finance import october_invoice

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def act(admin_client: Client, action: str, invoice: Invoice, **form: str) -> str:
    data = {"action": action, "_selected_action": [invoice.pk], **form}
    return admin_client.post(reverse("admin:billing_invoice_changelist"), data, follow=True).content.decode()


def test_record_a_payment_then_credit_it(admin_client: Client, tenant: Tenant) -> None:
    invoice = october_invoice(tenant)
    # the action asks for the paid date and reference first
    assert "Record a payment" in act(admin_client, "mark_paid", invoice)
    assert Invoice.objects.get(pk=invoice.pk).status == "open"
    page = act(admin_client, "mark_paid", invoice, apply="1", paid_on="2026-11-21", reference="BANK-9")
    assert f"{invoice.number}: paid." in page
    paid = Invoice.objects.get(pk=invoice.pk)
    assert (str(paid.paid_on), paid.payment_reference, paid.status_changed_by) == (
        "2026-11-21",
        "BANK-9",
        "root (admin)",
    )
    # a paid invoice cannot be voided; it is credited
    assert "Correct a paid invoice with a credit note" in act(admin_client, "void_and_reissue", invoice)
    page = act(admin_client, "issue_credit_note", invoice, apply="1", reason="refund", lines="1", amount="")
    assert "Issued CN-" in page
    note = CreditNote.objects.get()
    assert note.net_usd == Decimal("8.00") and note.issued_by == "root (admin)"
    assert admin_client.get(reverse("admin:billing_creditnote_file", args=[note.pk, "pdf"])).content.startswith(b"%PDF")
    # no one edits a credit note: its page has no save button
    change = admin_client.get(reverse("admin:billing_creditnote_change", args=[note.pk])).content.decode()
    assert 'name="_save"' not in change


def test_the_registers_download_from_the_admin(admin_client: Client, tenant: Tenant, other_tenant: Tenant) -> None:
    first, second = october_invoice(tenant), october_invoice(other_tenant)
    url = reverse("admin:billing_invoice_register")
    rows = admin_client.get(url, {"month": "2026-11"}).content.decode().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == [first.number, second.number]
    assert (
        admin_client.get(url, {"month": "2026-11", "kind": "credit_notes"})
        .content.decode()
        .startswith("credit_note_number,")
    )
    assert admin_client.get(url, {"month": "bad"}).status_code == 400


def test_the_issuer_is_one_row_set_in_the_admin_with_a_logo(admin_client: Client, tenant: Tenant) -> None:
    # the list opens the one issuer, made from TOLLWAY_INVOICE_ISSUER
    response = admin_client.get(reverse("admin:billing_issuer_changelist"))
    assert response.status_code == 302
    png = io.BytesIO()
    Image.new("RGB", (120, 40), (15, 118, 110)).save(png, "PNG")
    saved = admin_client.post(
        reverse("admin:billing_issuer_change", args=[1]),
        {
            "legal_name": "Tollway Korea Inc.",
            "address": "1 Teheran-ro\nSeoul",
            "country": "KR",
            "tax_id": "123-45-67890",
            "email": "billing@tollway.example",
            "payment_instructions": "KEB Hana 123-456789-01",
            "webhook_url": "",
            "logo_file": SimpleUploadedFile("logo.png", png.getvalue(), "image/png"),
        },
    )
    assert saved.status_code == 302, saved.content.decode()[:2000]
    issuer = Issuer.objects.get()
    assert issuer.legal_name == "Tollway Korea Inc." and issuer.logo_id
    invoice = october_invoice(tenant)
    assert invoice.issuer["legal_name"] == "Tollway Korea Inc." and invoice.issuer["logo"] == issuer.logo_id
    assert invoice_pdf(invoice).startswith(b"%PDF")
    # a later change of issuer leaves the finalised invoice's copy alone
    Issuer.objects.filter(pk=1).update(legal_name="Renamed")
    assert Invoice.objects.get(pk=invoice.pk).issuer["legal_name"] == "Tollway Korea Inc."
