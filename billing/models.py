"""Money: what is sold (models and their prices) and the usage ledger."""

from __future__ import annotations

import enum
import secrets
from decimal import Decimal
from typing import Any

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from billing.money import validate_country, validate_currency
from config.errors import DocumentFinal
from tenants.models import ApiKey, Tenant

# Prices are USD per million tokens with up to 6 decimal places (e.g. $0.000150);
# ledger amounts keep 9 decimal places (docs/architecture.md, "Money").
PRICE_DIGITS, PRICE_PLACES = 18, 6
AMOUNT_DIGITS, AMOUNT_PLACES = 20, 9


class Model(models.Model):
    """A public model name tenants ask for, e.g. ``gpt-4.1``.

    Which providers serve it is the proxy's business (``proxy.Deployment``).
    """

    name = models.CharField(max_length=200, unique=True, help_text="Public id, e.g. gpt-4.1")
    owned_by = models.CharField(max_length=100, default="tollway", help_text="Shown in /v1/models")
    max_output_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(10_000_000)],
        help_text="The model's output cap. A larger max_tokens is refused; a request without one reserves this "
        "much output. Empty: TOLLWAY_DEFAULT_MAX_OUTPUT_TOKENS.",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.name


class Price(models.Model):
    """A model's list price from ``effective_from`` until the next price starts."""

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="prices")
    input_per_mtok = models.DecimalField(
        max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES, help_text="USD per million input tokens"
    )
    output_per_mtok = models.DecimalField(
        max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES, help_text="USD per million output tokens"
    )
    cached_input_per_mtok = models.DecimalField(
        max_digits=PRICE_DIGITS,
        decimal_places=PRICE_PLACES,
        null=True,
        blank=True,
        help_text="USD per million input tokens read from the provider's prompt cache; empty = the input price",
    )
    cache_write_per_mtok = models.DecimalField(
        max_digits=PRICE_DIGITS,
        decimal_places=PRICE_PLACES,
        null=True,
        blank=True,
        help_text="USD per million input tokens written to the prompt cache (Anthropic); empty = the input price",
    )
    request_fee = models.DecimalField(
        max_digits=PRICE_DIGITS,
        decimal_places=PRICE_PLACES,
        default=0,
        help_text="USD charged per request on top of the tokens (optional)",
    )
    batch_factor = models.DecimalField(
        max_digits=5,
        decimal_places=4,
        default=Decimal("0.5"),
        db_default=Decimal("0.5"),
        validators=[MinValueValidator(0), MaxValueValidator(1)],
        help_text="The share of this price a Batch API line pays (/v1/batches): 0.5 = half price, 1 = no discount",
    )
    effective_from = models.DateTimeField(
        default=timezone.now,
        help_text="The price runs from here until the model's next price starts. Two prices of a model "
        "may not start at the same instant: that would be an overlap.",
    )

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "effective_from"],
                name="price_unique_start",
                violation_error_message="This model already has a price starting at that instant; "
                "prices may not overlap. Change that price, or start this one at another time.",
            ),
            models.CheckConstraint(
                condition=models.Q(input_per_mtok__gte=0)
                & models.Q(output_per_mtok__gte=0)
                & (models.Q(cached_input_per_mtok__isnull=True) | models.Q(cached_input_per_mtok__gte=0))
                & (models.Q(cache_write_per_mtok__isnull=True) | models.Q(cache_write_per_mtok__gte=0))
                & models.Q(request_fee__gte=0),
                name="price_not_negative",
            ),
            models.CheckConstraint(
                condition=models.Q(batch_factor__gte=0) & models.Q(batch_factor__lte=1),
                name="price_batch_factor_share",
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.model}: ${self.input_per_mtok}/${self.output_per_mtok} per Mtok from {self.effective_from:%Y-%m-%d}"
        )


