"""The ledger's monthly partitions (Postgres): made ahead, archived, dropped, restored.

On Postgres ``billing_usagerecord`` is partitioned by range of ``created_at``, one
partition per UTC month (``billing_usagerecord_y2026m11``), plus a default partition that
catches a row no month partition holds, so a write never fails for want of a partition.
Migration 0011 made the table; from then on :func:`ledger_maintain` (the beat task
``billing.ledger_partitions``, hourly) keeps ``TOLLWAY["LEDGER_PARTITIONS_AHEAD"]`` months
made ahead, moves any rows the default partition caught into their month, and, when
``TOLLWAY["LEDGER_RETENTION_MONTHS"]`` is set, archives each month older than that to the
``ledger_archive`` storage (a gzip-compressed CSV, read back and checked before anything
is dropped), then detaches and drops its partition. The invoices that billed those rows
keep their lines and totals; :func:`partition_restore` brings a month back from its file.

Reads that name their period (the month close, the usage API) prune to their partitions:
Postgres skips every partition outside the ``created_at`` bounds in the WHERE clause.

SQLite (the embedded default) keeps a plain table: everything here is then a no-op.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import IO, Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.db import connection, transaction
from django.utils import timezone

from billing.models import Invoice, LedgerArchive, UsageRecord

log = logging.getLogger(__name__)

TABLE = UsageRecord._meta.db_table
DEFAULT = f"{TABLE}_default"
_NAME = re.compile(rf"^{TABLE}_y(\d{{4}})m(\d{{2}})$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


class PartitionError(Exception):
    """A partition action that cannot be done; the message says why and what to do."""


@dataclass(frozen=True, order=True)
class Month:
    """A UTC calendar month: the unit of partitioning."""

    year: int
    month: int

    @classmethod
    def of(cls, value: datetime) -> Month:
        value = value.astimezone(UTC)
        return cls(value.year, value.month)

    @classmethod
    def parse(cls, label: str) -> Month:
        found = _MONTH.match(label or "")
        if not found or not 1 <= int(found.group(2)) <= 12:
            raise PartitionError(f"'{label}' is not a month: use YYYY-MM, e.g. 2026-10.")
        return cls(int(found.group(1)), int(found.group(2)))

    def plus(self, months: int) -> Month:
        index = self.year * 12 + self.month - 1 + months
        return Month(index // 12, index % 12 + 1)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.plus(1).start

    @property
    def table(self) -> str:
        return f"{TABLE}_y{self.year:04d}m{self.month:02d}"

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def partitioned() -> bool:
    """Whether the ledger is a partitioned table here (Postgres after migration 0011)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
        row = cursor.fetchone()
    return row is not None and row[0] == "p"


def partitions_list() -> list[Month]:
    """The month partitions attached now, oldest first (the default partition is not one)."""
    if not partitioned():
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = %s::regclass",
            [TABLE],
        )
        names = [name for (name,) in cursor.fetchall()]
    return sorted(Month(int(m.group(1)), int(m.group(2))) for m in map(_NAME.match, names) if m)


def default_rows() -> int:
    """Rows in the default partition: rows of months that had no partition when written."""
    if not partitioned():
        return 0
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {DEFAULT}")  # noqa: S608  # fixed name
        return int(cursor.fetchone()[0])


