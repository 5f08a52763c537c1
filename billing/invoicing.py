"""Invoices: draft at month close, late usage during the grace period, finalise, void and reissue.

The lifecycle (as Lago and Stripe do it):

* **draft**: made when a tenant's billing month is over. Until ``grace_until`` (month end +
  ``TOLLWAY["INVOICE_GRACE_HOURS"]``, 72 h by default) each refresh bills the rows that
  arrived late into the same draft.
* **finalised** (status ``open``): numbered ``TW-YYYY-NNNNNN`` (gapless per year, the year
  of finalisation), under the counter lock in :mod:`billing.locks`; taxed, converted to the
  tenant's currency, its issuer and customer copied in, and never edited again (the models
  and a Postgres trigger refuse it). Only its payment state moves (:mod:`billing.payments`).
* **void**: a finalised invoice can be voided (its number stays used) and reissued as a
  new draft that takes over its ledger rows: for a draft-level mistake. A finalised
  invoice is otherwise corrected by a credit note (:mod:`billing.credit_notes`).

Each ledger row records the invoice that billed it (``UsageRecord.invoice``), so a row is
billed once. A row that arrives after its month's invoice was finalised is still unbilled
when the next invoice is drafted, and lands there as an adjustment line.

Rounding, the one rule: a line's amount is the exact sum of its ledger rows (9 decimal
places) rounded **half-up to the cent, once, at the line**. The platform fee and the credit
line are computed from those rounded amounts, and the total is the plain sum of the lines.
So every line equals the ledger to the cent, and the total can differ from the rounded
ledger sum only by the per-line rounding (at most half a cent per usage line).

Tax and currency follow the same rule (:mod:`billing.money`): tax is the net total times
the rate, rounded half-up once; in another currency each line's cents are converted and
rounded to the currency's minor unit once, the net is their sum, and tax is taken on it.
"""

from __future__ import annotations

import logging
import re
import threading
import zoneinfo
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import BooleanField, Case, Count, Max, Min, Q, QuerySet, Sum, Value, When
from django.db.models.functions import TruncMonth
from django.utils import timezone

from billing import locks, webhooks
from billing.models import Account, Invoice, InvoiceLine, Model, UsageRecord
from billing.money import USD, convert, tax_of
from billing.pricing import markup_factor
from billing.selectors import billing_profile_of, exchange_rate_on, issuer_get, tax_treatment
from tenants.models import Tenant

log = logging.getLogger(__name__)
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
                currency=billing_profile_of(tenant).currency,
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
    # No row to take is older than billed_from: said in the WHERE, the update touches only
    # the ledger partitions from there to the period's end (billing.partitions).
    return rows.filter(mine | late, created_at__gte=billed_from, created_at__lt=invoice.period_end).update(
        invoice=invoice
    )


def _rebuild_lines(invoice: Invoice) -> None:
    if not invoice.is_draft:
        raise InvoicingError(f"Invoice {invoice} is {invoice.status}: its lines never change.")
    tenant = invoice.tenant
    tz = zoneinfo.ZoneInfo(tenant.timezone)
    groups = (
        invoice_rows(invoice)
        .annotate(
            month=TruncMonth("created_at", tzinfo=tz),
            # Batch API lines are their own invoice lines, at their own (discounted) rates.
            batch=Case(When(batch_id="", then=Value(False)), default=Value(True), output_field=BooleanField()),
        )
        .values(
            "month",
            "model_id",
            "input_price_per_mtok",
            "cached_input_price_per_mtok",
            "output_price_per_mtok",
            "markup_percent",
            "batch",
            "price_factor",
        )
        .annotate(
            n=Count("id"),
            input=Sum("input_tokens"),
            cached=Sum("cached_input_tokens"),
            written=Sum("cache_write_tokens"),
            output=Sum("output_tokens"),
            exact=Sum("cost"),
            upstream=Sum("upstream_cost"),
            first=Min("created_at"),
            last=Max("created_at"),
        )
        .order_by()
    )
    names = dict(Model.objects.values_list("pk", "name"))
    usage: list[InvoiceLine] = []
    adjustments: list[InvoiceLine] = []
    seen: dict[int, dict[str, Any]] = {}  # id(line) -> its group, to label repeated models
    for g in groups:
        month = f"{g['month']:%Y-%m}"
        factor = markup_factor(g["markup_percent"]) * g["price_factor"]
        late = month != invoice.period
        name = names.get(g["model_id"], str(g["model_id"]))
        if g["batch"]:
            name = f"{name} (Batch API)"
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
        seen[id(line)] = g
    usage.sort(key=lambda line: (line.description, seen[id(line)]["first"]))
    _label_repeats(usage, seen, tz)
    adjustments.sort(key=lambda line: (line.usage_period, line.description, seen[id(line)]["first"]))
    _label_repeats(adjustments, seen, tz)
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


