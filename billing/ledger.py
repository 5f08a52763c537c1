"""The usage ledger: one idempotent insert per billable call.

Concurrent calls' rows are committed together (``GroupInsert``): Postgres flushes its
write-ahead log once per commit, and on a busy gateway that flush, not the row, was most
of the database's work per call.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg
from django import db as django_db
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
    api: str = UsageRecord.Api.CHAT
    batch_id: str = ""  # a Batch API line's batch; its price carries the batch factor


class LedgerWriteInterrupted(RuntimeError):
    """The group insert's leader was interrupted mid-write: the row may or may not be in."""


# The failures that mean "the ledger cannot be reached now", as opposed to a bad row: the
# connection refused or lost, the pool's wait timed out (psycopg_pool.PoolTimeout is a
# psycopg.OperationalError; Django wraps it in its own), a write cut short.
UNREACHABLE: tuple[type[BaseException], ...] = (
    django_db.OperationalError,
    django_db.InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    LedgerWriteInterrupted,
)


def usage_cost(entry: UsageEntry) -> Decimal:
    """What ``entry``'s row costs the tenant: the same figure ``usage_record_create`` writes."""
    return charge_of(entry.usage, entry.price, markup_percent=entry.markup_percent).cost


def usage_record_create(*, entry: UsageEntry) -> tuple[Decimal, bool]:
    """Write the ledger row for ``entry``. Returns its cost, and whether this call wrote it.

    One statement, ``INSERT … ON CONFLICT DO NOTHING`` on the request id (with the call's
    ``created_at``, the same for every write of one call), so a repeated call for the same
    request can never bill twice.
    """
    charge = charge_of(entry.usage, entry.price, markup_percent=entry.markup_percent)
    cost = charge.cost
    # Column values by attribute name: a model instance per call cost more than the insert
    # took on the Python side (SQLite, which wants Django's per-field preparation, builds one).
    values = dict(
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
        api=entry.api,
        batch_id=entry.batch_id,
        price_factor=entry.price.factor,
    )
    return cost, _insert_once(values)


@lru_cache(maxsize=4)
def _fields(vendor: str) -> tuple[Any, ...]:
    return tuple(f for f in UsageRecord._meta.concrete_fields if not f.primary_key)


# The ledger's unique key (request id and the call's admission instant, which every writer
# of a call's row shares): on Postgres the table is partitioned by month of created_at.
_ON_CONFLICT = "ON CONFLICT (request_id, created_at) DO NOTHING RETURNING request_id"


def _into(vendor: str) -> str:
    columns = ", ".join(connection.ops.quote_name(f.column) for f in _fields(vendor))
    return f"INSERT INTO {connection.ops.quote_name(UsageRecord._meta.db_table)} ({columns})"  # names from _meta


@lru_cache(maxsize=256)
def _insert_sql(vendor: str, rows: int) -> str:
    """The INSERT for ``rows`` rows, built once per vendor and size rather than per call."""
    one = f"({', '.join(['%s'] * len(_fields(vendor)))})"
    return f"{_into(vendor)} VALUES {', '.join([one] * rows)} {_ON_CONFLICT}"


# Above this many rows a batch goes as one array per column (_unnest_sql): the VALUES
# form's text grows with the rows, past what psycopg caches its parse of, and parsing it
# cost more than the insert (bench/: 80 us a row at 50 rows, against 32 with arrays).
UNNEST_ABOVE = 4


@lru_cache(maxsize=4)
def _unnest_sql(vendor: str) -> str:
    """One INSERT for any number of rows, each column one array parameter: one short
    statement, prepared once per connection. The arrays are cast to the columns' base
    types; the insert's own assignment casts then check lengths and precision as usual."""
    arrays = ", ".join(f"%s::{re.sub(r'[(].*[)]', '', f.db_type(connection))}[]" for f in _fields(vendor))
    return f"{_into(vendor)} SELECT * FROM unnest({arrays}) {_ON_CONFLICT}"  # noqa: S608  # names from _meta


@lru_cache(maxsize=8)
def _columns(vendor: str, names: tuple[str, ...]) -> tuple[tuple[str | None, Any], ...]:
    """For each column in order, the name to read it by from a row given with ``names``,
    or None for a column the row leaves to its default. A name that is no column would
    silently be lost: it is refused."""
    fields = _fields(vendor)
    unknown = set(names) - {f.attname for f in fields}
    if unknown:
        raise TypeError(f"UsageRecord has no column {sorted(unknown)}")
    return tuple((f.attname if f.attname in names else None, f) for f in fields)


