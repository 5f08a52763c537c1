"""Invoices: draft at month close, late usage during the grace period, finalise, void and reissue.

The lifecycle (as Lago and Stripe do it):

* **draft**: made when a tenant's billing month is over. Until ``grace_until`` (month end +
  ``TOLLWAY["INVOICE_GRACE_HOURS"]``, 72 h by default) each refresh bills the rows that
  arrived late into the same draft.
* **finalised**: numbered ``TW-YYYY-NNNNNN`` (gapless per year, the year of finalisation),
  under the counter lock in :mod:`billing.locks`, and never edited again.
* **void**: a finalised invoice can be voided (its number stays used) and reissued as a
  new draft that takes over its ledger rows.

Each ledger row records the invoice that billed it (``UsageRecord.invoice``), so a row is
billed once. A row that arrives after its month's invoice was finalised is still unbilled
when the next invoice is drafted, and lands there as an adjustment line.

Rounding, the one rule: a line's amount is the exact sum of its ledger rows (9 decimal
places) rounded **half-up to the cent, once, at the line**. The platform fee and the credit
line are computed from those rounded amounts, and the total is the plain sum of the lines.
So every line equals the ledger to the cent, and the total can differ from the rounded
ledger sum only by the per-line rounding (at most half a cent per usage line).
"""

from __future__ import annotations

import re
import threading
import zoneinfo
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Min, Q, QuerySet, Sum
from django.db.models.functions import TruncMonth
from django.utils import timezone

from billing import locks
from billing.models import Account, Invoice, InvoiceLine, Model, UsageRecord
from billing.pricing import markup_factor
from tenants.models import Tenant

CENT = Decimal("0.01")
RATE = Decimal("0.000000001")
_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


class InvoicingError(Exception):
    """A billing action that cannot be done; the message says why and what to do instead."""


def to_cents(amount: Decimal) -> Decimal:
    """The one rounding rule for invoices: half-up to the cent."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def grace() -> timedelta:
    return timedelta(hours=settings.TOLLWAY["INVOICE_GRACE_HOURS"])


# --- periods ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    label: str  # YYYY-MM
    start: datetime  # UTC
    end: datetime  # UTC, exclusive


def period_parse(label: str) -> tuple[int, int]:
    """``YYYY-MM`` → (year, month); ValueError names the fix."""
    match = _PERIOD.match(label or "")
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 2000:
        raise ValueError(f"'{label}' is not a month: use YYYY-MM, e.g. 2026-10.")
    return int(match.group(1)), int(match.group(2))


def period_of(*, tz_name: str, label: str) -> Period:
    """The tenant's billing month ``label`` as UTC instants (months run in the tenant's zone)."""
    year, month = period_parse(label)
    tz = zoneinfo.ZoneInfo(tz_name)
    start = datetime(year, month, 1, tzinfo=tz)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
    return Period(label=label, start=start.astimezone(UTC), end=end.astimezone(UTC))


def previous_period_label(*, tz_name: str, now: datetime) -> str:
    local = now.astimezone(zoneinfo.ZoneInfo(tz_name))
    first = local.replace(day=1)
    return f"{first - timedelta(days=1):%Y-%m}"


# --- drafting ------------------------------------------------------------------------------


def invoice_draft(*, tenant: Tenant, period: str, now: datetime | None = None) -> Invoice | None:
    """Make or refresh the tenant's draft for ``period``; returns it (``None``: nothing to bill).

    Re-running is safe: a finalised or void-and-reissued month is left alone, and a draft
    only gains the rows that arrived since. Refuses a month that is not over yet.
    """
    now = now or timezone.now()
    bounds = period_of(tz_name=tenant.timezone, label=period)
    if bounds.end > now:
        raise InvoicingError(f"{period} is not over yet for {tenant.slug} (it ends {bounds.end:%Y-%m-%d %H:%M} UTC).")
    with transaction.atomic():
        _commit_without_waiting()
        locks.tenant_for_invoicing(tenant.pk)
        invoice = Invoice.objects.filter(tenant=tenant, period=period).exclude(status=Invoice.Status.VOID).first()
        if invoice is not None and not invoice.is_draft:
            return invoice  # closing a month twice is a no-op
        created = invoice is None
        if created and bounds.end <= tenant.created_at and not _has_unbilled(tenant, bounds.end):
            return None  # the tenant did not exist that month: no platform fee for it
        if invoice is None:
            invoice = Invoice.objects.create(
                tenant=tenant,
                period=period,
                period_start=bounds.start,
                period_end=bounds.end,
                grace_until=bounds.end + grace(),
                currency=tenant.currency,
            )
        _bill_rows(invoice)
        _rebuild_lines(invoice)
        if created and not invoice.lines.exists():
            invoice.delete()  # no usage, no fee: nothing to invoice
            return None
        return invoice


def invoice_rows(invoice: Invoice) -> QuerySet[UsageRecord]:
    """The ledger rows an invoice bills, found through the tenant-and-time index."""
    return UsageRecord.objects.filter(
        tenant_id=invoice.tenant_id,
        created_at__gte=invoice.billed_from or invoice.period_start,
        created_at__lt=invoice.period_end,
        invoice=invoice,
    )


def _has_unbilled(tenant: Tenant, before: datetime) -> bool:
    return UsageRecord.objects.filter(tenant=tenant, invoice__isnull=True, created_at__lt=before).exists()


def _commit_without_waiting() -> None:
    """A draft is derived data, rebuilt by the next refresh: its commit need not wait for
    the WAL flush (a crash loses at most a just-made draft, never a number)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")