class UsageRecord(models.Model):
    """One row per billable upstream call. Append-only; ``request_id`` makes writes idempotent.

    The prices it was charged at are copied in, so a later price change never rewrites
    history, and the provider is kept as text so billing never depends on the transport.
    """

    class Api(models.TextChoices):
        """The inbound API a call came through: the wire format the tenant spoke."""

        CHAT = "chat", "Chat completions"
        COMPLETIONS = "completions", "Legacy completions"
        EMBEDDINGS = "embeddings", "Embeddings"
        MESSAGES = "messages", "Anthropic Messages"
        RESPONSES = "responses", "Responses"

    class Outcome(models.TextChoices):
        COMPLETED = "completed", "Completed"
        CLIENT_GONE = "client_disconnected", "Client disconnected"
        UPSTREAM_ERROR = "upstream_error", "Upstream failed mid-stream"
        RESERVATION_EXPIRED = "reservation_expired", "Worker lost; billed from the reservation"

    # Unique with created_at (see Meta): on Postgres the table is partitioned by created_at's
    # month, and a partitioned table's unique keys must hold the partition key. Every writer
    # of a call's row takes created_at from the call's admission (Call.created_at, carried
    # by the reservation and the spool), so a repeat of the same call always collides.
    request_id = models.CharField(max_length=64)  # no LIKE index: never searched by prefix
    created_at = models.DateTimeField(default=timezone.now)
    # Indexed by usage_tenant_time (tenant first); a second index would only slow every write.
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage_records", db_index=False)
    # No index: keys are never deleted (revoked instead), and reads go by tenant and time.
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.PROTECT, null=True, blank=True, related_name="usage_records", db_index=False
    )
    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="usage_records")
    provider = models.CharField(max_length=200)
    upstream_model = models.CharField(max_length=200)
    input_tokens = models.PositiveIntegerField(help_text="All prompt tokens, including the cached ones below")
    output_tokens = models.PositiveIntegerField(help_text="Completion tokens, reasoning included")
    cached_input_tokens = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Of input_tokens: read from the provider's prompt cache"
    )
    cache_write_tokens = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Of input_tokens: written to the provider's prompt cache (Anthropic)"
    )
    input_price_per_mtok = models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES)
    output_price_per_mtok = models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES)
    # The rates actually applied to the cached parts (the input price when the model has none).
    cached_input_price_per_mtok = models.DecimalField(
        max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES, null=True, blank=True
    )
    cache_write_price_per_mtok = models.DecimalField(
        max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES, null=True, blank=True
    )
    request_fee = models.DecimalField(
        max_digits=PRICE_DIGITS,
        decimal_places=PRICE_PLACES,
        default=0,
        db_default=0,
        help_text="The list per-request fee applied",
    )
    markup_percent = models.DecimalField(
        max_digits=7,
        decimal_places=3,
        default=0,
        db_default=0,
        help_text="The tenant plan's markup applied to the list cost",
    )
    cost = models.DecimalField(
        max_digits=AMOUNT_DIGITS, decimal_places=AMOUNT_PLACES, help_text="USD charged to the tenant"
    )
    upstream_cost = models.DecimalField(
        max_digits=AMOUNT_DIGITS,
        decimal_places=AMOUNT_PLACES,
        default=0,
        db_default=0,
        help_text="USD at list price (what the provider costs us); margin = cost - upstream_cost",
    )
    # Set when the row is billed: each row lands on exactly one invoice, so late usage is
    # whatever is still unbilled when a later invoice is drafted.
    # No index of its own: the month close updates every row of the month, and an index on
    # this column made that update 3x slower. Rows are found by tenant and time instead
    # (``usage_unbilled`` for unbilled ones; ``Invoice.billed_from`` bounds an invoice's).
    invoice = models.ForeignKey(
        "billing.Invoice",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="usage_records",
        db_index=False,
    )
    usage_estimated = models.BooleanField(
        default=False, help_text="The upstream reported no usage (e.g. a cut stream); tokens were counted by Tollway."
    )
    streamed = models.BooleanField(default=False)
    outcome = models.CharField(max_length=24, choices=Outcome.choices, default=Outcome.COMPLETED)
    latency_ms = models.PositiveIntegerField()
    # How the call was served (proxy routing): upstream attempts (0 for a cache hit), the
    # model the client asked for when a fallback model served it, and response-cache hits.
    attempts = models.PositiveSmallIntegerField(
        default=1, db_default=1, help_text="Upstream attempts; 0 = served from cache"
    )
    requested_model = models.CharField(
        max_length=200, blank=True, db_default="", help_text="The model asked for, when another (a fallback) served it"
    )
    cache_hit = models.BooleanField(default=False, db_default=False, help_text="Served from Tollway's response cache")
    # Rows written before this column existed were all chat, completions or embeddings;
    # their default says chat.
    api = models.CharField(
        max_length=16, choices=Api.choices, default=Api.CHAT, db_default=Api.CHAT, help_text="The inbound API called"
    )
    # A Batch API line (/v1/batches): its batch, and the share of the price it paid
    # (Price.batch_factor at the time). ``api`` is the line's endpoint, as for a live call.
    batch_id = models.CharField(
        max_length=64, blank=True, default="", db_default="", help_text="The batch this line belonged to, if any"
    )
    price_factor = models.DecimalField(
        max_digits=5,
        decimal_places=4,
        default=Decimal(1),
        db_default=Decimal(1),
        help_text="The share of the list price charged: 1 for live calls, the batch factor for batch lines",
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["request_id", "created_at"], name="usage_request_once")]
        indexes = [
            models.Index(fields=["tenant", "created_at"], name="usage_tenant_time"),
            # Only the rows no invoice has taken yet: this month's, and late ones.
            models.Index(
                fields=["tenant", "created_at"], condition=models.Q(invoice__isnull=True), name="usage_unbilled"
            ),
        ]

    def __str__(self) -> str:
        return self.request_id