def partition_create(*, month: Month) -> int:
    """Make ``month``'s partition, moving into it any of its rows the default partition
    holds; returns the rows moved. The table is made on its own, filled, then attached,
    which locks the ledger's writers out only for the attach's check of the default
    partition (rows of this month are no longer there by then)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no deferred check may hold the default partition
        cursor.execute(f"CREATE TABLE {month.table} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cursor.execute(
            f"WITH moved AS (DELETE FROM {DEFAULT} WHERE created_at >= %s AND created_at < %s RETURNING *) "  # noqa: S608
            f"INSERT INTO {month.table} SELECT * FROM moved",
            [month.start, month.end],
        )
        moved = cursor.rowcount
        cursor.execute(
            f"ALTER TABLE {TABLE} ATTACH PARTITION {month.table} FOR VALUES FROM (%s) TO (%s)",
            [month.start, month.end],
        )
    if moved:
        log.warning("ledger: %s rows of %s were in the default partition; moved to %s", moved, month.label, month.table)
    return moved


def partitions_ensure(*, now: datetime | None = None, ahead: int | None = None) -> list[Month]:
    """Make the partitions of this month and the next ``ahead`` months that are missing,
    and of any month the default partition holds rows of (unless archived); returns them."""
    if not partitioned():
        return []
    ahead = settings.TOLLWAY["LEDGER_PARTITIONS_AHEAD"] if ahead is None else ahead
    current = Month.of(now or timezone.now())
    wanted = {current.plus(i) for i in range(ahead + 1)}
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC') FROM {DEFAULT}")  # noqa: S608
        stray = {Month(day.year, day.month) for (day,) in cursor.fetchall()}
    archived = {
        Month.parse(label)
        for label in LedgerArchive.objects.filter(restored_at__isnull=True).values_list("month", flat=True)
    }
    # A late row of an archived month stays in the default partition: making its month
    # again would hide that month's archive. The month close still finds it there.
    have = set(partitions_list())
    made = sorted((wanted | (stray - archived)) - have)
    for month in made:
        partition_create(month=month)
    return made


# --- archiving ------------------------------------------------------------------------------


def archive_storage() -> Storage:
    """The ``ledger_archive`` storage (settings.STORAGES): a folder by default, or any
    django-storages backend (S3 and the like)."""
    return storages["ledger_archive"]


def _copy_out(month: Month, out: gzip.GzipFile) -> None:
    with (
        connection.cursor() as cursor,
        cursor.copy(
            f"COPY (SELECT * FROM {month.table} ORDER BY id) TO STDOUT (FORMAT csv, HEADER)"  # noqa: S608  # fixed name
        ) as copy,
    ):
        for chunk in copy:
            out.write(chunk)


class _Hashing(io.RawIOBase):
    """A file read through, hashed on the way (so the check needs one pass, no copy in memory)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.digest = raw, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)


def _read_back(storage: Storage, name: str) -> tuple[int, Decimal, str]:
    """Rows, total cost and sha256 of an archive file as the storage now holds it."""
    rows, cost = 0, Decimal(0)
    with storage.open(name, "rb") as raw:
        hashing = _Hashing(raw)
        with gzip.open(io.BufferedReader(hashing), "rt", newline="") as text:
            for row in csv.DictReader(text):
                rows += 1
                cost += Decimal(row["cost"])
        for _ in iter(lambda: hashing.read(1 << 20), b""):  # any bytes past the gzip stream count too
            pass
    return rows, cost, hashing.digest.hexdigest()


@dataclass
class ArchiveRefused:
    month: str
    reason: str


def partition_archive(*, month: Month) -> LedgerArchive:
    """Write ``month``'s rows to the archive storage as ``ledger/<partition>.csv.gz``, read
    the file back and check its row count and total cost against the partition, then
    detach and drop the partition. Refuses a month with rows no invoice has billed yet, or
    billed by an invoice that is still a draft (its lines may still be rebuilt from them)."""
    if not partitioned():
        raise PartitionError("The ledger is not partitioned here (SQLite keeps a plain table): nothing to archive.")
    if month not in partitions_list():
        raise PartitionError(f"There is no partition for {month.label}: nothing to archive.")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), coalesce(sum(cost), 0), count(*) FILTER (WHERE invoice_id IS NULL) FROM {month.table}"  # noqa: S608
        )
        rows, cost, unbilled = cursor.fetchone()
        cursor.execute(
            f"SELECT count(DISTINCT u.invoice_id) FROM {month.table} u JOIN {Invoice._meta.db_table} i "  # noqa: S608
            "ON i.id = u.invoice_id WHERE i.status = %s",
            [Invoice.Status.DRAFT],
        )
        drafts = cursor.fetchone()[0]
    if unbilled:
        raise PartitionError(
            f"{month.label} has {unbilled} rows no invoice has billed yet: close that month "
            "(manage.py closemonth) before archiving it."
        )
    if drafts:
        raise PartitionError(f"{month.label} is billed by {drafts} draft invoices: finalise them before archiving it.")
    storage = archive_storage()
    digest = hashlib.sha256()
    with tempfile.TemporaryFile() as tmp:
        with gzip.GzipFile(fileobj=tmp, mode="wb", mtime=0) as gz:
            _copy_out(month, gz)
        size = tmp.tell()
        tmp.seek(0)
        for block in iter(lambda: tmp.read(1 << 20), b""):
            digest.update(block)
        tmp.seek(0)
        name = storage.save(f"ledger/{month.table}.csv.gz", File(tmp))
    written_rows, written_cost, sha = _read_back(storage, name)
    if (written_rows, written_cost, sha) != (rows, cost, digest.hexdigest()):
        storage.delete(name)
        raise PartitionError(
            f"The archive of {month.label} did not read back as written ({written_rows} rows, ${written_cost}; "
            f"expected {rows}, ${cost}): nothing was dropped. Check the archive storage and run it again."
        )
    with transaction.atomic(), connection.cursor() as cursor:
        archive = LedgerArchive.objects.create(
            month=month.label, file=name, rows=rows, cost_usd=cost, compressed_bytes=size, sha256=sha
        )
        # A caller's transaction may hold deferred foreign-key checks on these rows; a
        # table with pending checks cannot be dropped, so they run now.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {month.table}")
        cursor.execute(f"DROP TABLE {month.table}")
    log.info("ledger: archived %s (%s rows, $%s) to %s and dropped its partition", month.label, rows, cost, name)
    return archive


