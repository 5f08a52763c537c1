"""Billing benchmark (P4): a ledger of 10,000,000 rows over 10 monthly partitions and 100
tenants, then the month close and the usage API for the last month.

Run it against a database of its own (it refuses one that already holds tenants):

    createdb -h 127.0.0.1 -U postgres tollway_bench
    DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/tollway_bench \\
    REDIS_URL=redis://127.0.0.1:6379/13 .venv/bin/python bench/billing_bench.py [--rows 10000000]

The ledger holds ``--months`` months (default 10) up to last month, the same number of
rows in each. The months before last are billed already, as they would be in service:
each tenant has a finalised invoice for each of them, and their rows point at it. The
rows go in with ``COPY`` (generated here, streamed to Postgres while the next batch is
made), with progress printed as they load; then VACUUM ANALYZE and a CHECKPOINT (as a
month of autovacuum would have done). Then it times:

1. the month close of last month with finalisation (``month_close``: the same service as
   ``manage.py closemonth --finalize``), and checks every invoice total against the ledger;
2. ``GET /v1/usage`` for last month, grouped by day, model or key, for random tenants
   (p50 / p95 / max over ``--requests`` calls, in process through Django's test client),
   summed live from the ledger (no rollups), so each call reads the month's partition.

``--rows 100000`` is the CI-size run.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "1")

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Sum  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402
from psycopg.copy import QueuedLibpqWriter  # noqa: E402

from billing.invoicing import Period, invoice_rows, month_close, period_of  # noqa: E402
from billing.models import Invoice, Model, Price, UsageRecord  # noqa: E402
from billing.partitions import Month, partitions_list  # noqa: E402
from tenants import services  # noqa: E402
from tenants.models import Tenant  # noqa: E402

MODELS: dict[str, tuple[str, str]] = {
    "gpt-4.1": ("8", "32"),
    "gpt-4.1-mini": ("2", "8"),
    "claude-sonnet-4": ("15", "75"),
    "gemini-2.5-flash": ("2.5", "10"),
    "deepseek-v3": ("0.42", "1.68"),
}


COLUMNS = (
    "request_id, created_at, tenant_id, api_key_id, model_id, provider, upstream_model, input_tokens, output_tokens, "
    "cached_input_tokens, cache_write_tokens, input_price_per_mtok, output_price_per_mtok, "
    "cached_input_price_per_mtok, cache_write_price_per_mtok, request_fee, markup_percent, cost, upstream_cost, "
    "usage_estimated, streamed, outcome, "
    "latency_ms, attempts, requested_model, cache_hit, invoice_id"
)
BATCH = 50_000
POOL = 1 << 16
MASK = POOL - 1


def _nanos(dollars_per_mtok: str) -> int:
    """A price per million tokens as nano-dollars per token (every bench price is a whole number of them)."""
    value = Decimal(dollars_per_mtok) * 1000
    assert value == value.to_integral_value()
    return int(value)


def _usd(nanos: int) -> str:
    return f"{nanos // 1_000_000_000}.{nanos % 1_000_000_000:09d}"


def seed(
    rows: int, tenants: int, months: list[Period], progress: Callable[[int], None]
) -> tuple[list[Tenant], list[str]]:
    """Tenants, keys, models, the finalised invoices of the months before the last, and the
    ledger rows by COPY. The cost is computed exactly in nano-dollars (9 places), 20 % markup."""
    start = months[0].start
    models = []
    for name, (pin, pout) in MODELS.items():
        model = Model.objects.create(name=name)
        Price.objects.create(
            model=model, input_per_mtok=Decimal(pin), output_per_mtok=Decimal(pout), effective_from=start
        )
        models.append((model.pk, pin, pout, _nanos(pin), _nanos(pout)))
    made, tokens, keys = [], [], []
    for i in range(tenants):
        tenant = services.tenant_create(slug=f"bench-{i:03d}", name=f"Bench tenant {i}")
        Tenant.objects.filter(pk=tenant.pk).update(created_at=start - timedelta(days=1))
        made.append(tenant)
        pair = []
        for k in range(2):
            created = services.api_key_create(tenant=tenant, name=f"k{k}", scopes=["inference", "billing"])
            pair.append(str(created.api_key.pk))
            if k == 0:
                tokens.append(created.plaintext)
        keys.append(pair)
    # The months before the last were closed long ago: one finalised invoice per tenant and
    # month (inserted as they stand; their lines do not matter here), which their rows name.
    billed: dict[tuple[int, int], int] = {}
    for m, month in enumerate(months[:-1]):
        invoices = Invoice.objects.bulk_create(
            Invoice(
                tenant=tenant,
                period=month.label,
                period_start=month.start,
                period_end=month.end,
                billed_from=month.start,
                grace_until=month.end,
                status=Invoice.Status.OPEN,
                number=f"TW-BENCH-{month.label}-{t:04d}",
                finalized_at=month.end,
            )
            for t, tenant in enumerate(made)
        )
        for t, invoice in enumerate(invoices):
            billed[(m, t)] = invoice.pk
    # Rows are put together from pools made once: random instants (per month), and random
    # token counts with their exact costs (per model). Python's work per row is then one
    # short string, and Postgres, not this loop, sets the pace of the load.
    rng = random.Random(4)
    usage_pool = []
    for model_id, pin, pout, in_nanos, out_nanos in models:
        pool = []
        for i in range(POOL):
            input_tokens, output_tokens = 1 + rng.randrange(8000), rng.randrange(2000)
            upstream = input_tokens * in_nanos + output_tokens * out_nanos
            pool.append(
                f"{model_id}\tmock\tmock-model\t{input_tokens}\t{output_tokens}\t"
                f"{input_tokens // 2 if i % 4 == 0 else 0}\t0\t{pin}\t{pout}\t{pin}\t{pin}\t0\t20\t"
                f"{_usd((upstream * 12 + 5) // 10)}\t{_usd(upstream)}\tf\tf\tcompleted\t100\t1\t\tf\t"
            )
        usage_pool.append(pool)
    who = [(f"{t.pk}\t{pair[0]}\t", f"{t.pk}\t{pair[1]}\t") for t, pair in zip(made, keys, strict=True)]
    per_month = rows // len(months)
    done = 0
    progress(0)
    with connection.cursor() as cursor:
        for m, month in enumerate(months):
            count = per_month if m < len(months) - 1 else rows - per_month * (len(months) - 1)
            seconds = (month.end - month.start).total_seconds()
            times = [(month.start + timedelta(seconds=rng.random() * seconds)).isoformat() for _ in range(POOL)]
            bills = [str(billed[(m, t)]) if (m, t) in billed else "\\N" for t in range(tenants)]
            # Each month is loaded as partitions are restored (billing.partitions): COPY into
            # a table of its own, with no index or foreign key to maintain row by row, then
            # ATTACH, which builds its indexes and checks its foreign keys in bulk.
            table = Month.of(month.start).table
            cursor.execute(f"CREATE TABLE {table} (LIKE billing_usagerecord INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            writer = QueuedLibpqWriter(cursor.cursor)  # a thread sends each batch while the next is made
            with cursor.cursor.copy(f"COPY {table} ({COLUMNS}) FROM STDIN", writer=writer) as copy:
                for first in range(done, done + count, BATCH):
                    last = min(first + BATCH, done + count)
                    copy.write(
                        "".join(
                            f"bench-{n}\t{times[n & MASK]}\t{who[n % tenants][n % 3 == 0]}"
                            f"{usage_pool[(n // tenants) % len(models)][(n * 7919) & MASK]}{bills[n % tenants]}\n"
                            for n in range(first, last)
                        )
                    )
                    progress(last)
            cursor.execute(
                f"ALTER TABLE billing_usagerecord ATTACH PARTITION {table} FOR VALUES FROM (%s) TO (%s)",
                [month.start, month.end],
            )
            done += count
    # A month's rows were written over a month: autovacuum and checkpoints have long seen
    # them. Do the same, so the close is not timed setting hint bits on brand-new pages.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE billing_usagerecord")
        cursor.execute("CHECKPOINT")
    return made, tokens


def _progress(total: int) -> Callable[[int], None]:
    started = [0.0]
    shown = [0]

    def show(done: int) -> None:
        if not started[0]:  # the clock starts with the first batch of rows
            started[0] = time.monotonic()
            return
        if done - shown[0] < max(total // 20, 1) and done < total:
            return
        shown[0] = done
        took = time.monotonic() - started[0]
        print(f"  loaded {done:,} / {total:,} rows ({done / max(took, 1e-9):,.0f} rows/s)", flush=True)

    return show


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--months", type=int, default=10, help="months of ledger, up to last month")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2, help="threads for the month close (closemonth --workers)")
    parser.add_argument(
        "--plain", action="store_true", help="close on the unpartitioned table of the previous release (a comparison)"
    )
    parser.add_argument(
        "--migration", action="store_true", help="then time migration 0012 both ways on the ledger (the upgrade)"
    )
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("Run it on Postgres: set DATABASE_URL.")
    call_command("migrate", verbosity=0)
    if Tenant.objects.exists():
        sys.exit("This database already holds tenants: give the benchmark an empty database of its own.")

    now = timezone.now()
    last = Month.of(now).plus(-1)
    months = [period_of(tz_name="UTC", label=last.plus(i - args.months + 1).label) for i in range(args.months)]
    month = months[-1]
    t0 = time.monotonic()
    _, tokens = seed(args.rows, args.tenants, months, _progress(args.rows))
    in_month = UsageRecord.objects.filter(created_at__gte=month.start, created_at__lt=month.end).count()
    print(
        f"seeded {args.rows:,} ledger rows for {args.tenants} tenants in {time.monotonic() - t0:.1f}s "
        f"(COPY into each month's table, ATTACH, VACUUM ANALYZE): {len(partitions_list())} monthly partitions, "
        f"{month.label} holds {in_month:,}",
        flush=True,
    )

    if args.plain:
        call_command("migrate", "billing", "0011_ledger_unique_by_request_and_time", verbosity=0)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE billing_usagerecord")
            cursor.execute("CHECKPOINT")
        print("the ledger is now the previous release's plain table", flush=True)
    t0 = time.monotonic()
    result = month_close(period=month.label, finalize=True, now=now, workers=args.workers)
    close_s = time.monotonic() - t0
    print(
        f"month close {month.label} with finalisation (workers={args.workers}): {result.finalized} invoices, "
        f"{in_month:,} rows of a {args.rows:,}-row ledger in {close_s:.1f}s ({in_month / close_s:,.0f} rows/s)",
        flush=True,
    )
    closed = Invoice.objects.filter(period=month.label)
    assert closed.count() == args.tenants and not closed.filter(status=Invoice.Status.DRAFT).exists()
    for invoice in closed:
        ledger = invoice_rows(invoice).aggregate(s=Sum("cost"))["s"]
        assert abs(invoice.total_usd - ledger) <= Decimal("0.005") * invoice.lines.count(), invoice
    assert not UsageRecord.objects.filter(invoice__isnull=True).exists()

    client = Client()
    rng = random.Random(1)
    timings = []
    last_day = (month.end - timedelta(days=1)).date()
    for _ in range(args.requests):
        token = rng.choice(tokens)
        group = rng.choice(["day", "model", "key"])
        started = time.perf_counter()
        response = client.get(
            "/v1/usage",
            {"start": month.start.date().isoformat(), "end": last_day.isoformat(), "group_by": group},
            headers={"Authorization": f"Bearer {token}"},
            HTTP_HOST="localhost",
        )
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.content
    timings.sort()
    p95 = timings[int(len(timings) * 0.95) - 1]
    print(
        f"GET /v1/usage ({month.start.date()}..{last_day}, live from the ledger), {len(timings)} calls: "
        f"p50 {statistics.median(timings):.1f} ms, p95 {p95:.1f} ms, max {timings[-1]:.1f} ms"
    )

    if args.migration:
        total = UsageRecord.objects.count()
        t0 = time.monotonic()
        call_command("migrate", "billing", "0011_ledger_unique_by_request_and_time", verbosity=0)
        back = time.monotonic() - t0
        t0 = time.monotonic()
        call_command("migrate", verbosity=0)
        forward = time.monotonic() - t0
        print(
            f"migration 0012 on {total:,} rows: to monthly partitions {forward:.1f}s ({total / forward:,.0f} rows/s), "
            f"back to a plain table {back:.1f}s"
        )


if __name__ == "__main__":
    main()
