"""The ledger partitioned by month (Postgres): rows land in their month, partitions are made
ahead, the month close and the usage API read only their months, old months are archived
to a checked compressed file and dropped with their invoices kept, and restored from it."""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext

from billing import tasks
from billing.documents import invoice_csv
from billing.invoicing import InvoicingError, invoice_rows, invoice_void, month_close
from billing.ledger import usage_record_create
from billing.models import Invoice, LedgerArchive, Model, UsageRecord
from billing.partitions import (
    DEFAULT,
    Month,
    PartitionError,
    ledger_maintain,
    partition_archive,
    partition_create,
    partition_restore,
    partitions_list,
)
from billing.pricing import TokenUsage
from billing.selectors import usage_report
from tenants.models import Tenant
from tests.billing.factories import snapshot, usage_entry, usage_row

pytestmark = pytest.mark.django_db

SEP, OCT, NOV = Month(2026, 9), Month(2026, 10), Month(2026, 11)
CLOSED = datetime(2026, 11, 5, tzinfo=UTC)  # October is over and its invoice finalised
LATER = datetime(2026, 12, 15, tzinfo=UTC)  # with a retention of 1 month, October is past it
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def model() -> Model:
    return Model.objects.create(name="gpt-4.1")


@pytest.fixture
def archive_dir(settings: Any, tmp_path: Path) -> Path:
    settings.STORAGES = {
        **settings.STORAGES,
        "ledger_archive": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }
    return tmp_path


def where(request_id: str) -> str:
    """The partition a row is stored in."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM billing_usagerecord WHERE request_id = %s", [request_id])
        return str(cursor.fetchone()[0])


def exists(table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
        return bool(cursor.fetchone()[0])


def ensure(*months: Month) -> None:
    for month in months:
        if month not in partitions_list():
            partition_create(month=month)


def rows_in(tenant: Tenant, model: Model, month: Month, count: int) -> list[UsageRecord]:
    made = []
    for i in range(count):
        row = usage_row(
            tenant=tenant,
            model=model,
            at=month.start + timedelta(days=i % 28, hours=i % 24),
            price=snapshot("8", "32"),
            usage=TokenUsage(input_tokens=1_000 + 37 * i, output_tokens=11 * i),
        )
        row.save()
        made.append(row)
    return made


@pytest.fixture
def october(tenant: Tenant, model: Model) -> Iterator[tuple[Invoice, list[UsageRecord]]]:
    """October's rows in their partition, closed and finalised on 5 November."""
    ensure(OCT, NOV)
    rows = rows_in(tenant, model, OCT, 30)
    month_close(period=OCT.label, tenants=[tenant], finalize=True, now=CLOSED)
    yield Invoice.objects.get(tenant=tenant, period=OCT.label), rows


def test_a_row_lands_in_its_months_partition_and_a_month_without_one_in_the_default(
    tenant: Tenant, model: Model
) -> None:
    ensure(OCT)
    in_october = rows_in(tenant, model, OCT, 1)[0]
    ancient = usage_row(
        tenant=tenant,
        model=model,
        at=datetime(2019, 3, 1, tzinfo=UTC),
        price=snapshot("8", "32"),
        usage=TokenUsage(1, 1),
    )
    ancient.save()  # no partition for March 2019: the write still succeeds
    assert where(in_october.request_id) == OCT.table
    assert where(ancient.request_id) == DEFAULT


def test_the_beat_task_makes_months_ahead_and_moves_stray_rows_into_their_month(tenant: Tenant, model: Model) -> None:
    # given a row of a month eight months ahead, which has no partition yet
    far = Month.of(datetime.now(UTC)).plus(8)
    row = rows_in(tenant, model, far, 1)[0]
    assert where(row.request_id) == DEFAULT
    # when the hourly beat task runs
    tasks.ledger_partitions()
    # then this month and the three after it have partitions, and the stray row is in its month's
    now = Month.of(datetime.now(UTC))
    assert {now.plus(i) for i in range(4)} <= set(partitions_list())
    assert where(row.request_id) == far.table
    assert UsageRecord.objects.count() == 1
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {DEFAULT}")  # noqa: S608  # fixed name
        assert cursor.fetchone()[0] == 0


