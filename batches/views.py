"""The Batch API's endpoints, in OpenAI's shapes: ``/v1/files`` and ``/v1/batches``.

Every lookup goes through :func:`_files` or :func:`_batches`, scoped to the caller's
tenant: another tenant's id answers 404, exactly as an id that does not exist.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import FileResponse, HttpRequest, HttpResponseBase, JsonResponse
from django.http.multipartparser import MultiPartParserError

from batches import files, services
from batches.models import Batch, File
from billing.pricing import usd
from config.errors import InvalidRequest, NotFound
from proxy import auth
from proxy.parse import json_body
from proxy.views import api_view
from tenants.selectors import KeyPrincipal

MULTIPART_SLACK = 64 * 1024  # the form's own bytes around the file


def _ts(value: Any) -> int | None:
    return None if value is None else int(value.timestamp())


def file_object(file: File) -> dict[str, Any]:
    return {
        "id": file.public_id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": _ts(file.created_at),
        "expires_at": None,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
    }


def batch_object(batch: Batch) -> dict[str, Any]:
    return {
        "id": batch.public_id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": batch.errors,
        "input_file_id": batch.input_file_public_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file.public_id if batch.output_file else None,
        "error_file_id": batch.error_file.public_id if batch.error_file else None,
        "created_at": _ts(batch.created_at),
        "in_progress_at": _ts(batch.in_progress_at),
        "expires_at": _ts(batch.expires_at),
        "finalizing_at": _ts(batch.finalizing_at),
        "completed_at": _ts(batch.completed_at),
        "failed_at": _ts(batch.failed_at),
        "expired_at": _ts(batch.expired_at),
        "cancelling_at": _ts(batch.cancelling_at),
        "cancelled_at": _ts(batch.cancelled_at),
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        "metadata": batch.metadata,
        "cost": usd(batch.cost),  # Tollway's: USD charged so far, at the batch price
    }


def _files(principal: KeyPrincipal) -> QuerySet[File]:
    return File.objects.filter(tenant_id=principal.tenant_pk)


def _batches(principal: KeyPrincipal) -> QuerySet[Batch]:
    return Batch.objects.filter(tenant_id=principal.tenant_pk).select_related("output_file", "error_file")


def _file(principal: KeyPrincipal, file_id: str) -> File:
    file = _files(principal).filter(public_id=file_id).first()
    if file is None:
        raise NotFound(f"No such File object: {file_id[:64]}", param="id")
    return file


def _batch(principal: KeyPrincipal, batch_id: str) -> Batch:
    batch = _batches(principal).filter(public_id=batch_id).first()
    if batch is None:
        raise NotFound(f"No such Batch object: {batch_id[:64]}", param="id")
    return batch


def _page(request: HttpRequest, rows: QuerySet[Any], render: Any) -> JsonResponse:
    """OpenAI's cursor page: ``limit`` (1-100, default 20) rows after the id ``after``, newest first."""
    raw = request.GET.get("limit", "20")
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be an integer from 1 to 100.", param="limit")
    after = request.GET.get("after")
    if after:
        anchor = rows.filter(public_id=after).values_list("created_at", "pk").first()
        if anchor is None:
            raise InvalidRequest(f"'after' is not an id in this list: {after[:64]}", param="after")
        created, pk = anchor
        rows = rows.filter(created_at__lte=created).exclude(created_at=created, pk__gte=pk)
    found = list(rows.order_by("-created_at", "-pk")[: limit + 1])
    data = [render(row) for row in found[:limit]]
    return JsonResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(found) > limit,
        }
    )


@api_view("GET", "POST")
def files_collection(request: HttpRequest) -> HttpResponseBase:
    principal = auth.authenticate(request)
    if request.method == "GET":
        rows = _files(principal)
        if request.GET.get("purpose"):
            rows = rows.filter(purpose=request.GET["purpose"])
        return _page(request, rows, file_object)
    # The declared size first: a file over the limit is refused before it is read.
    declared = int(request.META.get("CONTENT_LENGTH") or 0)
    if declared > int(settings.TOLLWAY["BATCH_MAX_FILE_BYTES"]) + MULTIPART_SLACK:
        raise files.too_large(declared)
    if not (request.content_type or "").startswith("multipart/form-data"):
        raise InvalidRequest(
            "Upload the file as multipart/form-data, with the fields 'file' and 'purpose'.", param="file"
        )
    try:
        upload = request.FILES.get("file")
        purpose = request.POST.get("purpose")
    except MultiPartParserError as exc:
        raise InvalidRequest(f"The multipart body could not be read: {exc}", param="file") from None
    if not purpose:
        raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose")
    if upload is None:
        raise InvalidRequest("Missing required parameter: 'file'.", param="file")
    file = files.file_create(tenant_id=principal.tenant_pk, upload=upload, purpose=purpose)
    return JsonResponse(file_object(file))


@api_view("GET", "DELETE")
def file_detail(request: HttpRequest, file_id: str) -> HttpResponseBase:
    principal = auth.authenticate(request)
    file = _file(principal, file_id)
    if request.method == "DELETE":
        files.file_delete(file=file)
        return JsonResponse({"id": file_id, "object": "file", "deleted": True})
    return JsonResponse(file_object(file))


@api_view("GET")
def file_content(request: HttpRequest, file_id: str) -> HttpResponseBase:
    principal = auth.authenticate(request)
    file = _file(principal, file_id)
    return FileResponse(files.file_open(file), content_type="application/octet-stream", filename=file.filename)


@api_view("GET", "POST")
def batches_collection(request: HttpRequest) -> HttpResponseBase:
    principal = auth.authenticate(request)
    if request.method == "GET":
        return _page(request, _batches(principal), batch_object)
    batch = services.batch_create(principal=principal, body=json_body(request))
    return JsonResponse(batch_object(_batch(principal, batch.public_id)))


@api_view("GET")
def batch_detail(request: HttpRequest, batch_id: str) -> HttpResponseBase:
    principal = auth.authenticate(request)
    return JsonResponse(batch_object(_batch(principal, batch_id)))


@api_view("POST")
def batch_cancel(request: HttpRequest, batch_id: str) -> HttpResponseBase:
    principal = auth.authenticate(request)
    batch = services.batch_cancel(batch=_batch(principal, batch_id))
    return JsonResponse(batch_object(_batch(principal, batch.public_id)))
