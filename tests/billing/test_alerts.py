"""Spend alerts on the settle path: a call that crosses nothing adds no database statement;
the call that crosses a threshold enqueues its alert, and the alert is sent once."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billing import alerts
from billing.alerts import crossed, spend_alert_send, thresholds_clean
from billing.models import BillingProfile, SpendAlert
from tenants.models import Tenant
from tests.conftest import Api, Catalog, user

pytestmark = pytest.mark.django_db

BODY = {"model": "gpt-4.1", "messages": user("hi"), "max_tokens": 5}


def test_a_warm_call_under_a_budget_that_crosses_nothing_makes_one_statement(
    api: Api, catalog: Catalog, tenant: Tenant, django_assert_num_queries: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant.monthly_budget_usd = Decimal(100)
    tenant.save()
    BillingProfile.objects.create(tenant=tenant, alert_thresholds=[50])
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(alerts, "_enqueue", lambda **kw: sent.append(kw))
    assert api.chat(BODY).status_code == 200  # warms the caches, the alert thresholds among them
    with django_assert_num_queries(1):  # the ledger insert
        assert api.chat(BODY).status_code == 200
    assert sent == []


def test_the_call_that_crosses_enqueues_the_alert(
    api: Api, catalog: Catalog, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant.monthly_budget_usd = Decimal("0.01")
    tenant.save()
    BillingProfile.objects.create(tenant=tenant, alert_thresholds=[1, 2])
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(alerts, "_enqueue", lambda **kw: sent.append(kw))
    assert api.chat(BODY).status_code == 200  # about $0.00026: 2.6 % of a cent
    assert [s["threshold"] for s in sent] == ["1", "2"]
    assert api.chat(BODY).status_code == 200
    assert [s["threshold"] for s in sent] == ["1", "2"]  # nothing new crossed


def test_crossing_arithmetic_and_thresholds() -> None:
    budget = Decimal(100)
    assert crossed(before=Decimal(49), after=Decimal(50), budget=budget, thresholds=(50, 80, 100)) == [50]
    assert crossed(before=Decimal(50), after=Decimal(79), budget=budget, thresholds=(50, 80, 100)) == []
    assert crossed(before=Decimal(10), after=Decimal(100), budget=budget, thresholds=(50, 80, 100)) == [50, 80, 100]
    assert thresholds_clean([100, 50, 50]) == [50, 100]
    for bad in ([0], [1001], ["50"], [True], list(range(1, 13))):
        with pytest.raises(ValueError):
            thresholds_clean(bad)


def test_an_alert_is_recorded_once_per_month(tenant: Tenant) -> None:
    assert spend_alert_send(tenant_id=tenant.pk, month="2026-11", threshold="50", spend=Decimal(5), limit=Decimal(5))
    again = spend_alert_send(tenant_id=tenant.pk, month="2026-11", threshold="50", spend=Decimal(6), limit=Decimal(5))
    assert again is False and SpendAlert.objects.count() == 1
    assert spend_alert_send(tenant_id=tenant.pk, month="2026-12", threshold="50", spend=Decimal(5), limit=Decimal(5))


def test_the_postgres_path_alerts_even_when_concurrent_rows_hide_the_crossing(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given two calls whose rows committed together: each one's month sum already holds both,
    # so neither sees spend go from below the line to above it
    tenant.monthly_budget_usd = Decimal(10)
    tenant.save()
    BillingProfile.objects.create(tenant=tenant, alert_thresholds=[50])
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(alerts, "_enqueue", lambda **kw: sent.append(kw))
    monkeypatch.setattr(alerts, "_sent_here", set())
    for _ in range(2):
        alerts.spend_settled(
            tenant_id=tenant.pk,
            month="2026-11",
            spent_after=Decimal(6),
            cost=Decimal(3),
            credit_after=None,
            reached=True,
        )
    # then the threshold reached is alerted, once from this process (the unique insert does the rest)
    assert [s["threshold"] for s in sent] == ["50"]
    # and on the Redis path, where each call sees its own before and after, the same is no crossing
    alerts.spend_settled(
        tenant_id=tenant.pk, month="2026-11", spent_after=Decimal(6), cost=Decimal("0.5"), credit_after=None
    )
    assert len(sent) == 1
