"""Reads for billing."""

from __future__ import annotations

from django.db.models import QuerySet

from billing.models import Price
from billing.pricing import PriceSnapshot


def price_snapshots(*, model_id: int) -> list[PriceSnapshot]:
    """All of a model's prices, newest first, as cacheable snapshots."""
    prices: QuerySet[Price] = Price.objects.filter(model_id=model_id).order_by("-effective_from")
    return [
        PriceSnapshot(
            input_per_mtok=p.input_per_mtok,
            output_per_mtok=p.output_per_mtok,
            effective_from=p.effective_from,
            cached_input_per_mtok=p.cached_input_per_mtok,
            cache_write_per_mtok=p.cache_write_per_mtok,
        )
        for p in prices
    ]
