from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.admission import WorkerAlive, reap_worker
from billing.spool import worker_id


class Command(BaseCommand):
    help = (
        "Bill at once the calls of a dead gunicorn worker: replay the ledger rows it spooled, then bill its "
        "reservations still held from their estimate. gunicorn's child_exit hook runs it for every worker "
        "that exits; run it by hand for a worker of a pod or machine that is gone."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("worker", nargs="?", help="The worker id, <host>-<pid> (its spool file's name)")
        who.add_argument("--pid", type=int, help="A worker of this host, by its process id")

    def handle(self, *args: Any, **options: Any) -> None:
        worker = worker_id(options["pid"]) if options["pid"] is not None else options["worker"]
        try:
            replayed, billed = reap_worker(worker)
        except WorkerAlive as exc:
            raise CommandError(f"{exc}; only a dead worker's calls can be billed.") from None
        self.stdout.write(f"worker {worker}: {replayed} spooled rows written, {billed} reservations billed")
