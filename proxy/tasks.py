"""Celery tasks for the proxy. Tasks are interfaces: they call services."""

from __future__ import annotations

from celery import shared_task

from proxy import health


@shared_task(name="proxy.check_deployments", ignore_result=True)
def check_deployments() -> int:
    return health.deployment_health_check_all()


@shared_task(name="proxy.expire_responses", ignore_result=True)
def expire_responses() -> int:
    """Delete stored Responses API answers past TOLLWAY_RESPONSES_RETENTION_DAYS."""
    from proxy.responses.store import stored_responses_expire

    return stored_responses_expire()