def _db() -> Any:
    """The default database's connection object, looked up once per use: each attribute
    read through ``django.db.connection`` is a lookup in a context-local store."""
    return django_db.connections[django_db.DEFAULT_DB_ALIAS]


def _insert_once(given: dict[str, Any]) -> bool:
    db = _db()
    columns = _columns(db.vendor, tuple(given))
    if db.vendor != "postgresql":  # the embedded SQLite default
        row = UsageRecord(**given)
        return _write_rows([[f.get_db_prep_save(f.pre_save(row, add=True), db) for _, f in columns]])[0]
    # Postgres takes the values as they are: ints, strs, bools, Decimals, an aware datetime;
    # a column the call does not set gets its field's default, as a model instance would.
    values = [given[name] if name is not None else f.get_default() for name, f in columns]
    if db.in_atomic_block:
        # The row belongs to the caller's transaction; another caller's commit must not carry it.
        return _write_rows([values])[0]
    return group_insert.insert(values)


def _write_rows(rows: list[list[Any]]) -> list[bool]:
    """Insert ``rows`` in one statement; for each, whether this statement wrote it. A
    request id repeated within ``rows`` is written once, by its first occurrence."""
    db = _db()
    vendor = db.vendor
    params: list[Any]
    if vendor == "postgresql" and len(rows) > UNNEST_ABOVE:
        sql, params = _unnest_sql(vendor), [list(column) for column in zip(*rows, strict=True)]
    else:
        sql, params = _insert_sql(vendor, len(rows)), [value for row in rows for value in row]
    if vendor == "postgresql":
        # A server-side binding cursor, so psycopg prepares the statement once per
        # connection (prepare_threshold, set in config/settings.py) instead of quoting
        # every value into the SQL text.
        db.ensure_connection()
        with db.wrap_database_errors:
            cursor = db._prepare_cursor(psycopg.Cursor(db.connection))
    else:
        cursor = db.cursor()
    with cursor:
        cursor.execute(sql, params)
        written = {found for (found,) in cursor.fetchall()}
    at = _request_id_index(vendor)
    result, seen = [], set()
    for row in rows:
        request_id = row[at]
        result.append(request_id in written and request_id not in seen)
        seen.add(request_id)
    return result


@lru_cache(maxsize=4)
def _request_id_index(vendor: str) -> int:
    return [f.name for f in _fields(vendor)].index("request_id")


class _Slot:
    __slots__ = ("done", "error", "inserted", "values", "wake")

    def __init__(self, values: list[Any]) -> None:
        self.values = values
        self.inserted: bool | None = None
        self.error: BaseException | None = None
        self.done = False
        self.wake = threading.Event()


