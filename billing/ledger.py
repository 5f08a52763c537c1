"""The usage ledger: one idempotent insert per billable call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg
from django.db import connection

from billing.models import UsageRecord
from billing.pricing import PriceSnapshot, TokenUsage, charge_of


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
    attempts: int = 1
    requested_model: str = ""
    cache_hit: bool = False
    markup_percent: Decimal = Decimal(0)


def usage_record_create(*, entry: UsageEntry) -> tuple[Decimal, bool]:
    """Write the ledger row for ``entry``. Returns its cost, and whether this call wrote it.

    One statement, ``INSERT … ON CONFLICT DO NOTHING`` on the request id, so a repeated
    call for the same request can never bill twice.
    """
    charge = charge_of(entry.usage, entry.price, markup_percent=entry.markup_percent)
    cost = charge.cost
    row = UsageRecord(
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
        request_fee=entry.price.request_fee,
        markup_percent=entry.markup_percent,
        cost=cost,
        # A response-cache hit cost us nothing upstream, whatever it is billed at.
        upstream_cost=Decimal(0) if entry.cache_hit else charge.upstream_cost,
        usage_estimated=entry.usage_estimated,
        streamed=entry.streamed,
        outcome=entry.outcome,
        latency_ms=entry.latency_ms,
        attempts=entry.attempts,
        requested_model=entry.requested_model,
        cache_hit=entry.cache_hit,
    )
    return cost, _insert_once(row)


@lru_cache(maxsize=4)
def _insert_sql(vendor: str) -> tuple[str, tuple[Any, ...]]:
    """The INSERT statement, built once per database vendor rather than per call."""
    fields = tuple(f for f in UsageRecord._meta.concrete_fields if not f.primary_key)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    table = connection.ops.quote_name(UsageRecord._meta.db_table)
    sql = (
        f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(fields))}) "  # noqa: S608  # names from _meta
        "ON CONFLICT (request_id) DO NOTHING RETURNING id"
    )
    return sql, fields


def _insert_once(row: UsageRecord) -> bool:
    sql, fields = _insert_sql(connection.vendor)
    if connection.vendor != "postgresql":  # the embedded SQLite default
        values = [f.get_db_prep_save(f.pre_save(row, add=True), connection) for f in fields]
        with connection.cursor() as cursor:
            cursor.execute(sql, values)
            return cursor.fetchone() is not None
    # Postgres: a server-side binding cursor, so psycopg prepares the statement once per
    # connection (prepare_threshold, set in config/settings.py) instead of quoting every value into the SQL text, and
    # the values go as they are: ints, strs, bools, Decimals and an aware datetime.
    values = [getattr(row, f.attname) for f in fields]
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = connection._prepare_cursor(psycopg.Cursor(connection.connection))  # type: ignore[attr-defined]
    with cursor:
        cursor.execute(sql, values)
        return cursor.fetchone() is not None


def usage_record_from_reservation(*, request_id: str, record: dict[str, Any]) -> tuple[Decimal, bool]:
    """Bill a reservation whose worker died, from its own estimate, marked as estimated.

    If the worker wrote its row after all, that row stands and its cost is returned.
    """
    price = PriceSnapshot(
        input_per_mtok=Decimal(record["input_price"]),
        output_per_mtok=Decimal(record["output_price"]),
        effective_from=datetime.fromisoformat(record["price_from"]),
        request_fee=Decimal(record.get("request_fee", "0")),
    )
    cost, inserted = usage_record_create(
        entry=UsageEntry(
            request_id=request_id,
            created_at=datetime.fromisoformat(record["created_at"]),
            tenant_id=record["tenant_id"],
            api_key_id=record["api_key_id"],
            model_id=record["model_id"],
            provider=record["provider"],
            upstream_model=record["upstream_model"],
            usage=TokenUsage(input_tokens=record["input_tokens"], output_tokens=record["output_tokens"]),
            price=price,
            usage_estimated=True,
            streamed=record["streamed"],
            outcome=UsageRecord.Outcome.RESERVATION_EXPIRED,
            latency_ms=0,
            markup_percent=Decimal(record.get("markup_percent", "0")),
        )
    )
    if not inserted:
        cost = UsageRecord.objects.values_list("cost", flat=True).get(request_id=request_id)
    return cost, inserted