def _bill_rows(invoice: Invoice) -> int:
    """Mark the unbilled rows this invoice takes: its month's, and earlier late ones.

    Unbilled rows are few (this month's and late ones) and have their own partial index,
    so this never scans a tenant's history.
    """
    rows = UsageRecord.objects.filter(tenant_id=invoice.tenant_id, invoice__isnull=True)
    mine = Q(created_at__gte=invoice.period_start, created_at__lt=invoice.period_end)
    late = Q(created_at__lt=invoice.period_start)
    # An earlier month whose draft is still open keeps its own late rows.
    for start, end in Invoice.objects.filter(
        tenant_id=invoice.tenant_id, status=Invoice.Status.DRAFT, period_start__lt=invoice.period_start
    ).values_list("period_start", "period_end"):
        late &= ~Q(created_at__gte=start, created_at__lt=end)
    earliest = rows.filter(late).aggregate(first=Min("created_at"))["first"]
    billed_from = min(filter(None, [earliest, invoice.billed_from, invoice.period_start]))
    if billed_from != invoice.billed_from:
        invoice.billed_from = billed_from
        invoice.save(update_fields=["billed_from"])
    return rows.filter(mine | late).update(invoice=invoice)


def _rebuild_lines(invoice: Invoice) -> None:
    if not invoice.is_draft:
        raise InvoicingError(f"Invoice {invoice} is {invoice.status}: its lines never change.")
    tenant = invoice.tenant
    tz = zoneinfo.ZoneInfo(tenant.timezone)
    groups = (
        invoice_rows(invoice)
        .annotate(month=TruncMonth("created_at", tzinfo=tz))
        .values(
            "month",
            "model_id",
            "input_price_per_mtok",
            "cached_input_price_per_mtok",
            "output_price_per_mtok",
            "markup_percent",
        )
        .annotate(
            n=Count("id"),
            input=Sum("input_tokens"),
            cached=Sum("cached_input_tokens"),
            written=Sum("cache_write_tokens"),
            output=Sum("output_tokens"),
            exact=Sum("cost"),
            upstream=Sum("upstream_cost"),
        )
        .order_by()
    )
    names = dict(Model.objects.values_list("pk", "name"))
    usage: list[InvoiceLine] = []
    adjustments: list[InvoiceLine] = []
    for g in groups:
        month = f"{g['month']:%Y-%m}"
        factor = markup_factor(g["markup_percent"])
        late = month != invoice.period
        name = names.get(g["model_id"], str(g["model_id"]))
        line = InvoiceLine(
            invoice=invoice,
            kind=InvoiceLine.Kind.ADJUSTMENT if late else InvoiceLine.Kind.USAGE,
            description=f"{name}: late usage from {month}" if late else name,
            model_id=g["model_id"],
            usage_period=month,
            requests=g["n"],
            input_tokens=g["input"],
            cached_input_tokens=g["cached"],
            cache_write_tokens=g["written"],
            output_tokens=g["output"],
            input_price_per_mtok=(g["input_price_per_mtok"] * factor).quantize(RATE),
            cached_input_price_per_mtok=None
            if g["cached_input_price_per_mtok"] is None
            else (g["cached_input_price_per_mtok"] * factor).quantize(RATE),
            output_price_per_mtok=(g["output_price_per_mtok"] * factor).quantize(RATE),
            exact_usd=g["exact"],
            upstream_usd=g["upstream"],
            amount_usd=to_cents(g["exact"]),
        )
        (adjustments if late else usage).append(line)
    usage.sort(key=lambda line: (line.description, line.input_price_per_mtok or 0))
    adjustments.sort(key=lambda line: (line.usage_period, line.description))
    lines = usage + adjustments

    account = Account.objects.select_related("plan").filter(tenant=tenant).first()
    plan = account.plan if account else None
    usage_total = sum((line.amount_usd for line in usage), Decimal(0))
    if plan is not None and plan.monthly_minimum_usd > usage_total:
        fee = plan.monthly_minimum_usd - usage_total
        lines.append(
            InvoiceLine(
                invoice=invoice,
                kind=InvoiceLine.Kind.PLATFORM_FEE,
                description=f"Platform fee: monthly minimum ${plan.monthly_minimum_usd} ({plan.name}) "
                f"less usage ${usage_total}",
                amount_usd=fee,
                exact_usd=fee,
            )
        )
    if account is not None and account.prepaid:
        spent = sum((line.amount_usd for line in usage + adjustments), Decimal(0))
        if spent:
            lines.append(
                InvoiceLine(
                    invoice=invoice,
                    kind=InvoiceLine.Kind.CREDIT,
                    description="Prepaid credit applied (usage was paid from the credit balance)",
                    amount_usd=-spent,
                    exact_usd=-spent,
                )
            )
    for position, line in enumerate(lines, start=1):
        line.position = position
    invoice.lines.all().delete()
    InvoiceLine.objects.bulk_create(lines)
    credit = sum((line.amount_usd for line in lines if line.kind == InvoiceLine.Kind.CREDIT), Decimal(0))
    invoice.total_usd = sum((line.amount_usd for line in lines), Decimal(0))
    invoice.credits_applied_usd = -credit
    invoice.subtotal_usd = invoice.total_usd - credit
    invoice.save(update_fields=["total_usd", "credits_applied_usd", "subtotal_usd"])