class LedgerArchive(models.Model):
    """A month of the ledger archived to object storage (``billing.partitions``), its
    partition then dropped. The invoices that billed it stay; the file brings it back
    (``manage.py ledger restore``)."""

    month = models.CharField(max_length=7, help_text="YYYY-MM, a UTC month")
    file = models.CharField(max_length=500, help_text="The gzip-compressed CSV's name in the archive storage")
    rows = models.BigIntegerField()
    cost_usd = models.DecimalField(
        max_digits=AMOUNT_DIGITS + 4, decimal_places=AMOUNT_PLACES, help_text="The rows' cost: a check on the file"
    )
    compressed_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, help_text="Of the compressed file")
    archived_at = models.DateTimeField(default=timezone.now)
    restored_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["month"]

    def __str__(self) -> str:
        return f"ledger {self.month}"


class Payment(models.TextChoices):
    POSTPAID = "postpaid", "Postpaid (invoiced monthly)"
    PREPAID = "prepaid", "Prepaid (spends its credit balance)"


class Plan(models.Model):
    """What a tenant pays on top of list price: a markup, per-model markups, a monthly minimum.

    The plan decides prepaid or postpaid; each account on it copies that into
    ``Account.payment``, which the admission path reads (one cached row per tenant).
    """

    name = models.CharField(max_length=100, unique=True)
    markup_percent = models.DecimalField(
        max_digits=7,
        decimal_places=3,
        default=0,
        validators=[MinValueValidator(-100), MaxValueValidator(10_000)],
        help_text="Added to list price, e.g. 20 = list price x 1.20. Negative is a discount.",
    )
    monthly_minimum_usd = models.DecimalField(
        max_digits=14,
        decimal_places=2,
        default=0,
        validators=[MinValueValidator(0)],
        help_text="Platform fee: a month's usage below this is topped up to it on the invoice.",
    )
    payment = models.CharField(max_length=16, choices=Payment.choices, default=Payment.POSTPAID)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class PlanModelMarkup(models.Model):
    """A per-model override of the plan's markup."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="model_markups")
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="+")
    markup_percent = models.DecimalField(
        max_digits=7, decimal_places=3, validators=[MinValueValidator(-100), MaxValueValidator(10_000)]
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["plan", "model"], name="plan_model_markup_unique")]

    def __str__(self) -> str:
        return f"{self.plan} / {self.model}: {self.markup_percent}%"


class Account(models.Model):
    """A tenant's billing account: its plan and how it pays. Billing points at the tenant, not the reverse."""

    Payment = Payment

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="billing_account")
    plan = models.ForeignKey(
        Plan, on_delete=models.PROTECT, null=True, blank=True, related_name="accounts", help_text="Empty: list price"
    )
    payment = models.CharField(
        max_length=16,
        choices=Payment.choices,
        default=Payment.POSTPAID,
        help_text="Copied from the plan when there is one.",
    )

    def __str__(self) -> str:
        return f"{self.tenant} ({self.payment})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.plan_id is not None:
            self.payment = Plan.objects.values_list("payment", flat=True).get(pk=self.plan_id)
        super().save(*args, **kwargs)

    @property
    def prepaid(self) -> bool:
        return self.payment == self.Payment.PREPAID


class CreditEntry(models.Model):
    """The credit ledger: top-ups and adjustments, append-only. Balance = credits - spend."""

    class Kind(models.TextChoices):
        TOPUP = "topup", "Top-up"
        ADJUSTMENT = "adjustment", "Adjustment"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="credit_entries")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.TOPUP)
    amount_usd = models.DecimalField(
        max_digits=AMOUNT_DIGITS,
        decimal_places=AMOUNT_PLACES,
        validators=[MinValueValidator(-1_000_000_000), MaxValueValidator(1_000_000_000)],
        help_text="Positive adds credit; a negative adjustment removes it.",
    )
    note = models.CharField(max_length=500, blank=True)
    created_by = models.CharField(max_length=150, blank=True, help_text="Who recorded it")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "credit entries"
        constraints = [models.CheckConstraint(condition=~models.Q(amount_usd=0), name="credit_not_zero")]

    def __str__(self) -> str:
        return f"{self.tenant} {self.amount_usd:+}"


class Reservation(models.Model):
    """A budget reservation held in Postgres: used only when Redis is unreachable
    (and in the embedded default, which has no Redis). Deleted when the call settles."""

    request_id = models.CharField(max_length=64, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="reservations")
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, null=True, related_name="reservations")
    month = models.CharField(max_length=7, help_text="The tenant's billing month, YYYY-MM")
    amount_usd = models.DecimalField(max_digits=AMOUNT_DIGITS, decimal_places=AMOUNT_PLACES)
    record = models.JSONField(help_text="What the sweeper needs to bill it if the worker dies")
    deadline = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # The worker holding the call (``<host>-<pid>``, as billing.spool names it): when it
    # dies, the dead-worker reaper bills its reservations at once (billing.admission.sweeper).
    worker = models.CharField(max_length=200, blank=True, default="", db_index=True)

    def __str__(self) -> str:
        return self.request_id


