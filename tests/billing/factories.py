"""Ledger rows made fast: bulk inserts in batches, priced by the real pricing code."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models.expressions import DatabaseDefault
from psycopg import sql

from billing.ledger import UsageEntry
from billing.models import Model, UsageRecord
from billing.pricing import PriceSnapshot, TokenUsage, charge_of
from tenants.models import ApiKey, Tenant

BATCH = 5_000
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def usage_entry(*, tenant_id: int, model_id: int, **changes: Any) -> UsageEntry:
    """What the request path hands the ledger for one completed call; ``changes`` override."""
    fields: dict[str, Any] = {
        "request_id": "req",
        "created_at": T0,
        "api_key_id": None,
        "provider": "mock",
        "upstream_model": "gpt-4.1",
        "usage": TokenUsage(3, 7),
        "price": PriceSnapshot(Decimal("0.42"), Decimal("1.68"), T0),
        "usage_estimated": False,
        "streamed": False,
        "outcome": UsageRecord.Outcome.COMPLETED,
        "latency_ms": 1,
    }
    return UsageEntry(tenant_id=tenant_id, model_id=model_id, **{**fields, **changes})


def usage_row(
    *,
    tenant: Tenant,
    model: Model,
    at: datetime,
    price: PriceSnapshot,
    usage: TokenUsage,
    markup: Decimal = Decimal(0),
    api_key: ApiKey | None = None,
    provider: str = "mock",
) -> UsageRecord:
    charge = charge_of(usage, price, markup_percent=markup)
    return UsageRecord(
        request_id=uuid.uuid4().hex,
        created_at=at,
        tenant=tenant,
        api_key=api_key,
        model=model,
        provider=provider,
        upstream_model=model.name,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        input_price_per_mtok=price.input_per_mtok,
        output_price_per_mtok=price.output_per_mtok,
        cached_input_price_per_mtok=price.cached_input_rate,
        cache_write_price_per_mtok=price.cache_write_rate,
        request_fee=price.request_fee,
        markup_percent=markup,
        cost=charge.cost,
        upstream_cost=charge.upstream_cost,
        latency_ms=1,
    )


def random_usage(rng: random.Random) -> TokenUsage:
    prompt = rng.randint(1, 20_000)
    return TokenUsage(
        input_tokens=prompt,
        output_tokens=rng.randint(0, 4_000),
        cached_input_tokens=rng.choice([0, 0, rng.randint(0, prompt)]),
    )


def save(rows: list[UsageRecord]) -> None:
    """Insert ``rows`` (their ids left to the database). On Postgres with COPY: Django's
    bulk_create spent about a minute compiling and binding 100,000 rows' SQL."""
    if not rows:
        return
    # Columns left to their database default (db_default) on every row stay out of the COPY.
    unset = {
        f.attname for f in UsageRecord._meta.concrete_fields if isinstance(getattr(rows[0], f.attname), DatabaseDefault)
    }
    uniform = all(isinstance(getattr(row, name), DatabaseDefault) for row in rows for name in unset)
    if connection.vendor != "postgresql" or not uniform:
        for i in range(0, len(rows), BATCH):
            UsageRecord.objects.bulk_create(rows[i : i + BATCH])
        return
    fields = [f for f in UsageRecord._meta.concrete_fields if not f.primary_key and f.attname not in unset]
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(UsageRecord._meta.db_table), sql.SQL(", ").join(sql.Identifier(f.column) for f in fields)
    )
    with connection.cursor() as cursor, cursor.cursor.copy(copy_sql) as copy:
        for row in rows:
            copy.write_row([f.get_db_prep_save(f.pre_save(row, add=True), connection) for f in fields])


def snapshot(input_: str, output: str, cached: str | None = None, fee: str = "0") -> PriceSnapshot:
    return PriceSnapshot(
        input_per_mtok=Decimal(input_),
        output_per_mtok=Decimal(output),
        effective_from=datetime(2000, 1, 1),
        cached_input_per_mtok=Decimal(cached) if cached else None,
        request_fee=Decimal(fee),
    )