def partition_restore(*, month: Month) -> int:
    """Bring an archived month back from its file into a partition of its own; returns the
    rows loaded. Columns added since the archive take their defaults."""
    archive = LedgerArchive.objects.filter(month=month.label, restored_at__isnull=True).order_by("-archived_at").first()
    if archive is None:
        raise PartitionError(f"{month.label} has no archive to restore (manage.py ledger status lists them).")
    if month in partitions_list():
        raise PartitionError(f"{month.label} already has a partition: it was restored, or never dropped.")
    storage = archive_storage()
    with storage.open(archive.file, "rb") as raw, gzip.open(raw, "rb") as data:
        columns = next(csv.reader([data.readline().decode()]))
        known = {f.column for f in UsageRecord._meta.concrete_fields}
        if not set(columns) <= known:
            raise PartitionError(f"{archive.file} has columns the ledger no longer has: {set(columns) - known}.")
        quoted = ", ".join(connection.ops.quote_name(c) for c in columns)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"CREATE TABLE {month.table} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            with cursor.copy(f"COPY {month.table} ({quoted}) FROM STDIN (FORMAT csv)") as copy:
                for block in iter(lambda: data.read(1 << 20), b""):
                    copy.write(block)
            cursor.execute(f"SELECT count(*) FROM {month.table}")  # noqa: S608  # fixed name
            rows = int(cursor.fetchone()[0])
            if rows != archive.rows:
                raise PartitionError(f"{archive.file} holds {rows} rows, the archive record says {archive.rows}.")
            cursor.execute(
                f"ALTER TABLE {TABLE} ATTACH PARTITION {month.table} FOR VALUES FROM (%s) TO (%s)",
                [month.start, month.end],
            )
            archive.restored_at = timezone.now()
            archive.save(update_fields=["restored_at"])
    return rows


def archived_months() -> set[str]:
    """Months whose rows are archived and not restored: their ledger rows are not here."""
    return set(LedgerArchive.objects.filter(restored_at__isnull=True).values_list("month", flat=True))


def months_between(start: datetime, end: datetime) -> list[Month]:
    """The UTC months that ``[start, end)`` touches."""
    months, month, last = [], Month.of(start), Month.of(end - timedelta(microseconds=1))
    while month <= last:
        months.append(month)
        month = month.plus(1)
    return months


@dataclass
class MaintainResult:
    made: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    refused: list[ArchiveRefused] = field(default_factory=list)


def ledger_maintain(*, now: datetime | None = None) -> MaintainResult:
    """The beat task's work: partitions made ahead (and for stray rows), then each month
    past the retention setting archived and dropped. Safe to re-run; a month that cannot
    be archived yet is left, logged, and tried again next time."""
    now = now or timezone.now()
    result = MaintainResult(made=[m.label for m in partitions_ensure(now=now)])
    keep = settings.TOLLWAY["LEDGER_RETENTION_MONTHS"]
    if not keep or not partitioned():
        return result
    oldest_kept = Month.of(now).plus(-keep)
    for month in partitions_list():
        if month >= oldest_kept:
            break
        try:
            partition_archive(month=month)
            result.archived.append(month.label)
        except PartitionError as exc:
            log.warning("ledger: %s not archived: %s", month.label, exc)
            result.refused.append(ArchiveRefused(month.label, str(exc)))
    return result


def describe() -> dict[str, Any]:
    """What ``manage.py ledger status`` prints."""
    months = partitions_list()
    return {
        "partitioned": partitioned(),
        "partitions": [m.label for m in months],
        "default_rows": default_rows(),
        "archived": list(
            LedgerArchive.objects.values("month", "file", "rows", "cost_usd", "archived_at", "restored_at")
        ),
    }
