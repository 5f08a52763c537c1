"""Active health checks and the admin's view of each deployment's health."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from billing.models import Model, Price, UsageRecord
from proxy import circuit
from proxy.models import Deployment, DeploymentHealth, Provider
from proxy.tasks import check_deployments
from tests.conftest import UPSTREAM_KEY_ENV, Catalog, Upstream, free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet(catalog: Catalog, mock_upstream: Upstream) -> dict[str, Deployment]:
    live = Provider.objects.create(
        name="live", kind=Provider.Kind.OPENAI, base_url=mock_upstream.base_url, api_key_env=UPSTREAM_KEY_ENV
    )
    dead = Provider.objects.create(
        name="dead",
        kind=Provider.Kind.OPENAI,
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        api_key_env=UPSTREAM_KEY_ENV,
    )
    model = Model.objects.create(name="checked")
    Price.objects.create(model=model, input_per_mtok=Decimal("1"), output_per_mtok=Decimal("1"))
    return {
        "good": Deployment.objects.create(model=model, provider=live, upstream_model="healthy"),
        "sick": Deployment.objects.create(model=model, provider=live, upstream_model="mock-error-503"),
        "gone": Deployment.objects.create(model=model, provider=dead, upstream_model="nobody"),
    }


def test_the_beat_task_checks_every_deployment_records_status_and_latency_and_bills_nobody(
    fleet: dict[str, Deployment], mock_upstream: Upstream
) -> None:
    assert settings.CELERY_BEAT_SCHEDULE["check-deployments"]["task"] == "proxy.check_deployments"
    mock_upstream.forget()
    checked = check_deployments()
    assert checked == 5  # the catalog's two mock deployments too
    health = {d: DeploymentHealth.objects.get(deployment=fleet[d]) for d in fleet}
    assert (health["good"].ok, health["good"].status) == (True, 200)
    assert (health["sick"].ok, health["sick"].status) == (False, 503)
    assert (health["gone"].ok, health["gone"].status) == (False, 502)
    assert all(h.latency_ms >= 0 for h in health.values())
    # a cheap request: one output token
    pings = [r["body"] for r in mock_upstream.received() if r["method"] == "POST"]
    assert {p["model"] for p in pings} == {"healthy", "mock-error-503"} and all(p["max_tokens"] == 1 for p in pings)
    assert not UsageRecord.objects.exists()
    # re-runnable: one row per deployment, overwritten
    check_deployments()
    assert DeploymentHealth.objects.count() == 5


def test_admin_shows_each_deployments_circuit_and_last_check(client: Client, fleet: dict[str, Deployment]) -> None:
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    for _ in range(settings.TOLLWAY["CIRCUIT_FAILURES"]):
        circuit.record_failure(fleet["sick"].pk, status=503, latency_ms=12)
    response = client.post(
        reverse("admin:proxy_deployment_changelist"),
        {"action": "check_now", "_selected_action": [d.pk for d in fleet.values()]},
        follow=True,
    )
    content = response.content.decode()
    assert "Checked 3 deployment(s); 2 failing." in content
    assert "OPEN until" in content and "last status 503 in 12 ms" in content
    assert "FAILING (503" in content and "closed; 0 consecutive failures" in content
    page = client.get(reverse("admin:proxy_deployment_change", args=[fleet["sick"].pk])).content.decode()
    assert "OPEN until" in page