# --- finalising, voiding ------------------------------------------------------------------


def _bill_to(tenant: Tenant) -> dict[str, Any]:
    return {
        "name": tenant.name,
        "slug": tenant.slug,
        "email": tenant.billing_email,
        "timezone": tenant.timezone,
        "currency": tenant.currency,
    }


def invoice_finalize(*, invoice: Invoice, now: datetime | None = None) -> Invoice:
    """Take the late rows, assign the next number of the year and freeze the invoice.

    Raises :class:`InvoicingError` for an invoice that is not a draft: a finalised invoice
    is changed only by voiding and reissuing it.
    """
    now = now or timezone.now()
    with transaction.atomic():
        locks.tenant_for_invoicing(invoice.tenant_id)
        locked = locks.invoice_for_update(invoice.pk)
        if not locked.is_draft:
            raise InvoicingError(
                f"Invoice {locked.number} is already {locked.get_status_display().lower()}; "
                "it cannot be finalised again. Void it and reissue to correct it."
            )
        # The lines are current unless rows arrived since the last refresh (or it has none yet).
        if _bill_rows(locked) or not locked.lines.exists():
            _rebuild_lines(locked)
        year = now.astimezone(UTC).year
        locked.number = f"TW-{year}-{locks.invoice_number_next(year=year):06d}"
        locked.status = Invoice.Status.FINALIZED
        locked.finalized_at = now
        locked.bill_to = _bill_to(locked.tenant)
        locked.save(update_fields=["number", "status", "finalized_at", "bill_to"])
    return locked