def _day(value: datetime) -> str:
    return f"{value.day} {value:%B}"


def _span(first: datetime, last: datetime) -> str:
    """``1-14 October``, or ``30 September-2 October`` across months (printed with an en dash)."""
    if (first.year, first.month) == (last.year, last.month):
        return f"{first.day}–{last.day} {last:%B}" if first.day != last.day else _day(last)
    return f"{_day(first)}–{_day(last)}"


def _pct(value: Decimal) -> str:
    return f"{value.normalize():f}"


def _label_repeats(lines: list[InvoiceLine], groups: dict[int, dict[str, Any]], tz: zoneinfo.ZoneInfo) -> None:
    """Say why a model appears more than once: a new list price, or a changed plan markup,
    from the local day it took effect; each such line also names the days it covers."""
    by_model: dict[tuple[int | None, str, bool], list[InvoiceLine]] = {}
    for line in lines:  # a model's batch lines are labelled apart from its live ones
        by_model.setdefault((line.model_id, line.usage_period, groups[id(line)]["batch"]), []).append(line)
    for same in by_model.values():
        if len(same) < 2:
            continue
        same.sort(key=lambda line: groups[id(line)]["first"])
        previous: dict[str, Any] | None = None
        for line in same:
            g = groups[id(line)]
            first, last = g["first"].astimezone(tz), g["last"].astimezone(tz)
            if previous is None:
                why = ""
            elif (g["input_price_per_mtok"], g["cached_input_price_per_mtok"], g["output_price_per_mtok"]) != (
                previous["input_price_per_mtok"],
                previous["cached_input_price_per_mtok"],
                previous["output_price_per_mtok"],
            ):
                why = f"price from {_day(first)}"
            else:
                why = (
                    f"plan markup {_pct(previous['markup_percent'])}% → {_pct(g['markup_percent'])}% from {_day(first)}"
                )
            span = _span(first, last)
            line.description = f"{line.description}, {why} ({span})" if why else f"{line.description} ({span})"
            previous = g


# --- finalising, voiding ------------------------------------------------------------------


def _bill_to(tenant: Tenant) -> dict[str, Any]:
    profile = billing_profile_of(tenant)
    return {
        "name": profile.legal_name or tenant.name,
        "slug": tenant.slug,
        "email": tenant.billing_email,
        "address": profile.address,
        "country": profile.country,
        "tax_id": profile.tax_id,
        "timezone": tenant.timezone,
        "currency": profile.currency,
    }


def _issuer() -> dict[str, Any]:
    issuer = issuer_get()
    return {
        "legal_name": issuer.legal_name,
        "address": issuer.address,
        "country": issuer.country,
        "tax_id": issuer.tax_id,
        "email": issuer.email,
        "payment_instructions": issuer.payment_instructions,
        "logo": issuer.logo_id or "",
    }


def _tax_and_currency(invoice: Invoice, *, issue_date: date) -> None:
    """Resolve the tax rate and the exchange rate, and fill in the taxed and converted figures."""
    profile = billing_profile_of(invoice.tenant)
    tax = tax_treatment(profile)
    currency = profile.currency or USD
    if currency == USD:
        rate, rate_date = Decimal(1), None
    else:
        fx = exchange_rate_on(currency=currency, day=issue_date)
        if fx is None:
            raise InvoicingError(
                f"No USD→{currency} exchange rate on or before {issue_date} for {invoice}: "
                f"add one in the admin (Billing > Exchange rates), then finalise again."
            )
        rate, rate_date = fx.rate, fx.effective_date
    lines = list(invoice.lines.all())
    for line in lines:
        line.amount = convert(line.amount_usd, rate=rate, currency=currency)
    InvoiceLine.objects.bulk_update(lines, ["amount"])
    invoice.currency = currency
    invoice.fx_rate, invoice.fx_rate_date = rate, rate_date
    invoice.tax_label, invoice.tax_rate_percent, invoice.reverse_charge = (
        tax.label,
        tax.rate_percent,
        tax.reverse_charge,
    )
    invoice.tax_usd = tax_of(invoice.total_usd, rate_percent=tax.rate_percent, currency=USD)
    invoice.gross_usd = invoice.total_usd + invoice.tax_usd
    invoice.net_amount = sum((line.amount for line in lines if line.amount is not None), Decimal(0))
    invoice.tax_amount = tax_of(invoice.net_amount, rate_percent=tax.rate_percent, currency=currency)
    invoice.gross_amount = invoice.net_amount + invoice.tax_amount
    invoice.payment_terms_days = profile.payment_terms_days
    invoice.issue_date = issue_date
    invoice.due_date = issue_date + timedelta(days=profile.payment_terms_days)


