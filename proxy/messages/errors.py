"""Errors on the Messages endpoints, in Anthropic's shape::

    {"type": "error", "error": {"type": "...", "message": "..."}, "request_id": "..."}

The same TollwayError vocabulary as everywhere, rendered with Anthropic's error types and
status codes, so the anthropic SDK raises its own exception for each: 400
``invalid_request_error``, 401 ``authentication_error``, 403 ``permission_error``, 404
``not_found_error``, 413 ``request_too_large``, 429 ``rate_limit_error``, 529
``overloaded_error`` (an overloaded or unavailable upstream, or no deployment to try), and
``api_error`` for the rest. Headers are kept: ``retry-after``, and ``x-should-retry:
false`` on an exhausted budget, which the anthropic SDK obeys as the openai one does.
"""

from __future__ import annotations

from typing import Any

import orjson
from django.http import JsonResponse

from config.errors import ErrorCode, TollwayError

_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
# Tollway's "come back shortly" answers are Anthropic's 529.
_OVERLOADED = {
    ErrorCode.UPSTREAM_OVERLOADED,
    ErrorCode.NO_DEPLOYMENT,
    ErrorCode.SERVICE_UNAVAILABLE,
    ErrorCode.DRAINING,
}
REQUEST_ID_HEADER = "request-id"  # Anthropic's name for it; X-Request-ID is sent too


def status_and_type(exc: TollwayError) -> tuple[int, str]:
    status = 529 if exc.code in _OVERLOADED else exc.status
    return status, _BY_STATUS.get(status, "api_error")


def body(exc: TollwayError, request_id: str | None = None) -> dict[str, Any]:
    _, kind = status_and_type(exc)
    out: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": exc.message}}
    if request_id:
        out["request_id"] = request_id
    return out


def error_response(exc: TollwayError, request_id: str | None = None) -> JsonResponse:
    status, _ = status_and_type(exc)
    response = JsonResponse(body(exc, request_id), status=status)
    if status == 529:
        response.reason_phrase = "Overloaded"  # not in Python's table of statuses
    for name, value in exc.headers.items():
        if name.lower() != "www-authenticate":  # Anthropic sends none; its SDKs want none
            response[name] = value
    if request_id:
        response[REQUEST_ID_HEADER] = request_id
    return response


def sse_event(data: dict[str, Any]) -> bytes:
    """One typed event as Anthropic sends it: its type on the ``event:`` line too."""
    return b"event: " + str(data.get("type", "message")).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def sse_error_event(exc: TollwayError, request_id: str | None = None) -> bytes:
    """A failure after the stream began: Anthropic's ``error`` event, which the SDK raises."""
    return sse_event(body(exc, request_id))
