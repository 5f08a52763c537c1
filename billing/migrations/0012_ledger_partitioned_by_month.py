"""The usage ledger becomes a table partitioned by month (Postgres declarative range
partitioning on created_at, UTC months), and the archive of dropped months is recorded.

Postgres: the rows are copied into a new partitioned table, one partition per month from
the oldest row to three months ahead, plus a default partition that catches a row no
month partition holds (billing.partitions moves such rows once their month is made). Ids,
columns, defaults, checks, indexes and foreign keys are carried over as the catalog has
them, so columns or indexes added since the first release come along. Primary key
(id, created_at) and unique (request_id, created_at): a partitioned table's unique keys
must hold the partition key (0010 says why that is enough for the request id). Writes to
the ledger wait while the rows are copied (docs/operators/ledger-partitions.md,
"Upgrading", has the measured rate).

SQLite (the embedded default) keeps a plain table; only the old request-id-only key goes.
"""

from datetime import UTC, datetime

from django.db import migrations, models
from django.utils import timezone

TABLE = "billing_usagerecord"
NEW = "billing_usagerecord_partitioned"
PLAIN = "billing_usagerecord_plain"
AHEAD = 3  # months made ahead here; then the beat task keeps TOLLWAY["LEDGER_PARTITIONS_AHEAD"]
OLD_KEY = models.UniqueConstraint(fields=["request_id"], name="usage_request_id_unique")


def _month(value: datetime) -> tuple[int, int]:
    value = value.astimezone(UTC)
    return value.year, value.month


def _next(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _bound(year: int, month: int) -> str:
    return f"'{year:04d}-{month:02d}-01 00:00:00+00'"


def _catalog(cursor, table: str) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """The table's index definitions (those behind no constraint), its foreign keys as
    ALTER TABLE clauses, and its unique constraints (name, definition)."""
    cursor.execute(
        """SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
            WHERE i.indrelid = %s::regclass
              AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)""",
        [table],
    )
    indexes = [row[0].replace(" ON ONLY ", " ON ") for row in cursor.fetchall()]
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'",
        [table],
    )
    fks = [f'ADD CONSTRAINT "{name}" {definition}' for name, definition in cursor.fetchall()]
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'u'",
        [table],
    )
    return indexes, fks, cursor.fetchall()


def _finish(cursor, *, indexes: list[str], fks: list[str], keys: list[str]) -> None:
    for key in keys:
        cursor.execute(f"ALTER TABLE {TABLE} {key}")
    for definition in indexes:
        cursor.execute(definition)
    for fk in fks:
        cursor.execute(f"ALTER TABLE {TABLE} {fk}")
    cursor.execute(f"ANALYZE {TABLE}")


def to_partitioned(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_constraint(apps.get_model("billing", "UsageRecord"), OLD_KEY)
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
        # Writers wait from here; readers go on until the old table is dropped.
        cursor.execute(f"LOCK TABLE {TABLE} IN EXCLUSIVE MODE")
        indexes, fks, uniques = _catalog(cursor, TABLE)
        for name, definition in uniques:
            if name != OLD_KEY.name and "created_at" not in definition:
                raise RuntimeError(f"{TABLE}: unique constraint {name} {definition} lacks created_at, the partition key")
        keys = [f'ADD CONSTRAINT "{name}" {d}' for name, d in uniques if name != OLD_KEY.name]
        cursor.execute(f"SELECT min(created_at), max(id) FROM {TABLE}")
        oldest, max_id = cursor.fetchone()
        cursor.execute(
            f"CREATE TABLE {NEW} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (created_at)"
        )
        # The id's default comes back below, from a sequence of the new table's own.
        cursor.execute(f"ALTER TABLE {NEW} ALTER COLUMN id DROP DEFAULT")
        now = timezone.now()
        year, month = _month(min(oldest, now) if oldest is not None else now)
        last = _month(now)
        for _ in range(AHEAD):
            last = _next(*last)
        while (year, month) <= last:
            after = _next(year, month)
            cursor.execute(
                f"CREATE TABLE {TABLE}_y{year:04d}m{month:02d} PARTITION OF {NEW} "
                f"FOR VALUES FROM ({_bound(year, month)}) TO ({_bound(*after)})"
            )
            year, month = after
        cursor.execute(f"CREATE TABLE {TABLE}_default PARTITION OF {NEW} DEFAULT")
        cursor.execute(f"INSERT INTO {NEW} SELECT * FROM {TABLE}")  # noqa: S608  # fixed names
        cursor.execute(f"DROP TABLE {TABLE}")
        cursor.execute(f"ALTER TABLE {NEW} RENAME TO {TABLE}")
        # Ids go on from the same number; a sequence, as a partitioned table takes no
        # identity column before Postgres 17.
        cursor.execute(f"CREATE SEQUENCE {TABLE}_id_seq AS bigint OWNED BY {TABLE}.id")
        cursor.execute(f"SELECT setval('{TABLE}_id_seq', %s, %s)", [max_id or 1, max_id is not None])
        cursor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id SET DEFAULT nextval('{TABLE}_id_seq')")
        keys.insert(0, f'ADD CONSTRAINT "{TABLE}_pkey" PRIMARY KEY (id, created_at)')
        _finish(cursor, indexes=indexes, fks=fks, keys=keys)


def to_plain(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_constraint(apps.get_model("billing", "UsageRecord"), OLD_KEY)
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
        cursor.execute(f"LOCK TABLE {TABLE} IN EXCLUSIVE MODE")
        indexes, fks, uniques = _catalog(cursor, TABLE)
        keys = [f'ADD CONSTRAINT "{TABLE}_pkey" PRIMARY KEY (id)', f'ADD CONSTRAINT "{OLD_KEY.name}" UNIQUE (request_id)']
        keys += [f'ADD CONSTRAINT "{name}" {d}' for name, d in uniques]
        cursor.execute(f"CREATE TABLE {PLAIN} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cursor.execute(f"INSERT INTO {PLAIN} SELECT * FROM {TABLE}")  # noqa: S608  # fixed names
        cursor.execute(f"ALTER SEQUENCE {TABLE}_id_seq OWNED BY {PLAIN}.id")
        cursor.execute(f"DROP TABLE {TABLE}")  # and every partition
        cursor.execute(f"ALTER TABLE {PLAIN} RENAME TO {TABLE}")
        _finish(cursor, indexes=indexes, fks=fks, keys=keys)


class Migration(migrations.Migration):
    dependencies = [("billing", "0011_ledger_unique_by_request_and_time")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.RemoveConstraint(model_name="usagerecord", name=OLD_KEY.name)],
            database_operations=[migrations.RunPython(to_partitioned, to_plain)],
        ),
        migrations.CreateModel(
            name="LedgerArchive",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("month", models.CharField(help_text="YYYY-MM, a UTC month", max_length=7)),
                (
                    "file",
                    models.CharField(help_text="The gzip-compressed CSV's name in the archive storage", max_length=500),
                ),
                ("rows", models.BigIntegerField()),
                (
                    "cost_usd",
                    models.DecimalField(decimal_places=9, help_text="The rows' cost: a check on the file", max_digits=24),
                ),
                ("compressed_bytes", models.BigIntegerField()),
                ("sha256", models.CharField(help_text="Of the compressed file", max_length=64)),
                ("archived_at", models.DateTimeField(default=timezone.now)),
                ("restored_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={"ordering": ["month"]},
        ),
    ]
