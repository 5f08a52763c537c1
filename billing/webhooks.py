"""Signed billing webhooks: ``invoice.finalized``, ``invoice.paid``, ``credit_note.created``,
``spend.threshold`` and ``balance.low``.

An event is recorded (:func:`event_record`) in the same transaction as what it reports, so
it exists exactly when that committed; after the commit a Celery task POSTs it to each
configured URL: the tenant's (its billing profile) and the platform's (the issuer). Every
attempt is kept as a :class:`~billing.models.Delivery` row; a failure is retried with
exponential backoff (``TOLLWAY["WEBHOOK_*"]``).

The signature is Stripe's scheme: the header ``Tollway-Signature: t=<unix time>,v1=<hex>``
where ``<hex>`` is HMAC-SHA256, keyed with the endpoint's secret (``whsec_…``), of
``"<t>.<body>"`` (the raw body bytes). Receivers recompute it, compare in constant time,
and refuse a timestamp older than a few minutes (a replay).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from billing.models import BillingProfile, CreditNote, Delivery, Invoice, Issuer, WebhookEvent

SIGNATURE_HEADER = "Tollway-Signature"
TARGETS = ("tenant", "platform")


def sign(*, secret: str, timestamp: int, body: bytes) -> str:
    """The ``Tollway-Signature`` header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(*, secret: str, header: str, body: bytes, tolerance: int = 300, now: float | None = None) -> bool:
    """What a receiver does (and what the tests do): recompute, compare, refuse stale."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance:
        return False
    expected = sign(secret=secret, timestamp=timestamp, body=body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


# --- what an event says ----------------------------------------------------------------------


def invoice_data(invoice: Invoice) -> dict[str, Any]:
    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    return {
        "object": "invoice",
        "number": invoice.number,
        "status": invoice.status,
        "tenant": invoice.tenant.slug,
        "period": invoice.period,
        "currency": invoice.currency,
        "net_usd": text(invoice.total_usd),
        "tax_usd": text(invoice.tax_usd),
        "gross_usd": text(invoice.gross_usd),
        "net_amount": text(invoice.net_amount),
        "tax_amount": text(invoice.tax_amount),
        "gross_amount": text(invoice.gross_amount),
        "issue_date": text(invoice.issue_date),
        "due_date": text(invoice.due_date),
        "paid_on": text(invoice.paid_on),
        "payment_reference": invoice.payment_reference or None,
    }


def credit_note_data(note: CreditNote) -> dict[str, Any]:
    return {
        "object": "credit_note",
        "number": note.number,
        "invoice": note.invoice.number,
        "tenant": note.tenant.slug,
        "reason": note.reason,
        "currency": note.currency,
        "net_usd": str(note.net_usd),
        "tax_usd": str(note.tax_usd),
        "gross_usd": str(note.gross_usd),
        "net_amount": str(note.net_amount),
        "tax_amount": str(note.tax_amount),
        "gross_amount": str(note.gross_amount),
        "issue_date": str(note.issue_date),
    }


def event_record(
    *,
    type: str,
    tenant_id: int,
    data: dict[str, Any],
    invoice: Invoice | None = None,
    credit_note: CreditNote | None = None,
) -> WebhookEvent:
    """Record an event in the caller's transaction; its deliveries (and, for a document,
    its e-mail) are enqueued when that transaction commits."""
    from billing import tasks

    event_id = f"evt_{secrets.token_hex(12)}"
    event = WebhookEvent.objects.create(
        event_id=event_id,
        type=type,
        tenant_id=tenant_id,
        payload={"id": event_id, "type": type, "created": int(time.time()), "data": data},
    )
    for target in TARGETS:
        if endpoint_of(event, target) is not None:
            tasks.enqueue_delivery(tasks.deliver_webhook, event_id=event.pk, target=target)
    if type == "invoice.finalized" and invoice is not None:
        tasks.enqueue_delivery(tasks.email_document, kind="invoice", document_id=invoice.pk)
    if type == "credit_note.created" and credit_note is not None:
        tasks.enqueue_delivery(tasks.email_document, kind="credit_note", document_id=credit_note.pk)
    return event


# --- sending ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    url: str
    secret: str


def endpoint_of(event: WebhookEvent, target: str) -> Endpoint | None:
    if target == "tenant":
        profile = BillingProfile.objects.filter(tenant_id=event.tenant_id).first()
        if profile is None or not profile.webhook_url:
            return None
        return Endpoint(profile.webhook_url, profile.webhook_secret)
    issuer = Issuer.objects.filter(pk=1).first()
    if issuer is None or not issuer.webhook_url:
        return None
    return Endpoint(issuer.webhook_url, issuer.webhook_secret)


class WebhookFailed(Exception):
    """A delivery attempt failed; the task retries it."""


def _refuse_private(url: str) -> None:
    """A tenant's URL must not reach into the platform's own network (SSRF), unless
    ``TOLLWAY["WEBHOOK_ALLOW_PRIVATE"]`` says so (tests, a private deployment)."""
    if settings.TOLLWAY["WEBHOOK_ALLOW_PRIVATE"]:
        return
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise WebhookFailed(f"cannot resolve {host}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise WebhookFailed(f"{host} resolves to a private address ({address}): refused")


def webhook_send(*, event: WebhookEvent, target: str, attempt: int) -> Delivery | None:
    """POST the event to one endpoint, once; record the attempt. Raises
    :class:`WebhookFailed` (after recording it) so the task can retry."""
    endpoint = endpoint_of(event, target)
    if endpoint is None:
        return None
    body = json.dumps(event.payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Tollway-Webhooks/1",
        "Tollway-Event-Id": event.event_id,
        SIGNATURE_HEADER: sign(secret=endpoint.secret, timestamp=timestamp, body=body),
    }
    ok, detail = False, ""
    try:
        if target == "tenant":
            _refuse_private(endpoint.url)
        response = httpx.post(
            endpoint.url,
            content=body,
            headers=headers,
            timeout=settings.TOLLWAY["WEBHOOK_TIMEOUT_SECONDS"],
            follow_redirects=False,
        )
        ok = 200 <= response.status_code < 300
        detail = f"HTTP {response.status_code}"
    except (httpx.HTTPError, WebhookFailed) as exc:
        detail = f"{type(exc).__name__}: {exc}"[:500]
    delivery = Delivery.objects.create(
        channel=Delivery.Channel.WEBHOOK,
        tenant_id=event.tenant_id,
        event=event,
        what=event.type,
        target=endpoint.url[:500],
        attempt=attempt,
        ok=ok,
        detail=detail,
    )
    if not ok:
        raise WebhookFailed(detail)
    return delivery