class StaleCounters(models.Model):
    """A tenant whose Redis money counters may have missed something: admission or a
    settle ran without Redis for it. The durable half of the mark (each worker keeps the
    other half in memory, billing.admission.counters); the sweeper invalidates the
    tenant's counters in Redis and deletes the row, so a worker that died before it could
    do so is never forgotten. Written only when Redis fails, never on a healthy call."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, primary_key=True, related_name="+")
    generation = models.BigIntegerField(default=1, help_text="Bumped by every mark; deleted only if unchanged")
    since = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"stale counters of tenant {self.tenant_id}"


# --- invoices -----------------------------------------------------------------------------

CENT_DIGITS = 14
# Amounts in an invoice currency: up to 3 minor digits (BHD); 4 places hold any ISO 4217 one.
MONEY_DIGITS, MONEY_PLACES = 22, 4


# What a finalised invoice may still change: its payment state and who moved it. Everything
# else is frozen, here (Python), and by a Postgres trigger (migration 0009) as the last line.
INVOICE_STATE_FIELDS = frozenset(
    {"status", "paid_on", "payment_reference", "status_changed_at", "status_changed_by", "voided_at", "void_reason"}
)
# The payment state machine: open -> paid | uncollectible | void; uncollectible -> paid | void.
INVOICE_TRANSITIONS: dict[str, frozenset[str]] = {
    "open": frozenset({"paid", "uncollectible", "void"}),
    "uncollectible": frozenset({"paid", "void"}),
}


class InvoiceQuerySet(models.QuerySet["Invoice"]):
    """Refuses bulk ``update()`` and ``delete()`` that would touch a finalised invoice: state
    moves go through ``billing.payments.invoice_status_set`` one invoice at a time."""

    def update(self, **kwargs: Any) -> int:
        final = self.exclude(status=Invoice.Status.DRAFT).values_list("number", flat=True).first()
        if final is not None:
            raise DocumentFinal(f"Invoice {final} is final: a bulk update may not change it.")
        return super().update(**kwargs)

    def delete(self) -> tuple[int, dict[str, int]]:
        final = self.exclude(status=Invoice.Status.DRAFT).values_list("number", flat=True).first()
        if final is not None:
            raise DocumentFinal(f"Invoice {final} is final: it cannot be deleted. Correct it with a credit note.")
        return super().delete()


class Invoice(models.Model):
    """A tenant's invoice for one billing month: draft, then finalised (numbered, immutable).

    Once finalised only its payment state moves (``INVOICE_TRANSITIONS``): open, then paid,
    uncollectible or void. A finalised row's ``save()`` may change only
    ``INVOICE_STATE_FIELDS``, and its ``delete()`` raises :class:`config.errors.DocumentFinal`.

    Which ledger rows it bills is recorded on the rows (``UsageRecord.invoice``), so each
    row is billed exactly once, and usage that arrives after finalisation is simply still
    unbilled when the next invoice is drafted: it lands there as an adjustment line.
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        OPEN = "open", "Open (finalised, unpaid)"
        PAID = "paid", "Paid"
        UNCOLLECTIBLE = "uncollectible", "Uncollectible"
        VOID = "void", "Void"
        # The name before payment states existed: the value of OPEN, not a member of its own.
        FINALIZED = enum.nonmember("open")

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="invoices")
    period = models.CharField(max_length=7, help_text="The tenant's billing month, YYYY-MM")
    period_start = models.DateTimeField(help_text="UTC instant the month starts in the tenant's time zone")
    period_end = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT, db_index=True)
    number = models.CharField(max_length=32, unique=True, null=True, blank=True, help_text="Assigned at finalisation")
    currency = models.CharField(max_length=3, default="USD", help_text="The currency it is invoiced in")
    grace_until = models.DateTimeField(help_text="Late usage lands on the draft until then; then it is finalised")
    billed_from = models.DateTimeField(
        null=True, blank=True, help_text="The earliest ledger row it bills (before period_start when it has late ones)"
    )
    subtotal_usd = models.DecimalField(max_digits=CENT_DIGITS, decimal_places=2, default=0)
    credits_applied_usd = models.DecimalField(max_digits=CENT_DIGITS, decimal_places=2, default=0)
    total_usd = models.DecimalField(
        max_digits=CENT_DIGITS, decimal_places=2, default=0, help_text="Net: the sum of the lines, before tax"
    )
    tax_usd = models.DecimalField(max_digits=CENT_DIGITS, decimal_places=2, default=0, db_default=0)
    gross_usd = models.DecimalField(
        max_digits=CENT_DIGITS, decimal_places=2, default=0, db_default=0, help_text="Net plus tax"
    )
    # Tax, resolved at finalisation (the tenant's rate, else its country's default).
    tax_label = models.CharField(max_length=32, blank=True, db_default="")
    tax_rate_percent = models.DecimalField(max_digits=7, decimal_places=4, null=True, blank=True)
    reverse_charge = models.BooleanField(default=False, db_default=False)
    # The invoice currency: converted once, at finalisation, at the rate in effect then.
    fx_rate = models.DecimalField(
        max_digits=24, decimal_places=10, null=True, blank=True, help_text="Units of the currency per 1 USD"
    )
    fx_rate_date = models.DateField(null=True, blank=True, help_text="The day the rate took effect")
    net_amount = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES, null=True, blank=True)
    tax_amount = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES, null=True, blank=True)
    gross_amount = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES, null=True, blank=True)
    issue_date = models.DateField(null=True, blank=True, help_text="The tenant's local date of finalisation")
    due_date = models.DateField(null=True, blank=True)
    payment_terms_days = models.PositiveSmallIntegerField(null=True, blank=True)
    # Who issued it and to whom, as they were at finalisation: an invoice must not change
    # when the issuer's or the tenant's details do.
    issuer = models.JSONField(default=dict, blank=True, db_default={})
    bill_to = models.JSONField(default=dict, blank=True)
    replaces = models.OneToOneField(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="replaced_by", help_text="Reissue of"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    finalized_at = models.DateTimeField(null=True, blank=True)
    finalized_by = models.CharField(max_length=150, blank=True, db_default="")
    paid_on = models.DateField(null=True, blank=True, help_text="The day the payment arrived")
    payment_reference = models.CharField(max_length=200, blank=True, db_default="")
    status_changed_at = models.DateTimeField(null=True, blank=True)
    status_changed_by = models.CharField(max_length=150, blank=True, db_default="")
    voided_at = models.DateTimeField(null=True, blank=True)
    void_reason = models.CharField(max_length=500, blank=True)

    objects = InvoiceQuerySet.as_manager()
    _stored_status: str | None = None  # the status as last read from or written to the database

    class Meta:
        ordering = ["-period", "tenant_id", "-created_at"]
        constraints = [
            # One live invoice per tenant and month; a void one may be reissued.
            models.UniqueConstraint(
                fields=["tenant", "period"],
                condition=~models.Q(status="void"),
                name="invoice_one_live_per_month",
            ),
            models.CheckConstraint(
                condition=models.Q(status="draft", number__isnull=True) | models.Q(number__isnull=False),
                name="invoice_numbered_unless_draft",
            ),
        ]
        indexes = [models.Index(fields=["status", "grace_until"], name="invoice_status_grace")]

    def __str__(self) -> str:
        return self.number or f"draft {self.tenant} {self.period}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        stored: str | None = getattr(self, "_stored_status", None)
        if self.pk is not None and stored is not None and stored != self.Status.DRAFT:
            fields = kwargs.get("update_fields")
            if fields is None or not set(fields) <= INVOICE_STATE_FIELDS:
                raise DocumentFinal(
                    f"Invoice {self.number} is final: only its payment state can change "
                    "(billing.payments.invoice_status_set). Correct it with a credit note."
                )
            if self.status != stored and self.status not in INVOICE_TRANSITIONS.get(stored, frozenset()):
                raise DocumentFinal(f"Invoice {self.number} is {stored}: it cannot become {self.status}.")
        super().save(*args, **kwargs)
        self._stored_status = self.status

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        if getattr(self, "_stored_status", self.status) != self.Status.DRAFT:
            raise DocumentFinal(f"Invoice {self.number} is final: it cannot be deleted. Correct it with a credit note.")
        return super().delete(*args, **kwargs)

    @classmethod
    def from_db(cls, db: Any, field_names: Any, values: Any) -> Invoice:
        instance = super().from_db(db, field_names, values)
        instance._stored_status = instance.__dict__.get("status")
        return instance

    @property
    def is_draft(self) -> bool:
        return self.status == self.Status.DRAFT

    @property
    def is_final(self) -> bool:
        return self.status != self.Status.DRAFT

    def is_overdue(self, today: Any = None) -> bool:
        """Open and past its due date (in the tenant's own dates)."""
        if self.status != self.Status.OPEN or self.due_date is None:
            return False
        if today is None:
            import zoneinfo

            today = timezone.now().astimezone(zoneinfo.ZoneInfo(self.tenant.timezone)).date()
        return bool(self.due_date < today)


class InvoiceLineQuerySet(models.QuerySet["InvoiceLine"]):
    """Lines of a finalised invoice are frozen with it: no bulk update, delete or insert."""

    def _refuse_final(self, invoice_ids: Any) -> None:
        final = Invoice.objects.filter(pk__in=invoice_ids).exclude(status=Invoice.Status.DRAFT)
        number = final.values_list("number", flat=True).first()
        if number is not None:
            raise DocumentFinal(f"Invoice {number} is final: its lines cannot change.")

    def update(self, **kwargs: Any) -> int:
        self._refuse_final(self.values("invoice_id"))
        return super().update(**kwargs)

    def delete(self) -> tuple[int, dict[str, int]]:
        self._refuse_final(self.values("invoice_id"))
        return super().delete()

    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> list[InvoiceLine]:
        objs = list(objs)
        self._refuse_final({obj.invoice_id for obj in objs})
        return super().bulk_create(objs, *args, **kwargs)


class InvoiceLine(models.Model):
    """One line: a model's usage at one set of prices, an adjustment, the platform fee, or credit."""

    class Kind(models.TextChoices):
        USAGE = "usage", "Usage"
        ADJUSTMENT = "adjustment", "Late usage from an earlier month"
        PLATFORM_FEE = "platform_fee", "Platform fee (monthly minimum)"
        CREDIT = "credit", "Prepaid credit applied"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.CharField(max_length=300)
    model = models.ForeignKey(Model, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    usage_period = models.CharField(max_length=7, blank=True, help_text="The month the usage happened in")
    requests = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0, help_text="Uncached input tokens")
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    # The tenant's unit prices (list x markup), USD per million tokens, for reading the line.
    input_price_per_mtok = models.DecimalField(max_digits=24, decimal_places=9, null=True, blank=True)
    cached_input_price_per_mtok = models.DecimalField(max_digits=24, decimal_places=9, null=True, blank=True)
    output_price_per_mtok = models.DecimalField(max_digits=24, decimal_places=9, null=True, blank=True)
    exact_usd = models.DecimalField(
        max_digits=AMOUNT_DIGITS, decimal_places=AMOUNT_PLACES, default=0, help_text="The ledger sum, unrounded"
    )
    upstream_usd = models.DecimalField(max_digits=AMOUNT_DIGITS, decimal_places=AMOUNT_PLACES, default=0)
    amount_usd = models.DecimalField(
        max_digits=CENT_DIGITS, decimal_places=2, help_text="exact_usd rounded half-up to cents, once"
    )
    amount = models.DecimalField(
        max_digits=MONEY_DIGITS,
        decimal_places=MONEY_PLACES,
        null=True,
        blank=True,
        help_text="amount_usd in the invoice currency (set at finalisation), rounded to its minor unit",
    )

    objects = InvoiceLineQuerySet.as_manager()

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [models.UniqueConstraint(fields=["invoice", "position"], name="invoice_line_position")]

    def __str__(self) -> str:
        return f"{self.description}: {self.amount_usd}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        number = self._invoice_final()
        if number is not None:
            raise DocumentFinal(f"Invoice {number} is final: its lines cannot change.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        number = self._invoice_final()
        if number is not None:
            raise DocumentFinal(f"Invoice {number} is final: its lines cannot change.")
        return super().delete(*args, **kwargs)

    def _invoice_final(self) -> str | None:
        return (
            Invoice.objects.filter(pk=self.invoice_id).exclude(status="draft").values_list("number", flat=True).first()
        )


class InvoiceCounter(models.Model):
    """The last invoice number used in a year. Locked (SELECT … FOR UPDATE) to hand out the next."""

    year = models.PositiveIntegerField(primary_key=True)
    last = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.year}: {self.last}"


# --- credit notes -------------------------------------------------------------------------


class CreditNoteQuerySet(models.QuerySet["CreditNote"]):
    def update(self, **kwargs: Any) -> int:
        if self.exists():
            raise DocumentFinal("A credit note is final once issued: issue another to correct it.")
        return 0

    def delete(self) -> tuple[int, dict[str, int]]:
        if self.exists():
            raise DocumentFinal("A credit note is final once issued: it cannot be deleted.")
        return 0, {}


class CreditNote(models.Model):
    """A correction of a finalised invoice: whole, chosen lines, or an amount. Numbered
    ``CN-YYYY-NNNNNN`` (its own gapless series) and immutable from the moment it is issued:
    its lines are stored on the row itself (``lines``), so nothing can be added later."""

    class Kind(models.TextChoices):
        WHOLE = "whole", "Whole invoice"
        LINES = "lines", "Chosen lines"
        AMOUNT = "amount", "An amount"

    number = models.CharField(max_length=32, unique=True)
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="credit_notes")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    reason = models.CharField(max_length=500)
    currency = models.CharField(max_length=3)
    fx_rate = models.DecimalField(max_digits=24, decimal_places=10)
    fx_rate_date = models.DateField(null=True, blank=True)
    tax_label = models.CharField(max_length=32, blank=True)
    tax_rate_percent = models.DecimalField(max_digits=7, decimal_places=4)
    reverse_charge = models.BooleanField(default=False)
    net_usd = models.DecimalField(max_digits=CENT_DIGITS, decimal_places=2)
    tax_usd = models.DecimalField(max_digits=CENT_DIGITS, decimal_places=2)
    gross_usd = models.DecimalField(max_digits=CENT_DIGITS, decimal_places=2)
    net_amount = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES)
    tax_amount = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES)
    gross_amount = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES)
    lines = models.JSONField(help_text="What it credits: [{position, description, amount_usd, amount}]")
    issuer = models.JSONField(default=dict)
    bill_to = models.JSONField(default=dict)
    issue_date = models.DateField()
    issued_at = models.DateTimeField(default=timezone.now)
    issued_by = models.CharField(max_length=150, blank=True)

    objects = CreditNoteQuerySet.as_manager()

    class Meta:
        ordering = ["-issued_at"]
        constraints = [models.CheckConstraint(condition=models.Q(net_usd__gt=0), name="credit_note_positive")]

    def __str__(self) -> str:
        return self.number

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise DocumentFinal(f"Credit note {self.number} is final once issued: issue another to correct it.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise DocumentFinal(f"Credit note {self.number} is final once issued: it cannot be deleted.")


class CreditNoteCounter(models.Model):
    """The last credit note number used in a year, locked like :class:`InvoiceCounter`."""

    year = models.PositiveIntegerField(primary_key=True)
    last = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.year}: {self.last}"


