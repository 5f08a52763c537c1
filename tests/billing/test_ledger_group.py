"""Group commit: concurrent calls' ledger rows share one INSERT and one commit, and each
call still gets its own answer, exactly as if it had written alone."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.db import DataError, IntegrityError, connection, transaction

from billing import ledger
from billing.ledger import GroupInsert, UsageEntry, usage_record_create
from billing.models import Model, UsageRecord
from billing.pricing import PriceSnapshot, TokenUsage
from tenants.models import Tenant
from tests.billing.factories import usage_entry

pytestmark = pytest.mark.django_db(transaction=True)  # the callers commit, on their own connections


@pytest.fixture
def entry() -> UsageEntry:
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    model = Model.objects.create(name="deepseek-v3")
    return usage_entry(
        tenant_id=tenant.pk,
        model_id=model.pk,
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
        upstream_model="deepseek-v3",
        latency_ms=5,
    )


def slow_first_write(pause: float) -> Callable[[list[list[Any]]], list[bool]]:
    """The real writer, holding its first statement long enough for every caller to queue."""
    first = threading.Event()

    def write(rows: list[list[Any]]) -> list[bool]:
        if not first.is_set():
            first.set()
            time.sleep(pause)
        return ledger._write_rows(rows)

    return write


@pytest.fixture
def group(monkeypatch: pytest.MonkeyPatch) -> GroupInsert:
    """The ledger's group insert, its first statement held so that every caller queues."""
    installed = GroupInsert(slow_first_write(0.3))
    monkeypatch.setattr(ledger, "group_insert", installed)
    return installed


