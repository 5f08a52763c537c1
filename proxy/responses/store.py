"""Stored responses: kept per tenant when ``store`` is true (OpenAI's default), read by
``GET /v1/responses/{id}``, ``input_items`` and a later ``previous_response_id``, deleted
after ``TOLLWAY_RESPONSES_RETENTION_DAYS`` (``proxy.tasks.expire_responses``).

Every read is scoped to the tenant: another tenant's id answers 404, exactly as an id
that never existed. Tollway expands ``previous_response_id`` itself, from this store, into
the conversation it sends upstream, so it works for every provider (a translated one has
no state of its own) and no provider ever sees Tollway's ids.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from config.errors import NotFound
from proxy.models import StoredResponse

MAX_CONVERSATION = 1000  # responses in one chain: bounds the history a request expands


def not_found(response_id: str, param: str | None = None) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param=param)


def stored_responses(*, tenant_pk: int) -> QuerySet[StoredResponse]:
    """The tenant's stored responses still within retention."""
    cutoff = timezone.now() - timedelta(days=int(settings.TOLLWAY["RESPONSES_RETENTION_DAYS"]))
    return StoredResponse.objects.filter(tenant_id=tenant_pk, created_at__gte=cutoff)


def _plausible(response_id: str) -> bool:
    """Whether an id could be stored at all (Postgres refuses NUL in a query)."""
    return 0 < len(response_id) <= 64 and "\x00" not in response_id


def stored_response_get(*, tenant_pk: int, response_id: str, param: str | None = None) -> StoredResponse:
    if not _plausible(response_id):
        raise not_found(response_id[:64], param)
    row = stored_responses(tenant_pk=tenant_pk).filter(response_id=response_id).first()
    if row is None:
        raise not_found(response_id, param)
    return row


def _carried(item: dict[str, Any]) -> dict[str, Any] | None:
    """A stored item as input for the next turn. Item ids are dropped (they name items of
    whichever provider answered, which the next provider may not know), and so are
    reasoning items without ``encrypted_content``, which no provider can take back."""
    kind = item.get("type", "message")
    if kind == "reasoning":
        if not item.get("encrypted_content"):
            return None
        return {k: v for k, v in item.items() if k != "status"}
    carried = {k: v for k, v in item.items() if k not in ("id", "status")}
    if kind == "message" and carried.get("role") == "assistant":
        carried["content"] = [
            {k: v for k, v in part.items() if k in ("type", "text", "refusal", "annotations")}
            for part in carried.get("content") or []
            if isinstance(part, dict)
        ]
    return carried


def conversation(*, tenant_pk: int, response_id: str) -> tuple[StoredResponse, list[dict[str, Any]]]:
    """The stored response ``response_id`` and the conversation up to and including its
    output, as input items: one query for the whole chain (its rows share ``root_id``)."""
    last = stored_response_get(tenant_pk=tenant_pk, response_id=response_id, param="previous_response_id")
    rows = {
        row.pk: row
        for row in stored_responses(tenant_pk=tenant_pk)
        .filter(root_id=last.root_id)
        .only("pk", "previous_id", "input_items", "body")[: MAX_CONVERSATION * 4]
    }
    chain: list[StoredResponse] = []
    row: StoredResponse | None = last
    while row is not None and len(chain) < MAX_CONVERSATION:
        chain.append(row)
        row = rows.get(row.previous_id) if row.previous_id is not None else None
    items: list[dict[str, Any]] = []
    for row in reversed(chain):
        for item in [*row.input_items, *(row.body.get("output") or [])]:
            carried = _carried(item)
            if carried is not None:
                items.append(carried)
    return last, items


def stored_response_create(
    *,
    tenant_pk: int,
    response_id: str,
    root_id: str,
    previous_pk: int | None,
    body: dict[str, Any],
    input_items: list[dict[str, Any]],
) -> StoredResponse:
    return StoredResponse.objects.create(
        response_id=response_id,
        tenant_id=tenant_pk,
        previous_id=previous_pk,
        root_id=root_id,
        created_at=timezone.now(),
        body=body,
        input_items=input_items,
        instructions=str(body.get("instructions") or ""),
    )


def stored_response_delete(*, tenant_pk: int, response_id: str) -> None:
    if not _plausible(response_id):
        raise not_found(response_id[:64])
    deleted, _ = stored_responses(tenant_pk=tenant_pk).filter(response_id=response_id).delete()
    if not deleted:
        raise not_found(response_id)


def stored_responses_expire(*, batch: int = 1000) -> int:
    """Delete responses past retention, in bounded batches; returns how many went."""
    cutoff = timezone.now() - timedelta(days=int(settings.TOLLWAY["RESPONSES_RETENTION_DAYS"]))
    total = 0
    while True:
        pks = list(StoredResponse.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[:batch])
        if not pks:
            return total
        total += StoredResponse.objects.filter(pk__in=pks).delete()[0]
