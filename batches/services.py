"""Batch API actions: create, cancel, and the state moves the runner makes."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from batches import validate
from batches.models import Batch, File
from config.errors import Conflict, InvalidRequest, NotFound
from tenants.selectors import KeyPrincipal

WINDOWS = {"24h": timedelta(hours=24)}
MAX_METADATA = 16


def line_request_id(batch_public_id: str, custom_id: str) -> str:
    """A line's request id, the ledger's key: derived from the batch and the custom_id,
    so a resumed line can never be billed twice."""
    digest = hashlib.sha256(f"{batch_public_id}\x00{custom_id}".encode()).hexdigest()
    return f"batch_req_{digest[:40]}"


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        or any(len(k) > 64 or len(v) > 512 or "\x00" in k + v for k, v in value.items())
    ):
        raise InvalidRequest(
            f"'metadata' must be an object of at most {MAX_METADATA} string values: keys up to 64 characters, "
            "values up to 512.",
            param="metadata",
        )
    return value


def batch_create(*, principal: KeyPrincipal, body: dict[str, Any]) -> Batch:
    """A batch of the tenant's uploaded ``input_file_id`` against ``endpoint``, validated
    and run by Celery (``batches.tasks``) once this commits."""
    from batches import tasks

    for name in ("input_file_id", "endpoint", "completion_window"):
        if body.get(name) is None:
            raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
    endpoint = body["endpoint"]
    if endpoint not in validate.PARSERS:
        raise InvalidRequest(
            f"'endpoint' must be one of: {', '.join(validate.PARSERS)}.",
            param="endpoint",
        )
    window = body["completion_window"]
    if window not in WINDOWS:
        raise InvalidRequest("'completion_window' must be \"24h\".", param="completion_window")
    metadata = _metadata(body.get("metadata"))
    file_id = body["input_file_id"]
    if not isinstance(file_id, str):
        raise InvalidRequest("'input_file_id' must be a file id, from POST /v1/files.", param="input_file_id")
    file = File.objects.filter(tenant_id=principal.tenant_pk, public_id=file_id).first()
    if file is None:
        raise NotFound(f"No such File object: {file_id[:64]}", param="input_file_id")
    if file.purpose != File.Purpose.BATCH:
        raise InvalidRequest(
            f"File {file.public_id} has purpose '{file.purpose}'; a batch needs a file uploaded with purpose 'batch'.",
            param="input_file_id",
        )
    now = timezone.now()
    with transaction.atomic():
        batch = Batch.objects.create(
            tenant_id=principal.tenant_pk,
            api_key_id=principal.api_key_pk,
            endpoint=endpoint,
            completion_window=window,
            metadata=metadata,
            input_file=file,
            input_file_public_id=file.public_id,
            total=file.requests,
            created_at=now,
            expires_at=now + WINDOWS[window],
        )
        tasks.enqueue(batch)
    return batch


def batch_cancel(*, batch: Batch) -> Batch:
    """Stop a batch: no new line starts; lines in flight finish and are billed; then it is
    ``cancelled``, with an output file of what was answered. Cancelling twice is harmless."""
    from batches import tasks

    with transaction.atomic():
        moved = Batch.objects.filter(
            pk=batch.pk, status__in=[Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS]
        ).update(status=Batch.Status.CANCELLING, cancelling_at=timezone.now())
        batch.refresh_from_db()
        if not moved and batch.status not in (Batch.Status.CANCELLING, Batch.Status.CANCELLED):
            raise Conflict(f"Batch {batch.public_id} is {batch.status}: only a running batch can be cancelled.")
        if moved:
            tasks.enqueue(batch)  # a runner finalises it, after what is in flight
    return batch


def batch_counts(*, batch_id: int, completed: int = 0, failed: int = 0, cost: Any = 0) -> None:
    """Move a batch's ``request_counts`` and cost: one statement, safe under concurrent lines."""
    Batch.objects.filter(pk=batch_id).update(
        completed=F("completed") + completed, failed=F("failed") + failed, cost=F("cost") + cost
    )