def concurrently(entries: list[UsageEntry]) -> list[Any]:
    """Each entry written by its own thread, all released at once; the answer or the error."""
    answers: list[Any] = [None] * len(entries)
    start = threading.Barrier(len(entries))

    def call(i: int) -> None:
        try:
            start.wait()
            answers[i] = usage_record_create(entry=entries[i])
        except Exception as exc:
            answers[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(entries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


def test_concurrent_rows_share_a_commit_and_each_call_gets_its_own_answer(
    entry: UsageEntry, group: GroupInsert
) -> None:
    entries = [dataclasses.replace(entry, request_id=f"req-{i}") for i in range(24)]
    entries += [dataclasses.replace(entry, request_id="req-twice")] * 2  # a retried call

    answers = concurrently(entries)

    assert answers[:24] == [(Decimal("0.000013020"), True)] * 24
    # The same request id twice: one call wrote it, the other is told it was already there.
    assert sorted(answers[24:], key=lambda a: a[1]) == [(Decimal("0.000013020"), False), (Decimal("0.000013020"), True)]
    assert UsageRecord.objects.count() == 25
    assert sum(UsageRecord.objects.values_list("cost", flat=True)) == Decimal("0.000325500")
    # The first caller's statement, then everyone who queued behind it, together.
    assert group.batches == 2


def test_a_bad_row_fails_only_its_own_call(entry: UsageEntry, group: GroupInsert) -> None:
    entries = [dataclasses.replace(entry, request_id=f"req-{i}") for i in range(6)]
    entries[3] = dataclasses.replace(entry, request_id="req-bad", model_id=entry.model_id + 1000)  # no such model

    answers = concurrently(entries)

    assert isinstance(answers[3], IntegrityError)
    assert [a for i, a in enumerate(answers) if i != 3] == [(Decimal("0.000013020"), True)] * 5
    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == [f"req-{i}" for i in (0, 1, 2, 4, 5)]


def test_a_row_inside_a_transaction_stays_in_that_transaction(
    entry: UsageEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = GroupInsert(ledger._write_rows)
    monkeypatch.setattr(ledger, "group_insert", group)
    with pytest.raises(RuntimeError), transaction.atomic():
        assert usage_record_create(entry=entry) == (Decimal("0.000013020"), True)
        raise RuntimeError("the caller's transaction rolls back")
    assert not UsageRecord.objects.exists(), "no other commit carried the row"
    assert group.batches == 0

    assert usage_record_create(entry=entry) == (Decimal("0.000013020"), True)
    assert group.batches == 1
    assert UsageRecord.objects.count() == 1


def varied(entry: UsageEntry, prefix: str) -> list[UsageEntry]:
    """Six rows that between them use every kind of value the ledger stores."""
    cached_price = PriceSnapshot(
        Decimal("3.000001"), Decimal("15"), entry.price.effective_from, Decimal("0.3"), Decimal("3.75"), Decimal("0.01")
    )
    return [
        dataclasses.replace(entry, request_id=f"{prefix}-0"),
        dataclasses.replace(entry, request_id=f"{prefix}-1", usage=TokenUsage(2025, 15, 1800, 200), price=cached_price),
        dataclasses.replace(
            entry, request_id=f"{prefix}-2", usage_estimated=True, streamed=True, outcome="client_gone"
        ),
        dataclasses.replace(entry, request_id=f"{prefix}-3", markup_percent=Decimal("12.5"), cache_hit=True),
        dataclasses.replace(entry, request_id=f"{prefix}-4", requested_model="fast", attempts=3, provider="h\u00e9"),
        dataclasses.replace(
            entry, request_id=f"{prefix}-5", created_at=datetime(2026, 11, 30, 23, 59, 59, 999999, UTC)
        ),
    ]


def stored(prefix: str) -> list[dict[str, Any]]:
    rows = UsageRecord.objects.filter(request_id__startswith=f"{prefix}-").order_by("request_id").values()
    return [{k: v for k, v in row.items() if k not in ("id", "request_id")} for row in rows]


def test_a_large_batch_stores_each_row_exactly_as_a_lone_insert_does(entry: UsageEntry, group: GroupInsert) -> None:
    with transaction.atomic():  # lone inserts, one statement each, outside the group (its held write is for later)
        alone = [usage_record_create(entry=e) for e in varied(entry, "alone")]
    assert group.batches == 0

    together = concurrently([dataclasses.replace(entry, request_id="first"), *varied(entry, "batch")])

    assert group.batches == 2, "the first row alone, then the other six in one statement"
    assert together[1:] == alone
    assert len(stored("batch")) == 6 and stored("batch") == stored("alone")


def test_a_batch_never_truncates_a_value_too_long_for_its_column(entry: UsageEntry, group: GroupInsert) -> None:
    entries = [dataclasses.replace(entry, request_id=f"req-{i}") for i in range(7)]
    entries[4] = dataclasses.replace(entry, request_id="req-long", upstream_model="m" * 201)  # varchar(200)

    answers = concurrently(entries)

    assert isinstance(answers[4], DataError)
    assert [a for i, a in enumerate(answers) if i != 4] == [(Decimal("0.000013020"), True)] * 6
    assert not UsageRecord.objects.filter(upstream_model__startswith="mm").exists()


def test_when_the_database_is_away_every_queued_row_fails_at_once(
    entry: UsageEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a database that answers each statement with a lost connection, after a wait
    # (the pool's timeout, shortened)
    from django.db import OperationalError

    statements: list[int] = []

    def away(rows: list[list[Any]]) -> list[bool]:
        statements.append(len(rows))
        time.sleep(0.3)
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(ledger, "group_insert", GroupInsert(away))
    # When eight calls write at once
    started = time.monotonic()
    answers = concurrently([dataclasses.replace(entry, request_id=f"away-{i}") for i in range(8)])
    # Then each gets the connection error (its caller spools the row), after one wait, not
    # one per batch or per row
    assert all(isinstance(a, OperationalError) for a in answers), answers
    assert len(statements) <= 2, statements
    assert time.monotonic() - started < 2.0


def test_a_row_names_only_ledger_columns_and_every_column_is_written(entry: UsageEntry) -> None:
    # The row goes in as values by column name, not a model instance: every value lands,
    # the ones the call does not set take their defaults, and a wrong name is refused
    cost, inserted = usage_record_create(entry=entry)
    row = UsageRecord.objects.get(request_id=entry.request_id)
    assert inserted and row.cost == cost
    assert (row.input_tokens, row.output_tokens, row.latency_ms, row.upstream_model) == (
        entry.usage.input_tokens,
        entry.usage.output_tokens,
        5,
        "deepseek-v3",
    )
    assert row.invoice_id is None
    with pytest.raises(TypeError, match="no column"):
        ledger._insert_once({"reqest_id": "typo"})