def invoice_void(*, invoice: Invoice, reason: str, reissue: bool = True, now: datetime | None = None) -> Invoice | None:
    """Void a finalised invoice (its number stays used). With ``reissue``, a new draft for the
    same month takes over its ledger rows; it is returned, to be checked and finalised."""
    now = now or timezone.now()
    with transaction.atomic():
        locks.tenant_for_invoicing(invoice.tenant_id)
        locked = locks.invoice_for_update(invoice.pk)
        if locked.status != Invoice.Status.FINALIZED:
            raise InvoicingError(
                f"Invoice {locked} is {locked.get_status_display().lower()}: only a finalised invoice can be voided."
            )
        locked.status = Invoice.Status.VOID
        locked.voided_at = now
        locked.void_reason = reason
        locked.save(update_fields=["status", "voided_at", "void_reason"])
        if not reissue:
            return None
        draft = Invoice.objects.create(
            tenant=locked.tenant,
            period=locked.period,
            period_start=locked.period_start,
            period_end=locked.period_end,
            grace_until=now + grace(),  # time to check it; finance may finalise it sooner
            currency=locked.currency,
            replaces=locked,
            billed_from=locked.billed_from,
        )
        invoice_rows(locked).update(invoice=draft)
        _bill_rows(draft)
        _rebuild_lines(draft)
        return draft


# --- runs: the month close and the sweeper ---------------------------------------------------


@dataclass
class CloseResult:
    tenants: int = 0
    drafted: int = 0
    finalized: int = 0
    skipped: int = 0


def month_close(
    *,
    period: str | None = None,
    tenants: Iterable[Tenant] | None = None,
    finalize: bool = False,
    now: datetime | None = None,
    progress: Callable[[int, Tenant, Invoice | None], None] | None = None,
    workers: int = 1,
) -> CloseResult:
    """Draft (and with ``finalize``, finalise) each tenant's invoice for ``period`` (default:
    each tenant's previous month in its own zone). Safe to re-run: see :func:`invoice_draft`.

    With ``workers`` > 1, tenants are closed by that many threads, each with its own
    database connection; tenants are independent, and numbering is serialised by its lock.
    """
    now = now or timezone.now()
    result = CloseResult()
    guard = threading.Lock()

    def close(tenant: Tenant) -> None:
        label = period or previous_period_label(tz_name=tenant.timezone, now=now)
        invoice = invoice_draft(tenant=tenant, period=label, now=now)
        drafted = invoice is not None and invoice.is_draft
        if drafted and finalize:
            assert invoice is not None
            invoice = invoice_finalize(invoice=invoice, now=now)
        with guard:
            result.tenants += 1
            result.drafted += drafted
            result.finalized += drafted and finalize
            result.skipped += not drafted
            if progress:
                progress(result.tenants, tenant, invoice)

    todo = list(tenants if tenants is not None else Tenant.objects.order_by("pk"))
    if workers <= 1:
        for tenant in todo:
            close(tenant)
        return result

    def run(chunk: list[Tenant]) -> None:
        try:
            for tenant in chunk:
                close(tenant)
        finally:
            connection.close()  # this thread's own connection

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, [todo[i::workers] for i in range(workers)]))  # re-raises a worker's error
    return result


def drafts_sweep(*, now: datetime | None = None, batch: int = 100) -> tuple[int, int]:
    """Finalise drafts whose grace has passed; refresh the rest so late usage lands. Bounded."""
    now = now or timezone.now()
    finalized = refreshed = 0
    for invoice in Invoice.objects.filter(status=Invoice.Status.DRAFT, grace_until__lte=now).order_by("pk")[:batch]:
        try:
            invoice_finalize(invoice=invoice, now=now)
            finalized += 1
        except InvoicingError:
            continue  # finalised meanwhile by someone else
    for invoice in Invoice.objects.filter(status=Invoice.Status.DRAFT, grace_until__gt=now).order_by("pk")[:batch]:
        invoice_draft(tenant=invoice.tenant, period=invoice.period, now=now)
        refreshed += 1
    return finalized, refreshed
