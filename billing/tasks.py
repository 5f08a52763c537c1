"""Celery tasks for billing. Tasks are interfaces: they call services and own retries."""

from __future__ import annotations

from celery import shared_task

from billing import admission


@shared_task(name="billing.sweep_reservations", ignore_result=True)
def sweep_reservations() -> int:
    return admission.sweep()