# --- who issues, who is billed, tax and exchange rates -------------------------------------


class Issuer(models.Model):
    """The platform as the invoices' issuer: one row (``pk=1``), edited in the admin. The
    ``TOLLWAY_INVOICE_ISSUER`` setting is only the first default. Each invoice keeps a copy
    of it as it was at finalisation."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    legal_name = models.CharField(max_length=200)
    address = models.TextField(blank=True, help_text="One line per row, as printed")
    country = models.CharField(max_length=2, blank=True, validators=[validate_country], help_text="ISO 3166, e.g. DE")
    tax_id = models.CharField("tax id", max_length=64, blank=True, help_text="e.g. a VAT number, DE123456789")
    email = models.EmailField(blank=True, help_text="Shown on invoices; the From of invoice e-mails when set")
    payment_instructions = models.TextField(
        blank=True, help_text="Bank account (IBAN, BIC) or other payment instructions, as printed"
    )
    logo = models.ForeignKey(
        "billing.IssuerLogo", on_delete=models.PROTECT, null=True, blank=True, editable=False, related_name="+"
    )
    webhook_url = models.URLField(
        blank=True, help_text="The platform's own billing webhook: every tenant's events go here too"
    )
    webhook_secret = models.CharField(max_length=64, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="issuer_singleton")]

    def __str__(self) -> str:
        return self.legal_name

    def save(self, *args: Any, **kwargs: Any) -> None:
        _webhook_secret_fill(self)
        super().save(*args, **kwargs)


def _webhook_secret_fill(endpoint: Issuer | BillingProfile) -> None:
    """An endpoint gets its signing secret (``whsec_…``) the first time it has a URL."""
    if endpoint.webhook_url and not endpoint.webhook_secret:
        endpoint.webhook_secret = f"whsec_{secrets.token_urlsafe(24)}"


class IssuerLogo(models.Model):
    """A logo as uploaded, by its SHA-256: kept for good, so an invoice's snapshot of the issuer
    (which names its logo by hash) prints the same logo after the issuer uploads a new one."""

    sha256 = models.CharField(max_length=64, primary_key=True)
    data = models.BinaryField()
    content_type = models.CharField(max_length=32)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.sha256[:12]


class CountryTaxRate(models.Model):
    """The default tax rate of customers in a country (a tenant's own rate overrides it)."""

    country = models.CharField(max_length=2, unique=True, validators=[validate_country], help_text="ISO 3166, e.g. DE")
    rate_percent = models.DecimalField(
        max_digits=7, decimal_places=4, validators=[MinValueValidator(0), MaxValueValidator(100)]
    )
    label = models.CharField(max_length=32, default="VAT", help_text="Printed beside the rate: VAT, GST, sales tax")

    class Meta:
        ordering = ["country"]

    def __str__(self) -> str:
        return f"{self.country}: {self.label} {self.rate_percent}%"


class BillingProfile(models.Model):
    """Whom an invoice is addressed to and how it is taxed, paid and delivered.

    A one-to-one on the tenant, kept in ``billing`` because ``tenants`` may not import
    billing (docs/architecture.md, "Which app imports which"), and apart from :class:`Account`
    because the account is read on every call (admission caches it, and a change to it
    rebuilds the spend counters),
    while these details change on a finance person's schedule. The billing e-mail stays
    ``Tenant.billing_email``.
    """

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="billing_profile")
    legal_name = models.CharField(max_length=200, blank=True, help_text="Empty: the tenant's display name")
    address = models.TextField(blank=True, help_text="Billing address, one line per row")
    country = models.CharField(max_length=2, blank=True, validators=[validate_country], help_text="ISO 3166, e.g. DE")
    tax_id = models.CharField("tax id", max_length=64, blank=True, help_text="The customer's VAT or tax number")
    payment_terms_days = models.PositiveSmallIntegerField(
        default=30, validators=[MaxValueValidator(365)], help_text="Due this many days after the issue date"
    )
    tax_rate_percent = models.DecimalField(
        max_digits=7,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(0), MaxValueValidator(100)],
        help_text="Empty: the country's default rate (Country tax rates)",
    )
    reverse_charge = models.BooleanField(
        default=False, help_text="The customer accounts for the tax (EU B2B): rate 0 with a reverse-charge note"
    )
    currency = models.CharField(
        max_length=3, default="USD", validators=[validate_currency], help_text="Invoice currency (ISO 4217)"
    )
    webhook_url = models.URLField(blank=True, help_text="Billing events are POSTed here, signed")
    webhook_secret = models.CharField(max_length=64, blank=True, editable=False)
    alert_thresholds = models.JSONField(
        default=list,
        blank=True,
        help_text="Percentages of the monthly budget that send an alert, e.g. [50, 80, 100]. Empty: the defaults.",
    )
    low_balance_usd = models.DecimalField(
        max_digits=14,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Prepaid: alert when the credit balance falls below this",
    )

    def __str__(self) -> str:
        return f"billing profile of {self.tenant}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        _webhook_secret_fill(self)
        super().save(*args, **kwargs)