def test_a_call_is_billed_once_on_the_partitioned_ledger(tenant: Tenant, model: Model) -> None:
    ensure(OCT)
    entry = usage_entry(tenant_id=tenant.pk, model_id=model.pk, request_id="req-once", created_at=OCT.start)
    cost, inserted = usage_record_create(entry=entry)
    again, inserted_again = usage_record_create(entry=entry)  # the spool's replay, the sweeper's estimate
    assert (inserted, inserted_again) == (True, False)
    assert again == cost
    assert UsageRecord.objects.filter(request_id="req-once").count() == 1


PARTITION = re.compile(r"billing_usagerecord_(?:y\d{4}m\d{2}|default)")


def partitions_read(statement: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {statement}")
        return set(PARTITION.findall("\n".join(row[0] for row in cursor.fetchall())))


def test_the_month_close_and_the_usage_api_read_only_their_months_partition(
    tenant: Tenant, model: Model, api: Any
) -> None:
    # given rows in September, October and November, each month in its partition
    ensure(SEP, OCT, NOV)
    for month in (SEP, OCT, NOV):
        rows_in(tenant, model, month, 5)
    month_close(period=SEP.label, tenants=[tenant], finalize=True, now=datetime(2026, 10, 5, tzinfo=UTC))
    # when October is closed and finalised
    with CaptureQueriesContext(connection) as close:
        month_close(period=OCT.label, tenants=[tenant], finalize=True, now=CLOSED)
    # then every statement that reads or updates October's rows touches October's partition only
    # (the probe for late rows reads the unbilled-rows index of earlier months; it is not one)
    heavy = [
        q["sql"]
        for q in close.captured_queries
        if "billing_usagerecord" in q["sql"] and ("UPDATE" in q["sql"] or "SUM(" in q["sql"])
    ]
    assert heavy, "the close neither billed nor summed any rows"
    for statement in heavy:
        assert partitions_read(statement) == {OCT.table}, statement
    # and the usage API's sums for October read October's partition only
    with CaptureQueriesContext(connection) as usage:
        report = usage_report(tenant=tenant, start=date(2026, 10, 1), end=date(2026, 10, 31), group_by="day")
    assert report["totals"]["requests"] == 5
    sums = [q["sql"] for q in usage.captured_queries if "billing_usagerecord" in q["sql"]]
    assert sums
    for statement in sums:
        assert partitions_read(statement) == {OCT.table}, statement


def test_an_old_month_is_archived_to_a_compressed_file_and_dropped_with_its_invoice_kept(
    tenant: Tenant, october: tuple[Invoice, list[UsageRecord]], archive_dir: Path, settings: Any
) -> None:
    invoice, rows = october
    lines = list(invoice.lines.values_list("description", "amount_usd"))
    document = invoice_csv(invoice)
    # given a retention of one month, in mid-December
    settings.TOLLWAY = {**settings.TOLLWAY, "LEDGER_RETENTION_MONTHS": 1}
    # when the beat task's work runs
    result = ledger_maintain(now=LATER)
    # then October is archived and its partition is gone; November is kept
    assert result.archived == [OCT.label]
    assert not exists(OCT.table)
    assert exists(NOV.table)
    assert not UsageRecord.objects.filter(created_at__gte=OCT.start, created_at__lt=OCT.end).exists()
    # and the file holds every row, with the same cost to the nano-dollar
    archive = LedgerArchive.objects.get(month=OCT.label)
    cost = sum((r.cost for r in rows), Decimal(0))
    assert (archive.rows, archive.cost_usd) == (len(rows), cost)
    with gzip.open(archive_dir / archive.file, "rt", newline="") as text:
        archived = list(csv.DictReader(text))
    assert {r["request_id"] for r in archived} == {r.request_id for r in rows}
    assert sum(Decimal(r["cost"]) for r in archived) == cost
    assert {r["invoice_id"] for r in archived} == {str(invoice.pk)}
    # and the invoice that billed them is whole: status, lines, total, its CSV
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.OPEN
    assert list(invoice.lines.values_list("description", "amount_usd")) == lines
    assert invoice_csv(invoice) == document
    # and still immutable: migration 0009's trigger holds after the ledger's change
    with pytest.raises(DatabaseError, match="is final"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE billing_invoice SET total_usd = 0 WHERE id = %s", [invoice.pk])


def test_a_month_with_unbilled_rows_or_a_draft_invoice_is_not_archived(
    tenant: Tenant, model: Model, archive_dir: Path
) -> None:
    ensure(OCT)
    rows_in(tenant, model, OCT, 3)
    with pytest.raises(PartitionError, match="no invoice has billed yet: close that month"):
        partition_archive(month=OCT)
    month_close(period=OCT.label, tenants=[tenant], finalize=False, now=CLOSED)
    with pytest.raises(PartitionError, match="draft invoices: finalise them"):
        partition_archive(month=OCT)
    assert exists(OCT.table)
    assert UsageRecord.objects.count() == 3
    assert not LedgerArchive.objects.exists()
    assert not list(archive_dir.rglob("*.gz"))


def test_an_archived_month_is_restored_from_its_file(
    tenant: Tenant, october: tuple[Invoice, list[UsageRecord]], archive_dir: Path
) -> None:
    invoice, rows = october
    before = list(UsageRecord.objects.order_by("id").values())
    partition_archive(month=OCT)
    assert partition_restore(month=OCT) == len(rows)
    assert where(rows[0].request_id) == OCT.table
    assert list(UsageRecord.objects.order_by("id").values()) == before
    assert invoice_rows(invoice).aggregate(s=Sum("cost"))["s"] == sum((r.cost for r in rows), Decimal(0))
    assert LedgerArchive.objects.get(month=OCT.label).restored_at is not None
    with pytest.raises(PartitionError, match="no archive to restore"):
        partition_restore(month=OCT)


def test_a_reissue_of_an_archived_month_is_refused(
    tenant: Tenant, october: tuple[Invoice, list[UsageRecord]], archive_dir: Path
) -> None:
    invoice, _ = october
    partition_archive(month=OCT)
    with pytest.raises(InvoicingError, match=r"2026-10, which are archived.*credit note"):
        invoice_void(invoice=invoice, reason="wrong address", reissue=True, now=LATER)
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.OPEN  # nothing was voided


def test_manage_py_ledger(october: tuple[Invoice, list[UsageRecord]], archive_dir: Path) -> None:
    out = io.StringIO()
    call_command("ledger", "archive", OCT.label, stdout=out)
    assert re.search(
        r"archived 2026-10: 30 rows, \$[\d.]+, [\d,]+ bytes to ledger/billing_usagerecord_y2026m10", out.getvalue()
    )
    out = io.StringIO()
    call_command("ledger", "status", stdout=out)
    assert "archived 2026-10: 30 rows" in out.getvalue()
    assert "2026-10" not in out.getvalue().splitlines()[0]  # no longer a partition
    with pytest.raises(CommandError, match="'2026-13' is not a month: use YYYY-MM"):
        call_command("ledger", "restore", "2026-13")
    with pytest.raises(CommandError, match="needs a month"):
        call_command("ledger", "archive")


# --- the migration from today's table -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_migration_moves_existing_rows_into_monthly_partitions_and_back() -> None:
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    model = Model.objects.create(name="gpt-4.1")
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    before = ("billing", "0011_ledger_unique_by_request_and_time")
    try:
        # given the plain table of the previous release, holding rows of three months
        executor.migrate([before])
        with connection.cursor() as cursor:
            for i, at in enumerate(["2026-08-03", "2026-09-30 23:59:59.999999+00", "2026-10-01", "2026-10-20"]):
                cursor.execute(
                    "INSERT INTO billing_usagerecord (request_id, created_at, tenant_id, model_id, provider, "
                    "upstream_model, input_tokens, output_tokens, input_price_per_mtok, output_price_per_mtok, cost, "
                    "usage_estimated, streamed, outcome, latency_ms) "
                    "VALUES (%s, %s, %s, %s, 'mock', 'm', 10, 20, 8, 32, %s, false, false, 'completed', 5)",
                    [f"old-{i}", at, tenant.pk, model.pk, Decimal("0.000720000") * (i + 1)],
                )
            cursor.execute("SELECT request_id, id, cost FROM billing_usagerecord")
            old = {request_id: (pk, cost) for request_id, pk, cost in cursor.fetchall()}
        # when this release migrates
        executor = MigrationExecutor(connection)
        executor.migrate(leaves)
        # then every row is in its month's partition, with its id and cost
        assert [where(f"old-{i}") for i in range(4)] == [
            "billing_usagerecord_y2026m08",
            "billing_usagerecord_y2026m09",
            "billing_usagerecord_y2026m10",
            "billing_usagerecord_y2026m10",
        ]
        assert {r.request_id: (r.pk, r.cost) for r in UsageRecord.objects.all()} == old
        # and a repeated write of a row is still refused, and new rows take new ids
        entry = usage_entry(
            tenant_id=tenant.pk, model_id=model.pk, request_id="old-2", created_at=datetime(2026, 10, 1, tzinfo=UTC)
        )
        assert usage_record_create(entry=entry)[1] is False
        fresh = usage_entry(tenant_id=tenant.pk, model_id=model.pk, request_id="new-1", created_at=datetime.now(UTC))
        assert usage_record_create(entry=fresh)[1] is True
        assert UsageRecord.objects.get(request_id="new-1").pk > max(pk for pk, _ in old.values())
        # and migrating back gives the plain table with every row
        executor = MigrationExecutor(connection)
        executor.migrate([before])
        with connection.cursor() as cursor:
            cursor.execute("SELECT relkind FROM pg_class WHERE oid = 'billing_usagerecord'::regclass")
            assert cursor.fetchone()[0] == "r"
            cursor.execute("SELECT count(*) FROM billing_usagerecord")
            assert cursor.fetchone()[0] == 5
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(leaves)
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = 'billing_usagerecord'::regclass")
        assert cursor.fetchone()[0] == "p"


# --- SQLite: the embedded default keeps a plain table ---------------------------------------


def test_sqlite_keeps_a_plain_ledger_that_bills_a_call_once(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(TOLLWAY_VAR_DIR=str(tmp_path), DEBUG="1", SECRET_KEY="tests-only")

    def manage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    manage("migrate", "--noinput", "-v0")
    assert "plain table here (SQLite" in manage("ledger", "status")
    assert "plain table here (SQLite" in manage("ledger", "maintain")
    script = (
        "from datetime import UTC, datetime\n"
        "from billing.ledger import usage_record_create\n"
        "from billing.models import Model, UsageRecord\n"
        "from tenants.models import Tenant\n"
        "from tests.billing.factories import usage_entry\n"
        "t = Tenant.objects.create(slug='acme', name='Acme'); m = Model.objects.create(name='gpt-4.1')\n"
        "at = datetime(2026, 10, 1, tzinfo=UTC)\n"
        "e = usage_entry(tenant_id=t.pk, model_id=m.pk, request_id='r1', created_at=at)\n"
        "print(usage_record_create(entry=e)[1], usage_record_create(entry=e)[1], UsageRecord.objects.count())\n"
    )
    assert manage("shell", "--no-imports", "-c", script).split() == ["True", "False", "1"]
    assert (tmp_path / "tollway.sqlite3").exists()
