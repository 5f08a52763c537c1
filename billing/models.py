"""Money: what is sold (models and their prices) and the usage ledger."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from tenants.models import ApiKey, Tenant

# Prices are USD per million tokens with up to 6 decimal places (e.g. $0.000150);
# ledger amounts keep 9 decimal places (ARCHITECTURE.md §4).
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
    effective_from = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="price_unique_start"),
            models.CheckConstraint(
                condition=models.Q(input_per_mtok__gte=0)
                & models.Q(output_per_mtok__gte=0)
                & (models.Q(cached_input_per_mtok__isnull=True) | models.Q(cached_input_per_mtok__gte=0))
                & (models.Q(cache_write_per_mtok__isnull=True) | models.Q(cache_write_per_mtok__gte=0)),
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

    class Outcome(models.TextChoices):
        COMPLETED = "completed", "Completed"
        CLIENT_GONE = "client_disconnected", "Client disconnected"
        UPSTREAM_ERROR = "upstream_error", "Upstream failed mid-stream"
        RESERVATION_EXPIRED = "reservation_expired", "Worker lost; billed from the reservation"

    request_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage_records")
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, null=True, blank=True, related_name="usage_records")
    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="usage_records")
    provider = models.CharField(max_length=200)
    upstream_model = models.CharField(max_length=200)
    input_tokens = models.PositiveIntegerField(help_text="All prompt tokens, including the cached ones below")
    output_tokens = models.PositiveIntegerField(help_text="Completion tokens, reasoning included")
    cached_input_tokens = models.PositiveIntegerField(
        default=0, help_text="Of input_tokens: read from the provider's prompt cache"
    )
    cache_write_tokens = models.PositiveIntegerField(
        default=0, help_text="Of input_tokens: written to the provider's prompt cache (Anthropic)"
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
    cost = models.DecimalField(
        max_digits=AMOUNT_DIGITS, decimal_places=AMOUNT_PLACES, help_text="USD charged to the tenant"
    )
    usage_estimated = models.BooleanField(
        default=False, help_text="The upstream reported no usage (e.g. a cut stream); tokens were counted by Tollway."
    )
    streamed = models.BooleanField(default=False)
    outcome = models.CharField(max_length=24, choices=Outcome.choices, default=Outcome.COMPLETED)
    latency_ms = models.PositiveIntegerField()
    # How the call was served (proxy routing): upstream attempts (0 for a cache hit), the
    # model the client asked for when a fallback model served it, and response-cache hits.
    attempts = models.PositiveSmallIntegerField(default=1, help_text="Upstream attempts; 0 = served from cache")
    requested_model = models.CharField(
        max_length=200, blank=True, help_text="The model asked for, when another (a fallback) served it"
    )
    cache_hit = models.BooleanField(default=False, help_text="Served from Tollway's response cache")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "created_at"], name="usage_tenant_time")]

    def __str__(self) -> str:
        return self.request_id


class Account(models.Model):
    """A tenant's billing account: how it pays. Billing points at the tenant, not the reverse."""

    class Payment(models.TextChoices):
        POSTPAID = "postpaid", "Postpaid (invoiced monthly)"
        PREPAID = "prepaid", "Prepaid (spends its credit balance)"

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="billing_account")
    payment = models.CharField(max_length=16, choices=Payment.choices, default=Payment.POSTPAID)

    def __str__(self) -> str:
        return f"{self.tenant} ({self.payment})"

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
