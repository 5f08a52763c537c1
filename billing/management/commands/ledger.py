"""``manage.py ledger status|maintain|archive YYYY-MM|restore YYYY-MM``: the ledger's monthly
partitions by hand (billing.partitions). ``maintain`` is what the hourly beat task does."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.partitions import (
    Month,
    PartitionError,
    describe,
    ledger_maintain,
    partition_archive,
    partition_restore,
    partitioned,
)


class Command(BaseCommand):
    help = "The usage ledger's monthly partitions: status, maintain (make ahead, archive), archive or restore a month."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["status", "maintain", "archive", "restore"])
        parser.add_argument("month", nargs="?", help="YYYY-MM (a UTC month), for archive and restore")

    def handle(self, *args: Any, action: str, month: str | None, **options: Any) -> None:
        if not partitioned():
            self.stdout.write("The ledger is a plain table here (SQLite, the embedded default): it has no partitions.")
            return
        try:
            if action == "status":
                self._status()
            elif action == "maintain":
                result = ledger_maintain()
                self.stdout.write(f"made: {', '.join(result.made) or 'none'}")
                self.stdout.write(f"archived: {', '.join(result.archived) or 'none'}")
                for refused in result.refused:
                    self.stdout.write(f"not archived: {refused.month}: {refused.reason}")
            else:
                if month is None:
                    raise CommandError(f"ledger {action} needs a month: YYYY-MM, e.g. 2026-01.")
                if action == "archive":
                    archive = partition_archive(month=Month.parse(month))
                    self.stdout.write(
                        f"archived {archive.month}: {archive.rows:,} rows, ${archive.cost_usd}, "
                        f"{archive.compressed_bytes:,} bytes to {archive.file}; its partition is dropped"
                    )
                else:
                    rows = partition_restore(month=Month.parse(month))
                    self.stdout.write(f"restored {month}: {rows:,} rows")
        except PartitionError as exc:
            raise CommandError(str(exc)) from None

    def _status(self) -> None:
        state = describe()
        self.stdout.write(f"partitions: {', '.join(state['partitions'])}")
        self.stdout.write(f"rows in the default partition: {state['default_rows']}")
        for archive in state["archived"]:
            restored = f", restored {archive['restored_at']:%Y-%m-%d}" if archive["restored_at"] else ""
            self.stdout.write(
                f"archived {archive['month']}: {archive['rows']:,} rows, ${archive['cost_usd']} in {archive['file']}"
                f"{restored}"
            )
