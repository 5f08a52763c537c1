"""The usage ledger: one idempotent insert per billable call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing.models import UsageRecord
from billing.pricing import PriceSnapshot, TokenUsage, cost_of


@dataclass(frozen=True)
class UsageEntry:
    request_id: str
    created_at: datetime
    tenant_id: int
    api_key_id: int | None
    model_id: int
    provider: str
    upstream_model: str
    usage: TokenUsage
    price: PriceSnapshot
    usage_estimated: bool
    streamed: bool
    outcome: str
    latency_ms: int


def usage_record_create(*, entry: UsageEntry) -> Decimal:
    """Write the ledger row for ``entry`` and return its cost.

    One statement, ``INSERT … ON CONFLICT DO NOTHING`` on the request id, so a repeated
    call for the same request can never bill twice.
    """
    cost = cost_of(entry.usage, entry.price)
    UsageRecord.objects.bulk_create(
        [
            UsageRecord(
                request_id=entry.request_id,
                created_at=entry.created_at,
                tenant_id=entry.tenant_id,
                api_key_id=entry.api_key_id,
                model_id=entry.model_id,
                provider=entry.provider,
                upstream_model=entry.upstream_model,
                input_tokens=entry.usage.input_tokens,
                output_tokens=entry.usage.output_tokens,
                cached_input_tokens=entry.usage.cached_input_tokens,
                cache_write_tokens=entry.usage.cache_write_tokens,
                input_price_per_mtok=entry.price.input_per_mtok,
                output_price_per_mtok=entry.price.output_per_mtok,
                cached_input_price_per_mtok=entry.price.cached_input_rate,
                cache_write_price_per_mtok=entry.price.cache_write_rate,
                cost=cost,
                usage_estimated=entry.usage_estimated,
                streamed=entry.streamed,
                outcome=entry.outcome,
                latency_ms=entry.latency_ms,
            )
        ],
        ignore_conflicts=True,
    )
    return cost
