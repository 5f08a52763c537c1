"""Celery tasks for the proxy. Tasks are interfaces: they call services."""

from __future__ import annotations

from celery import shared_task

from proxy import health


@shared_task(name="proxy.check_deployments", ignore_result=True)
def check_deployments() -> int:
    return health.deployment_health_check_all()