class ExchangeRate(models.Model):
    """How many units of ``currency`` one USD buys, from ``effective_date`` until the next rate."""

    currency = models.CharField(max_length=3, validators=[validate_currency])
    rate = models.DecimalField(
        max_digits=24, decimal_places=10, validators=[MinValueValidator(Decimal("0.0000000001"))]
    )
    effective_date = models.DateField()
    note = models.CharField(max_length=200, blank=True, help_text="Its source, e.g. ECB reference rate")
    created_by = models.CharField(max_length=150, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["currency", "-effective_date"]
        constraints = [
            models.UniqueConstraint(fields=["currency", "effective_date"], name="fx_one_rate_per_day"),
            models.CheckConstraint(condition=models.Q(rate__gt=0), name="fx_rate_positive"),
        ]

    def __str__(self) -> str:
        return f"1 USD = {self.rate} {self.currency} from {self.effective_date}"


# --- delivery: e-mails, webhooks, alerts ---------------------------------------------------


class WebhookEvent(models.Model):
    """A billing event (``invoice.finalized``, ``invoice.paid``, ``credit_note.created``,
    ``spend.threshold``, ``balance.low``), kept with the body that was signed and sent."""

    event_id = models.CharField(max_length=40, unique=True)
    type = models.CharField(max_length=40)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class Delivery(models.Model):
    """One attempt to deliver a document or event: an e-mail or a webhook POST, and its result."""

    class Channel(models.TextChoices):
        EMAIL = "email", "E-mail"
        WEBHOOK = "webhook", "Webhook"

    channel = models.CharField(max_length=8, choices=Channel.choices)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries")
    credit_note = models.ForeignKey(
        CreditNote, on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries"
    )
    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries")
    what = models.CharField(max_length=60, help_text="The event type, or the document e-mailed")
    target = models.CharField(max_length=500, help_text="The address or URL")
    attempt = models.PositiveSmallIntegerField()
    ok = models.BooleanField()
    detail = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.channel} {self.what} to {self.target}: {'ok' if self.ok else 'failed'}"


