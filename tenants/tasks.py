"""Celery tasks for identity. Tasks are interfaces: they call services and own retries."""

from __future__ import annotations

from celery import shared_task

from tenants import activity


@shared_task(name="tenants.flush_last_used", ignore_result=True)
def flush_last_used() -> int:
    return activity.flush()
