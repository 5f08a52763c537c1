"""Usage rollups: per tenant, key, model and local day, rebuilt from the ledger a day at a time.

Rebuilding whole days (delete, then insert the day's aggregates, in one transaction) is
what makes a run idempotent: running it twice, or concurrently with a late ledger write,
never double-counts. Each run rebuilds the days since the last run plus the last
``REBUILD_DAYS`` (the invoice grace period and a day), so usage that lands late is
picked up by the next run. Days after ``RollupState.rolled_through`` are read live from
the ledger by the usage API, so a new day needs no rollup to be visible.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, date, datetime, time, timedelta

from django.db import transaction
from django.db.models import Count, Min, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing.models import RollupState, UsageRecord, UsageRollup
from tenants.models import Tenant

REBUILD_DAYS = 4
MAX_DAYS_PER_RUN = 92  # a first run over a long history is spread over several runs


def local_today(tenant: Tenant, now: datetime | None = None) -> date:
    return (now or timezone.now()).astimezone(zoneinfo.ZoneInfo(tenant.timezone)).date()


def day_start(tenant: Tenant, day: date) -> datetime:
    """The UTC instant a local day of the tenant's begins."""
    return datetime.combine(day, time.min, zoneinfo.ZoneInfo(tenant.timezone)).astimezone(UTC)


def ledger_by_day(tenant: Tenant, first: date, last: date) -> list[dict]:
    """The ledger's sums per local day, key and model, for days ``first``..``last``."""
    tz = zoneinfo.ZoneInfo(tenant.timezone)
    return list(
        UsageRecord.objects.filter(
            tenant=tenant,
            created_at__gte=day_start(tenant, first),
            created_at__lt=day_start(tenant, last + timedelta(1)),
        )
        .annotate(day=TruncDate("created_at", tzinfo=tz))
        .values("day", "api_key_id", "model_id")
        .annotate(
            requests=Count("id"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            cached_input_tokens=Sum("cached_input_tokens"),
            cost=Sum("cost"),
            upstream_cost=Sum("upstream_cost"),
        )
        .order_by()
    )


def rollup_rebuild(*, tenant: Tenant, first: date, last: date) -> int:
    """Rebuild the tenant's rollups for local days ``first``..``last``; returns rows written."""
    rows = [UsageRollup(tenant=tenant, **group) for group in ledger_by_day(tenant, first, last)]
    with transaction.atomic():
        UsageRollup.objects.filter(tenant=tenant, day__gte=first, day__lte=last).delete()
        UsageRollup.objects.bulk_create(rows, batch_size=2_000)
    return len(rows)


def rollup_tenant(*, tenant: Tenant, now: datetime | None = None) -> tuple[date, date] | None:
    """Bring one tenant's rollups up to yesterday (its local time). Returns the days rebuilt."""
    yesterday = local_today(tenant, now) - timedelta(days=1)
    state = RollupState.objects.filter(tenant=tenant).first()
    if state is None:
        earliest = UsageRecord.objects.filter(tenant=tenant).aggregate(first=Min("created_at"))["first"]
        if earliest is None:
            RollupState.objects.update_or_create(tenant=tenant, defaults={"rolled_through": yesterday})
            return None
        first = earliest.astimezone(zoneinfo.ZoneInfo(tenant.timezone)).date()
    else:
        first = min(state.rolled_through + timedelta(days=1), yesterday - timedelta(days=REBUILD_DAYS - 1))
    last = min(yesterday, first + timedelta(days=MAX_DAYS_PER_RUN - 1))
    if last < first:
        return None
    rollup_rebuild(tenant=tenant, first=first, last=last)
    RollupState.objects.update_or_create(tenant=tenant, defaults={"rolled_through": last})
    return first, last


def rollups_run(*, after_tenant_id: int = 0, batch: int = 200, now: datetime | None = None) -> int | None:
    """One bounded batch of tenants after ``after_tenant_id``; returns the last tenant id done,
    or ``None`` when every tenant is done."""
    tenants = list(Tenant.objects.filter(pk__gt=after_tenant_id).order_by("pk")[:batch])
    for tenant in tenants:
        rollup_tenant(tenant=tenant, now=now)
    return tenants[-1].pk if len(tenants) == batch else None
