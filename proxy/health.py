"""Active health checks: a cheap request to each active deployment, its latency and status kept.

The Celery beat task ``proxy.check_deployments`` runs :func:`deployment_health_check_all`
every ``HEALTH_CHECK_SECONDS``. Each check asks for one output token of "ping", through the
deployment's adapter but outside the request path: no tenant, no admission, no ledger
row, so no tenant is billed (the provider still charges its few tokens to Tollway). The
result goes to ``DeploymentHealth`` (one row per deployment, overwritten: re-running is
safe) and shows in the admin next to the circuit's live state from Redis.

Checks only observe: the circuit opens and closes on real traffic (``proxy.circuit``).
"""

from __future__ import annotations

import dataclasses
import logging
import time

from django.conf import settings
from django.utils import timezone

from config.errors import TollwayError
from proxy import adapters
from proxy.models import Deployment, DeploymentHealth
from proxy.route import Timeouts, target_of

log = logging.getLogger(__name__)

PING = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}


def deployment_health_check(*, deployment: Deployment) -> DeploymentHealth:
    """Send one cheap request to ``deployment`` and record how it went."""
    target = target_of(deployment)
    limit = float(settings.TOLLWAY["HEALTH_CHECK_TIMEOUT"])
    bounds = target.limits
    target = dataclasses.replace(
        target,
        timeouts=Timeouts(
            connect=min(bounds.connect, limit),
            first_byte=min(bounds.first_byte, limit),
            idle=min(bounds.idle, limit),
            total=min(bounds.total, limit),
        ),
    )
    started = time.monotonic()
    ok, status, error = True, 200, ""
    try:
        adapters.for_kind(target.kind).complete(target, {**PING, "model": target.upstream_model})
    except TollwayError as exc:
        ok, status, error = False, exc.upstream_status or exc.status, exc.message
    except Exception as exc:  # a check must record any failure, not crash the beat task
        log.exception("health check of deployment %s failed unexpectedly", deployment.pk)
        ok, status, error = False, 0, repr(exc)
    latency = int((time.monotonic() - started) * 1000)
    health, _ = DeploymentHealth.objects.update_or_create(
        deployment=deployment,
        defaults={
            "checked_at": timezone.now(),
            "ok": ok,
            "status": status or None,
            "latency_ms": latency,
            "error": error[:500],
        },
    )
    return health


def deployment_health_check_all() -> int:
    """Check every active deployment of an active provider; returns how many were checked."""
    deployments = Deployment.objects.filter(is_active=True, provider__is_active=True).select_related("provider")
    count = 0
    for deployment in deployments.iterator():
        deployment_health_check(deployment=deployment)
        count += 1
    return count