class SpendAlert(models.Model):
    """A spend threshold crossed in a month: unique, so concurrent crossers alert once."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    month = models.CharField(max_length=7)
    threshold = models.CharField(max_length=16, help_text="A percentage of the budget, or low_balance")
    spend_usd = models.DecimalField(max_digits=AMOUNT_DIGITS, decimal_places=AMOUNT_PLACES)
    limit_usd = models.DecimalField(max_digits=AMOUNT_DIGITS, decimal_places=AMOUNT_PLACES, null=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "month", "threshold"], name="spend_alert_once_per_month")
        ]

    def __str__(self) -> str:
        return f"{self.tenant} {self.month} {self.threshold}"


# --- rollups and reports ---------------------------------------------------------------------


class UsageRollup(models.Model):
    """Usage per tenant, key, model and day (the tenant's local date). Rebuilt from the ledger,
    a day at a time, so re-running is harmless."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    requests = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=AMOUNT_DIGITS, decimal_places=AMOUNT_PLACES, default=0)
    upstream_cost = models.DecimalField(max_digits=AMOUNT_DIGITS, decimal_places=AMOUNT_PLACES, default=0)

    class Meta:
        indexes = [models.Index(fields=["tenant", "day"], name="rollup_tenant_day")]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.day} {self.model_id}"


class RollupState(models.Model):
    """Through which local day a tenant's rollups are complete; later days are read live."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, primary_key=True, related_name="+")
    rolled_through = models.DateField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.tenant_id} through {self.rolled_through}"


class Report(models.Model):
    """A generated cost report (statement or margin report), kept so finance can download it."""

    class Kind(models.TextChoices):
        STATEMENT = "statement", "Monthly statement"
        MARGIN = "margin", "Platform margin by model and provider"
        INVOICES = "invoices", "All invoices of a month"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    period = models.CharField(max_length=7)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    csv = models.TextField()
    html = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-period", "kind"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "period", "tenant"], condition=models.Q(tenant__isnull=False), name="report_per_tenant"
            ),
            models.UniqueConstraint(
                fields=["kind", "period"], condition=models.Q(tenant__isnull=True), name="report_platform"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.period}"
