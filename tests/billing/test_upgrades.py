"""Rolling upgrades: migrations run first, while replicas of the previous release still
write the ledger. Columns added since the first release need database defaults, or every
insert from an old replica would fail mid-rollout."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection

from billing.models import Model, UsageRecord
from tenants.models import Tenant

pytestmark = pytest.mark.django_db

# The ledger's columns as the first release wrote them.
FIRST_RELEASE_COLUMNS = (
    "request_id, created_at, tenant_id, api_key_id, model_id, provider, upstream_model, input_tokens, "
    "output_tokens, input_price_per_mtok, output_price_per_mtok, cost, usage_estimated, streamed, outcome, latency_ms"
)


def test_an_old_replica_can_still_write_the_ledger() -> None:
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    model = Model.objects.create(name="gpt-4.1")
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO billing_usagerecord ({FIRST_RELEASE_COLUMNS}) "  # noqa: S608  # fixed column list
            "VALUES (%s, now(), %s, NULL, %s, 'mock', 'gpt-4.1', 10, 20, 8, 32, %s, false, false, 'completed', 5)",
            ["old-replica-1", tenant.pk, model.pk, Decimal("0.000720000")],
        )
    row = UsageRecord.objects.get(request_id="old-replica-1")
    assert (row.attempts, row.cache_hit, row.requested_model) == (1, False, "")
    assert (row.cached_input_tokens, row.cache_write_tokens, row.request_fee, row.markup_percent) == (0, 0, 0, 0)
    assert row.upstream_cost == 0
