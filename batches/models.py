"""The Batch API's state: uploaded files, batches and their lines.

A batch runs as its lines (``BatchLine``): each is claimed, run through the live request
path and finished once, so a worker killed mid-batch is resumed from its lines' states.
Money is never stored here twice: each line's cost is the ledger row's
(``UsageRecord.batch_id`` names the batch), copied onto the line for the batch's totals.
"""

from __future__ import annotations

import secrets

from django.db import models
from django.utils import timezone

from billing.models import AMOUNT_DIGITS, AMOUNT_PLACES
from tenants.models import ApiKey, Tenant


def _file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def _batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


class File(models.Model):
    """A tenant's file: an uploaded batch input, or a batch's output or error file."""

    class Purpose(models.TextChoices):
        BATCH = "batch", "Batch input"
        BATCH_OUTPUT = "batch_output", "Batch output"

    public_id = models.CharField(max_length=40, unique=True, default=_file_id, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="files")
    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    filename = models.CharField(max_length=255)
    bytes = models.PositiveBigIntegerField()
    requests = models.PositiveIntegerField(default=0, help_text="Lines in an input file")
    storage_name = models.CharField(max_length=300, help_text="Its name in the files storage")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["tenant", "-created_at"], name="file_tenant_time")]

    def __str__(self) -> str:
        return self.public_id


class Batch(models.Model):
    """A batch of requests to one endpoint, run by Celery within its completion window."""

    class Status(models.TextChoices):
        VALIDATING = "validating"
        FAILED = "failed"
        IN_PROGRESS = "in_progress"
        FINALIZING = "finalizing"
        COMPLETED = "completed"
        EXPIRED = "expired"
        CANCELLING = "cancelling"
        CANCELLED = "cancelled"

    # Where a batch still has work (the runner's and the sweeper's business).
    OPEN = (Status.VALIDATING, Status.IN_PROGRESS, Status.FINALIZING, Status.CANCELLING)

    public_id = models.CharField(max_length=40, unique=True, default=_batch_id, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="batches")
    # Lines run as this key: its model allow-list, limits and budget.
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="batches")
    endpoint = models.CharField(max_length=40)
    completion_window = models.CharField(max_length=8, default="24h")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.VALIDATING)
    metadata = models.JSONField(null=True, blank=True)
    errors = models.JSONField(null=True, blank=True, help_text="Validation errors, OpenAI's shape")
    input_file = models.ForeignKey(File, on_delete=models.SET_NULL, null=True, related_name="+")
    input_file_public_id = models.CharField(max_length=40)
    output_file = models.ForeignKey(File, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    error_file = models.ForeignKey(File, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(
        max_digits=AMOUNT_DIGITS, decimal_places=AMOUNT_PLACES, default=0, help_text="USD charged so far"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    # The worker running it holds a lease; once it lapses (the worker died) another resumes it.
    lease_until = models.DateTimeField(null=True, blank=True)
    nudged_at = models.DateTimeField(null=True, blank=True, help_text="Last enqueued")

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name_plural = "batches"
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="batch_tenant_time"),
            models.Index(
                fields=["status"],
                name="batch_open",
                condition=models.Q(status__in=["validating", "in_progress", "finalizing", "cancelling"]),
            ),
        ]

    def __str__(self) -> str:
        return self.public_id


class BatchLine(models.Model):
    """One request of a batch, from its input line to its answer or error."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"  # answered (the provider's 200): in the output file
        FAILED = "failed"  # refused or failed: in the error file
        EXPIRED = "expired"  # not run within the window: in the error file

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="lines")
    line = models.PositiveIntegerField(help_text="1-based line number in the input file")
    custom_id = models.CharField(max_length=512)
    request_id = models.CharField(max_length=64, help_text="Derived from the batch and custom_id; the ledger's")
    body = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Times a worker started it")
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    cost = models.DecimalField(max_digits=AMOUNT_DIGITS, decimal_places=AMOUNT_PLACES, null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["batch", "line"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "line"], name="batch_line_unique"),
            models.UniqueConstraint(fields=["batch", "custom_id"], name="batch_custom_id_unique"),
        ]
        indexes = [models.Index(fields=["batch", "status", "line"], name="batch_line_status")]

    def __str__(self) -> str:
        return f"{self.batch_id}:{self.line}"
