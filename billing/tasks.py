"""Celery tasks for billing. Tasks are interfaces: they take ids, call services, own retries.

Every task is safe to re-run and works in bounded batches: a task that has more to do
enqueues its own next batch. Enqueue with :func:`enqueue`, which waits for the caller's
transaction to commit, so a task never looks for rows that are not there yet.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

import config.celery  # noqa: F401  # the configured app: a web process's .delay() uses its broker
from billing import admission, invoicing, reports, rollups
from tenants.models import Tenant

BATCH = 200
log = logging.getLogger(__name__)


def enqueue(task: Any, **kwargs: Any) -> None:
    transaction.on_commit(lambda: task.delay(**kwargs))


def enqueue_delivery(task: Any, **kwargs: Any) -> None:
    """Like :func:`enqueue`, for deliveries of what already committed: a broker that is down,
    or an eager task (the embedded default) that fails, is logged, never raised into the
    request that finalised the invoice. The event and its Delivery rows show what happened."""

    def send() -> None:
        try:
            task.delay(**kwargs)
        except Exception as exc:
            log.error("billing: could not deliver %s %s: %r", task.name, kwargs, exc)

    transaction.on_commit(send)


@shared_task(name="billing.sweep_reservations", ignore_result=True)
def sweep_reservations() -> int:
    return admission.sweep()


@shared_task(name="billing.rollups", ignore_result=True)
def usage_rollups(after_tenant_id: int = 0) -> None:
    cursor = rollups.rollups_run(after_tenant_id=after_tenant_id, batch=BATCH)
    if cursor is not None:
        enqueue(usage_rollups, after_tenant_id=cursor)


@shared_task(name="billing.close_months", ignore_result=True, autoretry_for=(Exception,), max_retries=3)
def close_months(after_tenant_id: int = 0) -> None:
    """Draft each tenant's previous month (in its zone) once it is over; a no-op when drafted."""
    tenants = list(Tenant.objects.filter(pk__gt=after_tenant_id).order_by("pk")[:BATCH])
    invoicing.month_close(tenants=tenants)
    if len(tenants) == BATCH:
        enqueue(close_months, after_tenant_id=tenants[-1].pk)


@shared_task(name="billing.ledger_partitions", ignore_result=True)
def ledger_partitions() -> None:
    """Make the ledger's partitions ahead; archive and drop months past the retention setting."""
    from billing.partitions import ledger_maintain

    result = ledger_maintain()
    if result.made or result.archived:
        log.info("ledger partitions: made %s, archived %s", result.made, result.archived)


@shared_task(name="billing.sweep_invoices", ignore_result=True, autoretry_for=(Exception,), max_retries=3)
def sweep_invoices() -> None:
    """Finalise drafts past their grace period; refresh the others so late usage lands."""
    finalized, refreshed = invoicing.drafts_sweep(batch=BATCH)
    if finalized == BATCH or refreshed == BATCH:
        enqueue(sweep_invoices)


@shared_task(name="billing.finalize_invoice", ignore_result=True)
def finalize_invoice(invoice_id: int) -> None:
    from billing.models import Invoice

    invoice = Invoice.objects.filter(pk=invoice_id, status=Invoice.Status.DRAFT).first()
    if invoice is not None:
        invoicing.invoice_finalize(invoice=invoice)


@shared_task(name="billing.monthly_reports", ignore_result=True)
def monthly_reports(period: str | None = None, after_tenant_id: int = 0) -> None:
    """Statements for a batch of tenants, then the platform margin and invoice reports.
    Rebuilding a report replaces it, so re-running is harmless."""
    period = period or invoicing.previous_period_label(tz_name="UTC", now=timezone.now())
    tenants = list(Tenant.objects.filter(pk__gt=after_tenant_id).order_by("pk")[:BATCH])
    for tenant in tenants:
        reports.statement_build(tenant=tenant, period=period)
    if len(tenants) == BATCH:
        enqueue(monthly_reports, period=period, after_tenant_id=tenants[-1].pk)
        return
    reports.margin_report_build(period=period)
    reports.invoices_report_build(period=period)


def _backoff(retries: int) -> float:
    """Exponential backoff with full jitter: base, 2 x base, 4 x base ..., capped."""
    base = settings.TOLLWAY["DELIVERY_RETRY_BASE_SECONDS"]
    return random.uniform(0, min(base * 2**retries, settings.TOLLWAY["DELIVERY_RETRY_MAX_SECONDS"])) + base / 2


@shared_task(name="billing.email_document", bind=True, ignore_result=True)
def email_document(self: Any, kind: str, document_id: int) -> None:
    """E-mail an invoice or credit note PDF; each attempt is recorded on the document."""
    from billing.emails import EmailFailed, document_email_send

    try:
        document_email_send(kind=kind, document_id=document_id, attempt=self.request.retries + 1)
    except EmailFailed as exc:
        if self.request.retries >= settings.TOLLWAY["DELIVERY_MAX_ATTEMPTS"] - 1:
            return  # the last failure is recorded; finance can resend from the admin
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from None


@shared_task(name="billing.deliver_webhook", bind=True, ignore_result=True)
def deliver_webhook(self: Any, event_id: int, target: str) -> None:
    """POST a billing event to the tenant's or the platform's URL, signed; retried with backoff."""
    from billing.models import WebhookEvent
    from billing.webhooks import WebhookFailed, webhook_send

    event = WebhookEvent.objects.filter(pk=event_id).first()
    if event is None:
        return
    try:
        webhook_send(event=event, target=target, attempt=self.request.retries + 1)
    except WebhookFailed as exc:
        if self.request.retries >= settings.TOLLWAY["DELIVERY_MAX_ATTEMPTS"] - 1:
            return
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from None


@shared_task(name="billing.spend_alert", ignore_result=True, autoretry_for=(OSError,), max_retries=3)
def spend_alert(tenant_id: int, month: str, threshold: str, spend: str, limit: str) -> None:
    """Send a spend or low-balance alert, once per tenant, month and threshold."""
    from decimal import Decimal

    from billing.alerts import spend_alert_send

    spend_alert_send(tenant_id=tenant_id, month=month, threshold=threshold, spend=Decimal(spend), limit=Decimal(limit))
