"""Project-wide middleware."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseBase, JsonResponse

from config.errors import ErrorCode, InvalidRequest

_TRUSTED_ID = re.compile(r"^[A-Za-z0-9._-]{16,64}$")

# The OpenAI-compatible API's paths: errors there are JSON in OpenAI's shape, never HTML.
API_ROOTS = ("/v1", "/api/v1")
_API_PREFIXES = tuple(f"{root}/" for root in API_ROOTS)


def is_api_path(path: str) -> bool:
    return path in API_ROOTS or path.startswith(_API_PREFIXES)


class RequestIdMiddleware:
    """Give every request an id, ``request.request_id``, and echo it as ``X-Request-ID``.

    The id keys the usage ledger, so it must be unique per call. An inbound
    ``X-Request-ID`` is used only when ``TOLLWAY_TRUST_REQUEST_ID`` is on, which the
    nginx deployment sets because nginx always overwrites it with its own
    ``$request_id``; otherwise a client could make two calls share one ledger row.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        self.trust_inbound = getattr(settings, "TOLLWAY_TRUST_REQUEST_ID", False)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        inbound = request.headers.get("X-Request-ID", "")
        request_id = inbound if self.trust_inbound and _TRUSTED_ID.match(inbound) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]  # our own attribute
        request.started_at = time.monotonic()  # type: ignore[attr-defined]  # for the overhead metric
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class RefuseNulMiddleware:
    """Refuse, with 400, a request that carries a NUL character in its path, its query,
    its cookies or (on the pages) its form fields.

    Postgres cannot store NUL in text: such a string reaching a query makes it fail, and
    the request would answer 500. Refusing it at the door covers every view at once (the
    management API's ids and cursors, invoice numbers, the admin's search, the session
    cookie), for the price of a few substring checks. JSON bodies are the parse stage's
    and the serializers' to check. ``forms=False`` is the keyed API chain's variant: its
    views take JSON, and a caller not yet authenticated must not make Tollway read a body.
    """

    forms = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        where = self.nul_in(request)
        if where is not None:
            return refuse_nul(request, where)
        return self.get_response(request)

    def nul_in(self, request: HttpRequest) -> str | None:
        """Where a NUL is: "path", a query or form parameter's name, or "cookie"; else None."""
        meta = request.META
        if "\x00" in request.path_info:
            return "path"
        query = meta.get("QUERY_STRING", "")
        if "%00" in query or "\x00" in query:
            return next((name for name, values in request.GET.lists() if _has_nul(name, values)), "query")
        cookie = meta.get("HTTP_COOKIE", "")
        # A quoted cookie value may spell NUL as the octal escape \000, which Django decodes.
        if cookie and ("\x00" in cookie or "\\000" in cookie):
            return "cookie"
        if self.forms and request.method == "POST" and request.content_type in _FORM_TYPES:
            return next((name for name, values in request.POST.lists() if _has_nul(name, values)), None)
        return None


class RefuseNulApiMiddleware(RefuseNulMiddleware):
    """:class:`RefuseNulMiddleware` for the keyed API chain: no form bodies read."""

    forms = False


def _has_nul(name: str, values: list[str]) -> bool:
    return "\x00" in name or any("\x00" in value for value in values)


def refuse_nul(request: HttpRequest, where: str) -> HttpResponse:
    message = f"The request's {where} holds a NUL character (\\u0000), which Tollway does not accept."
    if where not in ("path", "query", "cookie"):
        message = f"The parameter '{where}' holds a NUL character (\\u0000), which Tollway does not accept."
    if is_api_path(request.path_info):
        error = InvalidRequest(message, param=where, code=ErrorCode.INVALID_PARAMETER)
        return JsonResponse(error.body(), status=error.status)
    return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")
