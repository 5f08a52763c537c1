"""The tenant's request log (filtered, paged), its usage as a streamed CSV, and its price list.

Session-authenticated pages (``tenants.web.member_required``). Every read starts from the
logged-in user's tenant, so another tenant's key or row id answers 404.
"""

from __future__ import annotations

import csv
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone

from billing.models import Model, Plan, UsageRecord
from billing.selectors import UsageFilter, tenant_price_list, usage_log
from tenants.models import ApiKey, Membership, Tenant
from tenants.web import member_required

PAGE_SIZE = 50
CSV_CHUNK = 2_000
CSV_COLUMNS = (
    "created_at_utc",
    "request_id",
    "model",
    "requested_model",
    "api",
    "key",
    "key_name",
    "user",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "cost_usd",
    "outcome",
    "streamed",
    "usage_estimated",
    "cache_hit",
    "latency_ms",
)


class BadFilter(ValueError):
    """A filter value the page cannot read (a malformed date): said on the page, 400."""


def _date(raw: str, name: str) -> date | None:
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise BadFilter(f"'{raw}' is not a date for '{name}': use YYYY-MM-DD, e.g. 2026-11-01.") from None


def usage_filter(tenant: Tenant, params: QueryDict) -> UsageFilter:
    """Read the filters from the query string. A model or key the tenant cannot see is a
    404 (another tenant's key id is not found, as on every page); a bad value is
    ``BadFilter``. Dates are the tenant's local days, both ends included."""
    model_id = api_key_id = None
    if name := params.get("model", "").strip():
        found = Model.objects.filter(name=name).values_list("pk", flat=True).first()
        if found is None:
            raise Http404("No such model.")
        model_id = found
    if key_id := params.get("key", "").strip():
        found = ApiKey.objects.filter(tenant=tenant, key_id=key_id).values_list("pk", flat=True).first()
        if found is None:
            raise Http404("No such key.")
        api_key_id = found
    outcome = params.get("outcome", "").strip() or None
    if outcome is not None and outcome not in UsageRecord.Outcome.values:
        raise BadFilter(f"'{outcome}' is not an outcome: use one of {', '.join(UsageRecord.Outcome.values)}.")
    zone = zoneinfo.ZoneInfo(tenant.timezone)
    first, last = _date(params.get("from", "").strip(), "from"), _date(params.get("to", "").strip(), "to")
    if first and last and last < first:
        raise BadFilter("'to' is before 'from': the log would be empty.")
    return UsageFilter(
        model_id=model_id,
        api_key_id=api_key_id,
        outcome=outcome,
        start=datetime.combine(first, time(), zone) if first else None,
        end=datetime.combine(last + timedelta(days=1), time(), zone) if last else None,
    )


def _older_than(rows: QuerySet[UsageRecord], tenant: Tenant, before: str) -> QuerySet[UsageRecord]:
    """Keyset paging: the rows after ``before`` (a row id of this tenant) in newest-first
    order. Unlike an offset, page 1,000 costs what page 1 does."""
    try:
        pk = int(before)
    except ValueError:
        raise Http404("No such page.") from None
    mark = UsageRecord.objects.filter(tenant=tenant, pk=pk).values_list("created_at", flat=True).first()
    if mark is None:
        raise Http404("No such page.")
    return rows.filter(Q(created_at__lt=mark) | Q(created_at=mark, pk__lt=pk))


def _filter_choices(tenant: Tenant) -> dict[str, Any]:
    keys = ApiKey.objects.filter(tenant=tenant).select_related("user").order_by("name", "pk")
    return {
        "model_choices": list(Model.objects.order_by("name").values_list("name", flat=True)),
        "key_choices": [(k.key_id, _key_label(k)) for k in keys],
        "outcome_choices": UsageRecord.Outcome.choices,
    }


def _key_label(key: ApiKey) -> str:
    if key.user_id is not None:
        return f"Playground: {key.user.get_username() if key.user else ''}"
    return f"{key.name or '(unnamed)'} ({key.display})"


