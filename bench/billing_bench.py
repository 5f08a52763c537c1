"""Billing benchmark: 1,000,000 ledger rows over 100 tenants, then the month close and the usage API.

Run it against a database of its own (it refuses one that already holds tenants):

    createdb -h 127.0.0.1 -U postgres tollway_bench
    DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/tollway_bench \\
    REDIS_URL=redis://127.0.0.1:6379/13 .venv/bin/python bench/billing_bench.py [--rows 1000000]

It seeds the rows with one ``INSERT … SELECT generate_series`` (the ledger's own
columns, costs computed by Postgres at 9 decimal places, a 20 % markup), runs VACUUM and
a CHECKPOINT (as a month of autovacuum would have), then times:
1. the month close with finalisation (``month_close``: the same service as
   ``manage.py closemonth --finalize``), and checks every invoice total against the ledger;
2. the rollups for every tenant;
3. ``GET /v1/usage`` for a whole month, grouped by day, model and key, for random tenants
   (p50 / p95 / max over ``--requests`` calls, in process through Django's test client).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import datetime
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

from billing import rollups  # noqa: E402
from billing.invoicing import invoice_rows, month_close, period_of, previous_period_label  # noqa: E402
from billing.models import Invoice, Model, Price, UsageRecord  # noqa: E402
from tenants import services  # noqa: E402
from tenants.models import ApiKey, Tenant  # noqa: E402

MODELS: dict[str, tuple[str, str]] = {
    "gpt-4.1": ("8", "32"),
    "gpt-4.1-mini": ("2", "8"),
    "claude-sonnet-4": ("15", "75"),
    "gemini-2.5-flash": ("2.5", "10"),
    "deepseek-v3": ("0.42", "1.68"),
}


def seed(rows: int, tenants: int, start: datetime, end: datetime) -> tuple[list[Tenant], list[str]]:
    models = []
    for name, (pin, pout) in MODELS.items():
        model = Model.objects.create(name=name)
        Price.objects.create(
            model=model, input_per_mtok=Decimal(pin), output_per_mtok=Decimal(pout), effective_from=start
        )
        models.append(model)
    made, tokens = [], []
    for i in range(tenants):
        tenant = services.tenant_create(slug=f"bench-{i:03d}", name=f"Bench tenant {i}")
        made.append(tenant)
        for k in range(2):
            created = services.api_key_create(tenant=tenant, name=f"k{k}", scopes=["inference", "billing"])
            if k == 0:
                tokens.append(created.plaintext)
    keys = {t.pk: list(ApiKey.objects.filter(tenant=t).values_list("pk", flat=True)) for t in made}
    tenant_ids = ",".join(str(t.pk) for t in made)
    key_a = ",".join(str(keys[t.pk][0]) for t in made)
    key_b = ",".join(str(keys[t.pk][1]) for t in made)
    model_ids = ",".join(str(m.pk) for m in models)
    pins = ",".join(str(p[0]) for p in MODELS.values())
    pouts = ",".join(str(p[1]) for p in MODELS.values())
    seconds = int((end - start).total_seconds())
    # ids and prices are ours, not input: interpolating them is safe
    sql = f"""
        WITH g AS (
            SELECT n,
                   (ARRAY[{tenant_ids}])[mod(n, {tenants}) + 1] AS tenant_id,
                   CASE WHEN mod(n, 3) = 0 THEN (ARRAY[{key_b}])[mod(n, {tenants}) + 1]
                        ELSE (ARRAY[{key_a}])[mod(n, {tenants}) + 1] END AS api_key_id,
                   mod(n / {tenants}, {len(models)}) + 1 AS m,
                   1 + (random() * 8000)::int AS input_tokens,
                   (random() * 2000)::int AS output_tokens
            FROM generate_series(1, %s) AS n
        ), p AS (
            SELECT g.*, (ARRAY[{model_ids}])[m] AS model_id,
                   (ARRAY[{pins}]::numeric[])[m] AS pin, (ARRAY[{pouts}]::numeric[])[m] AS pout,
                   CASE WHEN mod(n, 4) = 0 THEN input_tokens / 2 ELSE 0 END AS cached
            FROM g
        )
        INSERT INTO billing_usagerecord (
            request_id, created_at, tenant_id, api_key_id, model_id, provider, upstream_model,
            input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
            input_price_per_mtok, output_price_per_mtok, cached_input_price_per_mtok, cache_write_price_per_mtok,
            request_fee, markup_percent, cost, upstream_cost, usage_estimated, streamed, outcome, latency_ms,
            attempts, requested_model, cache_hit
        )
        SELECT 'bench-' || n, %s::timestamptz + (random() * {seconds}) * interval '1 second',
               tenant_id, api_key_id, model_id, 'mock', 'mock-model',
               input_tokens, output_tokens, cached, 0,
               pin, pout, pin, pin, 0, 20,
               round((input_tokens * pin + output_tokens * pout) / 1000000 * 1.2, 9),
               round((input_tokens * pin + output_tokens * pout) / 1000000, 9),
               false, false, 'completed', 100,
               1, '', false
        FROM p
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [rows, start])
    # A month's rows were written over a month: autovacuum and checkpoints have long seen
    # them. Do the same, so the close is not timed setting hint bits on brand-new pages.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE billing_usagerecord")
        cursor.execute("CHECKPOINT")
    return made, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2, help="threads for the month close (closemonth --workers)")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("Run it on Postgres: set DATABASE_URL.")
    call_command("migrate", verbosity=0)
    if Tenant.objects.exists():
        sys.exit("This database already holds tenants: give the benchmark an empty database of its own.")

    now = timezone.now()
    month = period_of(tz_name="UTC", label=previous_period_label(tz_name="UTC", now=now))
    t0 = time.monotonic()
    tenants, tokens = seed(args.rows, args.tenants, month.start, month.end)
    print(f"seeded {args.rows:,} ledger rows for {args.tenants} tenants in {time.monotonic() - t0:.1f}s")

    t0 = time.monotonic()
    result = month_close(period=month.label, finalize=True, now=now, workers=args.workers)
    close_s = time.monotonic() - t0
    print(
        f"month close {month.label} with finalisation (workers={args.workers}): {result.finalized} invoices, "
        f"{args.rows:,} rows in "
        f"{close_s:.1f}s ({args.rows / close_s:,.0f} rows/s)"
    )
    for invoice in Invoice.objects.all():
        ledger = invoice_rows(invoice).aggregate(s=Sum("cost"))["s"]
        assert abs(invoice.total_usd - ledger) <= Decimal("0.005") * invoice.lines.count(), invoice
    assert not UsageRecord.objects.filter(invoice__isnull=True).exists()

    t0 = time.monotonic()
    for tenant in tenants:
        rollups.rollup_tenant(tenant=tenant, now=now)
    print(f"rollups for {len(tenants)} tenants: {time.monotonic() - t0:.1f}s")

    client = Client()
    rng = random.Random(1)
    timings = []
    for _ in range(args.requests):
        token = rng.choice(tokens)
        group = rng.choice(["day", "model", "key"])
        started = time.perf_counter()
        response = client.get(
            "/v1/usage",
            {"start": month.start.date().isoformat(), "end": now.date().isoformat(), "group_by": group},
            headers={"Authorization": f"Bearer {token}"},
            HTTP_HOST="localhost",
        )
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.content
    timings.sort()
    p95 = timings[int(len(timings) * 0.95) - 1]
    print(
        f"GET /v1/usage ({month.start.date()}..{now.date()}, rollups plus today live), {len(timings)} calls: "
        f"p50 {statistics.median(timings):.1f} ms, p95 {p95:.1f} ms, max {timings[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
