"""Delivery: the invoice PDF e-mailed to a real SMTP server on loopback (aiosmtpd), signed
webhooks received by a real HTTP server that checks the signature, and a failing receiver
retried. Celery runs eagerly here (retries at once); the tasks are the production ones."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billing.credit_notes import credit_note_issue
from billing.models import BillingProfile, Delivery, Issuer, WebhookEvent
from billing.payments import invoice_status_set
from config.celery import app
from tenants.models import Tenant
from tests.billing.finance import october_invoice
from tests.conftest import free_port
from tests.delivery import Inbox, Receiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def eager(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    monkeypatch.setitem(app.conf, "task_always_eager", True)
    # Retries run at once, in turn; a task that gives up records its failure (not raised here).
    monkeypatch.setitem(app.conf, "task_eager_propagates", False)
    settings.TOLLWAY = {**settings.TOLLWAY, "WEBHOOK_ALLOW_PRIVATE": True, "DELIVERY_MAX_ATTEMPTS": 4}


def test_finalising_emails_the_pdf_and_sends_signed_webhooks_retrying_a_failing_receiver(
    tenant: Tenant, smtp: Inbox, receiver: Receiver, eager: None, django_capture_on_commit_callbacks: Any
) -> None:
    # given a tenant with a billing address and a webhook that fails twice, and a platform webhook
    tenant.billing_email = "ap@acme.example"
    tenant.save()
    profile = BillingProfile.objects.create(tenant=tenant, webhook_url=f"{receiver.url}/tenant")
    issuer = Issuer.objects.create(pk=1, legal_name="Tollway Ltd", webhook_url=f"{receiver.url}/platform")
    assert profile.webhook_secret.startswith("whsec_") and issuer.webhook_secret != profile.webhook_secret
    receiver.secrets = {"/tenant": profile.webhook_secret, "/platform": issuer.webhook_secret}
    receiver.fail = 2

    # when the invoice is finalised (and the transaction commits)
    with django_capture_on_commit_callbacks(execute=True):
        invoice = october_invoice(tenant)

    # then the PDF went to the billing address
    assert len(smtp.messages) == 1
    to, message = smtp.messages[0]
    assert to == ["ap@acme.example"] and invoice.number in message["Subject"]
    pdfs = [part for part in message.walk() if part.get_content_type() == "application/pdf"]
    assert len(pdfs) == 1 and pdfs[0].get_filename() == f"{invoice.number}.pdf"
    assert pdfs[0].get_payload(decode=True).startswith(b"%PDF")  # type: ignore[union-attr]
    emails = Delivery.objects.filter(invoice=invoice, channel="email")
    assert [(d.attempt, d.ok, d.target) for d in emails] == [(1, True, "ap@acme.example")]

    # and both webhooks arrived signed; the failing receiver was retried until it answered
    assert all(ok for _, _, ok in receiver.received)
    paths = [path for path, _, _ in receiver.received]
    assert (
        sorted(paths) == ["/platform", "/tenant", "/tenant"] or paths.count("/tenant") + paths.count("/platform") == 4
    )
    event = WebhookEvent.objects.get(type="invoice.finalized")
    log = list(Delivery.objects.filter(event=event).order_by("pk").values_list("target", "attempt", "ok"))
    assert log == [
        (f"{receiver.url}/tenant", 1, False),
        (f"{receiver.url}/tenant", 2, False),
        (f"{receiver.url}/tenant", 3, True),
        (f"{receiver.url}/platform", 1, True),
    ]
    body = receiver.received[-1][1]
    assert body["type"] == "invoice.finalized" and body["data"]["number"] == invoice.number

    # when it is paid, and then credited
    receiver.received.clear()
    with django_capture_on_commit_callbacks(execute=True):
        invoice_status_set(invoice=invoice, status="paid", by="alice", reference="BANK-1")
    with django_capture_on_commit_callbacks(execute=True):
        note = credit_note_issue(invoice=invoice, reason="goodwill", by="alice", amount=Decimal("1.00"))

    # then invoice.paid and credit_note.created went out, and the credit note was e-mailed
    types = [(path, body["type"]) for path, body, _ in receiver.received]
    assert ("/tenant", "invoice.paid") in types and ("/tenant", "credit_note.created") in types
    assert len(smtp.messages) == 2 and note.number in smtp.messages[1][1]["Subject"]


def test_a_receiver_that_never_answers_well_is_given_up_after_the_last_attempt(
    tenant: Tenant, receiver: Receiver, eager: None, django_capture_on_commit_callbacks: Any
) -> None:
    BillingProfile.objects.create(tenant=tenant, webhook_url=f"{receiver.url}/tenant")
    receiver.fail = 100
    with django_capture_on_commit_callbacks(execute=True):
        october_invoice(tenant)
    attempts = list(Delivery.objects.filter(channel="webhook").order_by("attempt").values_list("attempt", "ok"))
    assert attempts == [(1, False), (2, False), (3, False), (4, False)]


def test_a_private_address_is_refused_unless_allowed(tenant: Tenant, eager: None, settings: Any) -> None:
    from billing.webhooks import WebhookFailed, webhook_send

    settings.TOLLWAY = {**settings.TOLLWAY, "WEBHOOK_ALLOW_PRIVATE": False}
    BillingProfile.objects.create(tenant=tenant, webhook_url="http://127.0.0.1:9/hook")
    event = WebhookEvent.objects.create(event_id="evt_x", type="invoice.paid", tenant=tenant, payload={})
    with pytest.raises(WebhookFailed, match="private address"):
        webhook_send(event=event, target="tenant", attempt=1)
    assert Delivery.objects.get().detail.endswith("refused")


def test_a_mail_server_that_is_down_never_fails_the_finalisation(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # given the embedded default's eager Celery (errors propagate) and no mail server listening
    monkeypatch.setitem(app.conf, "task_always_eager", True)
    monkeypatch.setitem(app.conf, "task_eager_propagates", True)
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()
    tenant.billing_email = "ap@acme.example"
    tenant.save()
    # when an invoice is finalised, it is, and the failed attempt is recorded on it
    with django_capture_on_commit_callbacks(execute=True):
        invoice = october_invoice(tenant)
    assert invoice.status == "open"
    failed = Delivery.objects.get(invoice=invoice)
    assert (failed.channel, failed.ok, failed.attempt) == ("email", False, 1) and "Connection" in failed.detail