class GroupInsert:
    """Group commit for the ledger: rows that arrive while an insert is in flight go
    together in the next one, one statement and one commit (one WAL flush) for the lot.

    The first caller with no insert in flight leads: it writes the queued rows, its own
    among them, and wakes their callers; the next queued caller leads the next batch.
    Every caller still returns only once its own row is committed, so nothing is answered
    before it is recorded. A failed batch is retried row by row, so one bad row fails
    only its own call; but when the database cannot be reached at all (``UNREACHABLE``),
    every row queued fails at once with that error, instead of each batch waiting out the
    pool's timeout in turn (their callers spool them: ``billing.spool``). A caller that
    waits gives its database connection back first. Under gevent the callers are
    greenlets of one worker; with threads it works the same.
    """

    def __init__(
        self,
        write: Callable[[list[list[Any]]], list[bool]],
        *,
        before_wait: Callable[[], None] = lambda: None,
        max_rows: int = 100,
    ) -> None:
        self._write = write
        self._before_wait = before_wait
        self.max_rows = max_rows
        self._queue: list[_Slot] = []
        self._lock = threading.Lock()
        self._leading = False
        self.batches = 0  # statements issued, for tests and the curious

    def insert(self, values: list[Any]) -> bool:
        slot = _Slot(values)
        with self._lock:
            self._queue.append(slot)
        while True:
            with self._lock:
                if slot.done:
                    break
                lead = not self._leading
                if lead:
                    self._leading = True
                    batch, self._queue = self._queue[: self.max_rows], self._queue[self.max_rows :]
            if not lead:
                self._before_wait()
                slot.wake.wait()
                slot.wake.clear()
                continue
            try:
                self._run(batch)
            finally:
                unreachable = next((s.error for s in batch if isinstance(s.error, UNREACHABLE)), None)
                with self._lock:
                    self._leading = False
                    failed, self._queue = (self._queue, []) if unreachable is not None else ([], self._queue)
                    successor = self._queue[0] if self._queue else None
                for other in failed:  # the database is away: no point in their waiting their turn
                    other.error, other.done = unreachable, True
                    other.wake.set()
                if successor is not None:
                    successor.wake.set()
        if slot.error is not None:
            raise slot.error
        return bool(slot.inserted)

    def _run(self, batch: list[_Slot]) -> None:
        try:
            self.batches += 1
            try:
                results: list[bool] | None = self._write([slot.values for slot in batch])
            except Exception as exc:
                if len(batch) == 1 or isinstance(exc, UNREACHABLE):
                    for slot in batch:
                        slot.error = exc
                    return
                results = None
            if results is not None:
                for slot, inserted in zip(batch, results, strict=True):
                    slot.inserted = inserted
                return
            for slot in batch:  # find the bad row: each call gets its own answer
                self.batches += 1
                try:
                    slot.inserted = self._write([slot.values])[0]
                except Exception as own:
                    slot.error = own
        finally:
            for slot in batch:
                if slot.inserted is None and slot.error is None:
                    # The leader was interrupted mid-write: no caller may take that as "already billed".
                    slot.error = LedgerWriteInterrupted("the ledger write was interrupted")
                slot.done = True
                slot.wake.set()


def give_back_connection() -> None:
    """A caller about to wait on another hands its pooled connection back (unless it is
    in a transaction), so the pool can never be drained by callers waiting on one that
    needs a connection to finish: the ledger's group leader, a counter rebuild."""
    db = _db()
    if db.connection is not None and not db.in_atomic_block:
        db.close()


group_insert = GroupInsert(_write_rows, before_wait=give_back_connection)


def usage_record_from_reservation(*, request_id: str, record: dict[str, Any]) -> tuple[Decimal, bool]:
    """Bill a reservation whose worker died, from its own estimate, marked as estimated.

    If the worker wrote its row after all, that row stands and its cost is returned.
    """
    # The unique key is (request id, created_at), the partition key; a row of this request
    # at any other instant (an older release's, or one written by hand) still stands. Off
    # the request path, so the look across partitions costs nothing a call waits for.
    written = UsageRecord.objects.filter(request_id=request_id).values_list("cost", flat=True).first()
    if written is not None:
        return written, False
    price = PriceSnapshot(
        input_per_mtok=Decimal(record["input_price"]),
        output_per_mtok=Decimal(record["output_price"]),
        effective_from=datetime.fromisoformat(record["price_from"]),
        request_fee=Decimal(record.get("request_fee", "0")),
        factor=Decimal(record.get("price_factor", "1")),
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
            api=record.get("api", UsageRecord.Api.CHAT),
            batch_id=record.get("batch_id", ""),
        )
    )
    if not inserted:
        # created_at in the key finds the row in its month's partition only.
        cost = UsageRecord.objects.values_list("cost", flat=True).get(
            request_id=request_id, created_at=datetime.fromisoformat(record["created_at"])
        )
    return cost, inserted


def usage_records_load(*, rows: list[UsageRecord], batch: int = 2_000) -> None:
    """Insert many finished ledger rows at once (``seeddemo --history``), skipping any whose
    request id is already there. Not for the request path, which goes through
    :func:`usage_record_create`.

    On Postgres each batch is the group insert's one ``INSERT … SELECT FROM unnest(...)``,
    with the values bound as arrays: neither Django nor psycopg builds a statement as long
    as the batch (that text was most of the time of ``bulk_create``). Elsewhere, Django's
    ``bulk_create``.
    """
    if connection.vendor != "postgresql":
        UsageRecord.objects.bulk_create(rows, batch_size=batch, ignore_conflicts=True)
        return
    fields = _fields(connection.vendor)
    for start in range(0, len(rows), batch):
        _write_rows([[getattr(row, f.attname) for f in fields] for row in rows[start : start + batch]])
