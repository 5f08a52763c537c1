"""Money: what is sold (models and their prices) and the usage ledger."""

from __future__ import annotations

from typing import Any

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

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

    request_id = models.CharField(max_length=64)  # unique: see Meta (no LIKE index, never searched by prefix)
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

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["request_id"], name="usage_request_id_unique")]
        indexes = [
            models.Index(fields=["tenant", "created_at"], name="usage_tenant_time"),
            # Only the rows no invoice has taken yet: this month's, and late ones.
            models.Index(
                fields=["tenant", "created_at"], condition=models.Q(invoice__isnull=True), name="usage_unbilled"
            ),
        ]

    def __str__(self) -> str:
        return self.request_id


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

    def __str__(self) -> str:
        return self.request_id


# --- invoices -----------------------------------------------------------------------------

CENT_DIGITS = 14


class Invoice(models.Model):
    """A tenant's invoice for one billing month: draft, then finalised (numbered, immutable), maybe void.

    Which ledger rows it bills is recorded on the rows (``UsageRecord.invoice``), so each
    row is billed exactly once, and usage that arrives after finalisation is simply still
    unbilled when the next invoice is drafted: it lands there as an adjustment line.
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        FINALIZED = "finalized", "Finalised"
        VOID = "void", "Void"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="invoices")
    period = models.CharField(max_length=7, help_text="The tenant's billing month, YYYY-MM")
    period_start = models.DateTimeField(help_text="UTC instant the month starts in the tenant's time zone")
    period_end = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT, db_index=True)
    number = models.CharField(max_length=32, unique=True, null=True, blank=True, help_text="Assigned at finalisation")
    currency = models.CharField(max_length=3, default="USD")
    grace_until = models.DateTimeField(help_text="Late usage lands on the draft until then; then it is finalised")
    billed_from = models.DateTimeField(
        null=True, blank=True, help_text="The earliest ledger row it bills (before period_start when it has late ones)"
    )
    subtotal_usd = models.DecimalField(max_digits=CENT_DIGITS, decimal_places=2, default=0)
    credits_applied_usd = models.DecimalField(max_digits=CENT_DIGITS, decimal_places=2, default=0)
    total_usd = models.DecimalField(max_digits=CENT_DIGITS, decimal_places=2, default=0)
    # What the tenant was, at finalisation: an invoice must not change when the tenant does.
    bill_to = models.JSONField(default=dict, blank=True)
    replaces = models.OneToOneField(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="replaced_by", help_text="Reissue of"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    finalized_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    void_reason = models.CharField(max_length=500, blank=True)

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

    @property
    def is_draft(self) -> bool:
        return self.status == self.Status.DRAFT


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

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [models.UniqueConstraint(fields=["invoice", "position"], name="invoice_line_position")]

    def __str__(self) -> str:
        return f"{self.description}: {self.amount_usd}"


class InvoiceCounter(models.Model):
    """The last invoice number used in a year. Locked (SELECT … FOR UPDATE) to hand out the next."""

    year = models.PositiveIntegerField(primary_key=True)
    last = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.year}: {self.last}"


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
