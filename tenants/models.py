"""Identity: tenants and their API keys."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.timezone import now

from tenants import keys
from tenants.validators import (
    DEFAULT_SCOPES,
    validate_cidrs,
    validate_model_globs,
    validate_scopes,
    validate_timezone,
)


def _default_scopes() -> list[str]:
    return list(DEFAULT_SCOPES)


# Upper bounds that catch a typo (an extra three zeros) before it disables a limit.
MAX_RPM = 10_000_000
MAX_TPM = 10_000_000_000
MAX_CONCURRENT = 1_000_000
MAX_BUDGET_USD = 1_000_000_000


def rpm_field() -> models.PositiveIntegerField:
    return models.PositiveIntegerField(
        "requests per minute", null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(MAX_RPM)]
    )


def tpm_field() -> models.PositiveBigIntegerField:
    return models.PositiveBigIntegerField(
        "tokens per minute", null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(MAX_TPM)]
    )


def concurrency_field() -> models.PositiveIntegerField:
    return models.PositiveIntegerField(
        "max concurrent requests",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_CONCURRENT)],
    )


def budget_field(help_text: str) -> models.DecimalField:
    return models.DecimalField(
        max_digits=14,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(0), MaxValueValidator(MAX_BUDGET_USD)],
        help_text=help_text,
    )


class Tenant(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    class Currency(models.TextChoices):
        USD = "USD", "US dollar"

    slug = models.SlugField(max_length=64, unique=True, help_text="Stable identifier, e.g. 'acme'.")
    name = models.CharField("display name", max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    billing_email = models.EmailField(blank=True)
    currency = models.CharField(max_length=3, choices=Currency.choices, default=Currency.USD)
    timezone = models.CharField(
        max_length=64, default="UTC", validators=[validate_timezone], help_text="Its billing month runs in this zone."
    )
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_model_globs],
        help_text="Model patterns such as 'gpt-4.1*'. Empty allows every model.",
    )
    monthly_budget_usd = budget_field("Hard cap on spend per billing month, in USD. Empty means no cap.")
    rpm_limit = rpm_field()
    tpm_limit = tpm_field()
    max_concurrent = concurrency_field()
    response_cache = models.CharField(
        max_length=16,
        blank=True,
        choices=[("off", "Off"), ("deterministic", "Deterministic requests"), ("all", "All requests")],
        help_text="Tollway's response cache for this tenant's keys: 'deterministic' serves repeats of requests "
        "with temperature 0; 'all' any repeat. Empty or off: only when a request asks (x-tollway-cache).",
    )
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class ApiKey(models.Model):
    """A tenant's API key. Only the SHA-256 of the key is stored; see ``tenants.keys``."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200, blank=True)
    key_id = models.CharField(max_length=32, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    last4 = models.CharField(max_length=4, editable=False)
    # After a rotation the old secret keeps working until previous_expires_at.
    previous_secret_hash = models.CharField(max_length=64, blank=True, editable=False)
    previous_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    scopes = models.JSONField(default=_default_scopes, validators=[validate_scopes])
    allowed_models = models.JSONField(
        default=list, blank=True, validators=[validate_model_globs], help_text="Model patterns; empty allows all."
    )
    allowed_ips = models.JSONField(
        default=list, blank=True, validators=[validate_cidrs], help_text="Client IPs or CIDRs; empty allows all."
    )
    rpm_limit = rpm_field()
    tpm_limit = tpm_field()
    max_concurrent = concurrency_field()
    monthly_budget_usd = budget_field("This key's cap per billing month, within the tenant's.")
    response_cache = models.CharField(
        max_length=16,
        blank=True,
        choices=[("off", "Off"), ("deterministic", "Deterministic requests"), ("all", "All requests")],
        help_text="The response cache for this key; empty follows the tenant.",
    )
    created_at = models.DateTimeField(default=now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Set on a user's playground key (tenants.services.playground_key_get): the web
    # playground's calls are billed through it, so each ledger row names the user.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        editable=False,
        related_name="playground_keys",
        help_text="The dashboard user whose playground key this is.",
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return self.display

    @property
    def display(self) -> str:
        return keys.display(self.key_id, self.last4)

    def clean(self) -> None:
        if self._state.adding and self.expires_at is not None and self.expires_at <= now():
            raise ValidationError({"expires_at": "The expiry must be in the future."})

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class Membership(models.Model):
    """A dashboard user belongs to exactly one tenant, with one role.

    Owners manage keys; developers use the playground; billing users see spend and invoices.
    Everyone sees the dashboard.
    """

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        DEVELOPER = "developer", "Developer"
        BILLING = "billing", "Billing"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.DEVELOPER)
    created_at = models.DateTimeField(default=now, editable=False)

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant} ({self.role})"

    @property
    def can_manage_keys(self) -> bool:
        return self.role == self.Role.OWNER

    @property
    def can_chat(self) -> bool:
        return self.role in (self.Role.OWNER, self.Role.DEVELOPER)