@member_required()
def request_log(request: HttpRequest) -> HttpResponse:
    membership: Membership = request.membership  # type: ignore[attr-defined]
    tenant = membership.tenant
    context: dict[str, Any] = {"tenant": tenant, "params": request.GET, **_filter_choices(tenant)}
    try:
        where = usage_filter(tenant, request.GET)
    except BadFilter as exc:
        return render(request, "billing/requests.html", {**context, "error": str(exc), "rows": []}, status=400)
    rows = usage_log(tenant=tenant, where=where).select_related("model", "api_key__user")
    if before := request.GET.get("before", ""):
        rows = _older_than(rows, tenant, before)
    page = list(rows[: PAGE_SIZE + 1])
    filters = {k: v for k, v in request.GET.items() if k != "before" and v}
    older = None
    if len(page) > PAGE_SIZE:
        page = page[:PAGE_SIZE]
        older = "?" + urlencode({**filters, "before": page[-1].pk})
    return render(
        request,
        "billing/requests.html",
        {
            **context,
            "rows": page,
            "older": older,
            "first_page": ("?" + urlencode(filters)) if before else None,
            "csv_query": urlencode(filters),
            "zone": tenant.timezone,
        },
    )


class _Echo:
    """csv.writer's file: hands each written line back instead of storing it."""

    def write(self, value: str) -> str:
        return value


def _csv_lines(rows: QuerySet[UsageRecord]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    fields = (
        "created_at",
        "request_id",
        "model__name",
        "requested_model",
        "api",
        "api_key__key_id",
        "api_key__last4",
        "api_key__name",
        "api_key__user__username",
        "input_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "output_tokens",
        "cost",
        "outcome",
        "streamed",
        "usage_estimated",
        "cache_hit",
        "latency_ms",
    )
    for row in _in_batches(rows, fields):
        at, request_id, model, requested, api, key_id, last4, key_name, user, *rest = row
        display = f"tlw_{key_id}_…{last4}" if key_id else ""
        yield writer.writerow(
            [
                at.astimezone(UTC).isoformat(),
                request_id,
                model,
                requested,
                api,
                display,
                key_name or "",
                user or "",
                *rest,
            ]
        )


def _in_batches(rows: QuerySet[UsageRecord], fields: tuple[str, ...]) -> Iterator[tuple[Any, ...]]:
    """``rows`` (newest first) in keyset batches of ``CSV_CHUNK``: memory stays at one batch
    whether or not the database allows server-side cursors (PgBouncer does not)."""
    batch = rows
    while True:
        chunk = list(batch.values_list("pk", *fields)[:CSV_CHUNK])
        for _pk, *values in chunk:
            yield tuple(values)
        if len(chunk) < CSV_CHUNK:
            return
        pk, at = chunk[-1][0], chunk[-1][1]
        batch = rows.filter(Q(created_at__lt=at) | Q(created_at=at, pk__lt=pk))


@member_required()
def usage_csv(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """The same rows as the request log, with the same filters, all of them, as CSV. It is
    streamed: rows are read in batches and sent as they are written, so a month of a busy
    tenant needs no more memory than one batch."""
    membership: Membership = request.membership  # type: ignore[attr-defined]
    tenant = membership.tenant
    try:
        where = usage_filter(tenant, request.GET)
    except BadFilter as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain; charset=utf-8")
    rows = usage_log(tenant=tenant, where=where)
    response = StreamingHttpResponse(_csv_lines(rows), content_type="text/csv; charset=utf-8")
    stamp = timezone.now().astimezone(zoneinfo.ZoneInfo(tenant.timezone)).strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="usage-{tenant.slug}-{stamp}.csv"'
    return response


@member_required()
def price_list(request: HttpRequest) -> HttpResponse:
    membership: Membership = request.membership  # type: ignore[attr-defined]
    tenant = membership.tenant
    prices = tenant_price_list(tenant=tenant, now=timezone.now())
    plan = Plan.objects.filter(accounts__tenant=tenant).first()
    return render(request, "billing/prices.html", {"tenant": tenant, "prices": prices, "plan": plan})