FINALIZE_FIELDS = [
    "number",
    "status",
    "finalized_at",
    "finalized_by",
    "bill_to",
    "issuer",
    "currency",
    "fx_rate",
    "fx_rate_date",
    "tax_label",
    "tax_rate_percent",
    "reverse_charge",
    "tax_usd",
    "gross_usd",
    "net_amount",
    "tax_amount",
    "gross_amount",
    "payment_terms_days",
    "issue_date",
    "due_date",
]


def invoice_finalize(*, invoice: Invoice, now: datetime | None = None, by: str = "system") -> Invoice:
    """Take the late rows, tax and convert it, assign the next number of the year, and
    freeze it: from here only its payment state moves. Then it is e-mailed to the tenant's
    billing address and an ``invoice.finalized`` webhook goes out (after the commit).

    Raises :class:`InvoicingError` for an invoice that is not a draft (a finalised invoice
    is corrected by a credit note, or voided and reissued), and for an invoice in another
    currency with no exchange rate entered for its issue date.
    """
    now = now or timezone.now()
    with transaction.atomic():
        locks.tenant_for_invoicing(invoice.tenant_id)
        locked = locks.invoice_for_update(invoice.pk)
        if not locked.is_draft:
            raise InvoicingError(
                f"Invoice {locked.number} is already finalised ({locked.status}); "
                "it cannot be finalised again. Correct it with a credit note, or void it and reissue."
            )
        # The lines are current unless rows arrived since the last refresh (or it has none yet).
        if _bill_rows(locked) or not locked.lines.exists():
            _rebuild_lines(locked)
        _tax_and_currency(locked, issue_date=now.astimezone(zoneinfo.ZoneInfo(locked.tenant.timezone)).date())
        year = now.astimezone(UTC).year
        locked.number = f"TW-{year}-{locks.invoice_number_next(year=year):06d}"
        locked.status = Invoice.Status.OPEN
        locked.finalized_at = now
        locked.finalized_by = by
        locked.bill_to = _bill_to(locked.tenant)
        locked.issuer = _issuer()
        locked.save(update_fields=FINALIZE_FIELDS)
        webhooks.event_record(
            type="invoice.finalized", tenant_id=locked.tenant_id, data=webhooks.invoice_data(locked), invoice=locked
        )
    return locked


def invoice_void(
    *, invoice: Invoice, reason: str, reissue: bool = True, now: datetime | None = None, by: str = "system"
) -> Invoice | None:
    """Void a finalised invoice (its number stays used): for a draft-level mistake (wrong
    customer details, wrong month). With ``reissue``, a new draft for the same month takes
    over its ledger rows; it is returned, to be checked and finalised. A paid invoice cannot
    be voided: correct it with a credit note."""
    from billing.payments import status_move

    now = now or timezone.now()
    with transaction.atomic():
        locks.tenant_for_invoicing(invoice.tenant_id)
        locked = locks.invoice_for_update(invoice.pk)
        if locked.status not in (Invoice.Status.OPEN, Invoice.Status.UNCOLLECTIBLE):
            raise InvoicingError(
                f"Invoice {locked} is {locked.get_status_display().lower()}: only an open (finalised, unpaid) "
                "or uncollectible invoice can be voided."
                + (" Correct a paid invoice with a credit note." if locked.status == Invoice.Status.PAID else "")
            )
        if reissue:
            _refuse_archived(locked)
        status_move(locked, Invoice.Status.VOID, by=by, now=now, reason=reason)
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


def _refuse_archived(invoice: Invoice) -> None:
    """A reissue rebuilds its lines from the ledger rows: not possible once they are archived."""
    from billing.partitions import archived_months, months_between

    gone = archived_months() & {
        m.label for m in months_between(invoice.billed_from or invoice.period_start, invoice.period_end)
    }
    if gone:
        raise InvoicingError(
            f"Invoice {invoice} bills ledger rows of {', '.join(sorted(gone))}, which are archived: a reissue "
            "could not rebuild its lines. Correct it with a credit note, or restore those months first "
            "(manage.py ledger restore YYYY-MM)."
        )


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
        except InvoicingError as exc:
            # Finalised meanwhile by someone else, or waiting for finance (an exchange rate).
            log.warning("invoicing: %s left a draft: %s", invoice, exc)
            continue
    for invoice in Invoice.objects.filter(status=Invoice.Status.DRAFT, grace_until__gt=now).order_by("pk")[:batch]:
        invoice_draft(tenant=invoice.tenant, period=invoice.period, now=now)
        refreshed += 1
    return finalized, refreshed
